"""What a document may cost, worked out from its text before anything runs (GitHub/Shopify
style): every field costs 1, and a list multiplies the cost of its selection by how many
items it can hold: its `first` argument, or a fixed bound for lists that are not paged.

Depth and alias limits alone let ten aliases of a 100,000-seat list through; this counts
what the answer can hold, so such a document is refused before a single row is read."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    Visitor,
    get_named_type,
    get_nullable_type,
    parse,
    value_from_ast,
    visit,
)
from graphql.execution.values import get_variable_values
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from app.services.catalogue import MAX_ROWS_PER_SECTION, MAX_SECTIONS

QUERY_TOO_COSTLY = "QUERY_TOO_COSTLY"
# Lists without a `first` argument hold at most this many items (sections of a seat map,
# seats and tickets of a booking: each capped where it is written), unless listed below.
DEFAULT_LIST_BOUND = 100
LIST_BOUNDS = {("Event", "seatMap"): MAX_SECTIONS, ("Section", "rows"): MAX_ROWS_PER_SECTION}


class _Costing:
    """The cost of one operation, with the variables it will run with."""

    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode],
                 variables: dict[str, Any]) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        # A fragment spread many times over (nested) is costed once: its cost only
        # depends on where it sits, and a fragment bomb must not cost us the time it claims.
        self._fragment_costs: dict[tuple[str, str, bool], int] = {}

    def selection(self, selection_set: SelectionSetNode, parent: GraphQLNamedType, paged: bool) -> int:
        total = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                total += self.field(node, parent, paged)
            elif isinstance(node, InlineFragmentNode):
                condition = self.schema.get_type(node.type_condition.name.value) if node.type_condition else None
                total += self.selection(node.selection_set, condition or parent, paged)
            elif isinstance(node, FragmentSpreadNode):
                total += self.fragment(node.name.value, paged)
        return total

    def fragment(self, name: str, paged: bool) -> int:
        fragment = self.fragments[name]
        key = (name, fragment.type_condition.name.value, paged)
        if key not in self._fragment_costs:
            condition = self.schema.get_type(fragment.type_condition.name.value)
            assert condition is not None  # the document passed validation
            self._fragment_costs[key] = self.selection(fragment.selection_set, condition, paged)
        return self._fragment_costs[key]

    def field(self, node: FieldNode, parent: GraphQLNamedType, paged: bool) -> int:
        fields = parent.fields if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else {}
        definition = fields.get(node.name.value)
        if definition is None:  # __typename, and introspection: the schema is small and fixed
            return 1
        is_list = isinstance(get_nullable_type(definition.type), GraphQLList)
        first = self.first(node, definition)
        if first is not None:
            multiplier = first
        elif is_list:
            # A connection's `first` already bounds its edges.
            multiplier = 1 if paged else LIST_BOUNDS.get((parent.name, node.name.value), DEFAULT_LIST_BOUND)
        else:
            multiplier = 1
        if node.selection_set is None:  # a leaf, or a list of them
            return 1 + (multiplier if is_list else 0)
        children = self.selection(node.selection_set, get_named_type(definition.type),
                                  paged=first is not None and not is_list)
        return 1 + multiplier * children

    def first(self, node: FieldNode, definition: GraphQLField) -> int | None:
        """The page size a paged field is asked for (its default when not given)."""
        argument = definition.args.get("first")
        if argument is None:
            return None
        value: Any = argument.default_value
        given = next((arg for arg in node.arguments or () if arg.name.value == "first"), None)
        if given is not None:
            value = value_from_ast(given.value, argument.type, self.variables)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(value, 0)
        return DEFAULT_LIST_BOUND  # null or a bad value: the resolver refuses it anyway


def document_cost(schema: GraphQLSchema, document: DocumentNode, operation_name: str | None,
                  variables: dict[str, Any] | None) -> int | None:
    """The cost of the operation that will run; None when its variables are invalid (execution
    then refuses them before any resolver runs)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    total = 0
    for operation in document.definitions:
        if not isinstance(operation, OperationDefinitionNode):
            continue
        if operation_name is not None and (operation.name is None or operation.name.value != operation_name):
            continue
        coerced = get_variable_values(schema, operation.variable_definitions or (), variables or {})
        if isinstance(coerced, list):
            return None
        root = schema.get_root_type(operation.operation)
        assert root is not None  # the document passed validation
        total += _Costing(schema, fragments, coerced.coerced).selection(operation.selection_set, root,
                                                                        paged=False)
    return total


COSTS_KEPT = 512  # as many as the documents parsed and validated once (app/schema/schema.py)
_costs: dict[tuple[str, str | None, str], int] = {}


def _cost(schema: GraphQLSchema, query: str, document: DocumentNode, operation_name: str | None,
          variables: dict[str, Any] | None) -> int | None:
    """`document_cost`, worked out once per document and page sizes asked for: a document
    costs the same whatever else its variables say (which event, which seats)."""
    sizes = {name: (variables or {}).get(name) for name in _page_size_variables(query)}
    key = (query, operation_name, json.dumps(sizes, sort_keys=True, default=str) if sizes else "")
    cost = _costs.get(key)
    if cost is None:
        cost = document_cost(schema, document, operation_name, variables)
        if cost is not None:  # not for variables that do not coerce: those say nothing of valid ones
            if len(_costs) >= COSTS_KEPT:
                _costs.clear()
            _costs[key] = cost
    return cost


@functools.lru_cache(maxsize=COSTS_KEPT)
def _page_size_variables(query: str) -> frozenset[str]:
    """The variables a document of that text passes as `first` (of any field)."""
    found: set[str] = set()

    class Pages(Visitor):
        def enter_argument(self, node: ArgumentNode, *_: Any) -> None:
            if node.name.value == "first" and isinstance(node.value, VariableNode):
                found.add(node.value.name.value)

    visit(parse(query), Pages())
    return frozenset(found)


class QueryCostLimit(SchemaExtension):
    """Refuses a document costing more than `max_cost` before it runs, and reports what an
    accepted query or mutation cost in the response's `extensions.cost`. Must come after
    ValidationCache: it only costs documents known to be valid."""

    def __init__(self, *, max_cost: int) -> None:
        self.max_cost = max_cost
        self.cost: int | None = None

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.pre_execution_errors == [] and context.graphql_document is not None:
            self.cost = _cost(context.schema._schema, context.query or "", context.graphql_document,
                              context.operation_name, context.variables)
            if self.cost is not None and self.cost > self.max_cost:
                context.pre_execution_errors = [GraphQLError(
                    f"This document may cost {self.cost} points, over the limit of {self.max_cost}: "
                    "ask for smaller pages (first) or fewer fields",
                    extensions={"code": QUERY_TOO_COSTLY, "cost": self.cost, "limit": self.max_cost})]
        yield

    def get_results(self) -> dict[str, Any]:
        # Not on every subscription message: thousands of subscribers would each carry it.
        if self.cost is None or self.execution_context.operation_type == OperationType.SUBSCRIPTION:
            return {}
        return {"cost": {"requested": self.cost, "limit": self.max_cost}}


__all__ = ["QUERY_TOO_COSTLY", "QueryCostLimit", "document_cost"]
