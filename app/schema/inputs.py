"""Input objects built from a plan made once per type, not worked out again for every request.

strawberry turns an argument's dict into its input class field by field, asking of each field
on every request what its type is and whether that type is a leaf (`convert_argument`: a
dozen recursive calls and a few hundred `isinstance` checks for `ReserveInput`, about a
twelfth of a reserve's CPU). Those answers are facts of the class. Here they are worked out
once, at schema creation, and handed to strawberry through its own hook for input types that
build their own value (`from_input`). Leaf fields (scalars and enums, which graphql-core has
already parsed, and lists of them) are taken as they are, as strawberry takes them; anything
else (nested inputs, global ids, `Maybe`) goes through strawberry's own conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any

import strawberry
from strawberry.relay import GlobalID
from strawberry.scalars import is_scalar
from strawberry.types.arguments import InputContext
from strawberry.types.base import StrawberryList, StrawberryMaybe, StrawberryObjectDefinition, StrawberryOptional
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

_AS_IS, _COPIED, _CONVERTED = range(3)  # what a field's value needs


def compile_inputs(schema: strawberry.Schema) -> None:
    """Give every input type of `schema` its planned builder (those with one of their own keep it)."""
    registry = schema.schema_converter.scalar_registry
    for concrete in schema.schema_converter.type_map.values():
        definition = concrete.definition
        if isinstance(definition, StrawberryObjectDefinition) and definition.is_input \
                and definition.from_input is None:
            definition.from_input = _builder(definition, schema.config.name_converter.from_field, registry)


def _builder(definition: StrawberryObjectDefinition, graphql_name: Callable[[Any], str],
             registry: Mapping[object, Any]) -> Callable[[type, Mapping[str, Any], InputContext], Any]:
    # Fields without a default are None unless given (graphql-core has already refused a
    # missing required one); fields with one keep it.
    unset = {field.python_name: None for field in definition.fields
             if field.default_value is MISSING and field.default_factory is MISSING}
    plan = [(graphql_name(field), field.python_name, field.resolve_type(type_definition=definition),
             _need(field.resolve_type(type_definition=definition), registry)) for field in definition.fields]

    def build(cls: type, value: Mapping[str, Any], context: InputContext) -> Any:
        kwargs = dict(unset)
        for name, python_name, type_, need in plan:
            if name in value:
                item = value[name]
                if need is _CONVERTED:
                    item = context.convert(item, type_, name)
                elif need is _COPIED and item is not None:
                    # graphql-core hands every request that omits a list the same default: a
                    # copy keeps one request's changes out of the next (as strawberry does).
                    item = list(item)
                kwargs[python_name] = item
        return cls(**kwargs)

    return build


def _need(type_: Any, registry: Mapping[object, Any]) -> int:
    if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
        type_ = type_.of_type
    if _is_leaf(type_, registry):
        return _AS_IS
    if isinstance(type_, StrawberryList):
        item = type_.of_type
        if isinstance(item, StrawberryOptional) and not isinstance(item, StrawberryMaybe):
            item = item.of_type
        if _is_leaf(item, registry):
            return _COPIED
    return _CONVERTED


def _is_leaf(type_: Any, registry: Mapping[object, Any]) -> bool:
    """Taken as graphql-core parsed it: scalars (but global ids, which strawberry decodes) and enums."""
    if type_ is GlobalID:
        return False
    return is_scalar(type_, registry) or isinstance(type_, StrawberryEnumDefinition) or has_enum_definition(type_)
