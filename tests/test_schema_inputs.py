"""Input objects built from their plan (app/schema/inputs.py) equal strawberry's own conversion."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    coerce_input_value,
)
from strawberry.types.arguments import convert_argument
from strawberry.types.base import StrawberryObjectDefinition

from app.schema.schema import create_schema
from app.settings import Settings

SAMPLES = {"String": "some text", "ID": "42", "Int": 3, "Float": 1.5, "Boolean": True,
           "DateTime": "2030-05-01T20:00:00Z", "BigInt": "12"}

SCHEMA = create_schema(Settings())
INPUTS = sorted(name for name, concrete in SCHEMA.schema_converter.type_map.items()
                if isinstance(concrete.definition, StrawberryObjectDefinition) and concrete.definition.is_input)


def sample(type_: GraphQLInputType, *, omit_optional: bool) -> Any:
    """A client's JSON value for `type_`: every field given, or only the required ones."""
    if isinstance(type_, GraphQLNonNull):
        return sample(type_.of_type, omit_optional=omit_optional)
    if isinstance(type_, GraphQLList):
        return [sample(type_.of_type, omit_optional=omit_optional)] * 2
    if isinstance(type_, GraphQLEnumType):
        return next(iter(type_.values))
    if isinstance(type_, GraphQLScalarType):
        return SAMPLES[type_.name]
    assert isinstance(type_, GraphQLInputObjectType)
    return {name: sample(field.type, omit_optional=omit_optional) for name, field in type_.fields.items()
            if not omit_optional or isinstance(field.type, GraphQLNonNull)}


def strawberrys_own(cls: type, value: Any) -> Any:
    """What strawberry's generic conversion makes of `value`, planned builders set aside."""
    definitions = [SCHEMA.schema_converter.type_map[name].definition for name in INPUTS]
    builders = [definition.from_input for definition in definitions]
    try:
        for definition in definitions:
            definition.from_input = None
        return convert_argument(value, cls, SCHEMA.schema_converter.scalar_registry, SCHEMA.config)
    finally:
        for definition, builder in zip(definitions, builders, strict=True):
            definition.from_input = builder


def test_every_input_type_has_a_planned_builder() -> None:
    assert "ReserveInput" in INPUTS and "SeatMapInput" in INPUTS
    assert all(SCHEMA.schema_converter.type_map[name].definition.from_input is not None for name in INPUTS)


@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("omit_optional", [False, True], ids=["all fields", "required only"])
def test_a_planned_input_equals_strawberrys_conversion(name: str, omit_optional: bool) -> None:
    graphql_type = SCHEMA._schema.type_map[name]
    cls = SCHEMA.schema_converter.type_map[name].definition.origin
    value = coerce_input_value(sample(graphql_type, omit_optional=omit_optional), graphql_type)
    planned = convert_argument(value, cls, SCHEMA.schema_converter.scalar_registry, SCHEMA.config)
    assert planned == strawberrys_own(cls, value)
    assert type(planned) is cls


def test_a_list_in_an_input_is_the_requests_own_copy() -> None:
    """graphql-core gives every request that omits a list the same default object."""
    shared = ["1", "2"]
    value = {"eventId": "7", "seatIds": shared}
    reserve = SCHEMA.schema_converter.type_map["ReserveInput"].definition.origin
    built = convert_argument(value, reserve, SCHEMA.schema_converter.scalar_registry, SCHEMA.config)
    assert built.seat_ids == shared and built.seat_ids is not shared
