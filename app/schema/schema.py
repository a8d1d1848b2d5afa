"""The GraphQL schema: per-domain Query, Mutation and Subscription classes composed into one,
with the document limits and the error masking every operation goes through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import strawberry
from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.tools import merge_types
from strawberry.types.graphql import OperationType

from app import logs, metrics
from app.errors import DomainError
from app.resolvers.accounts import AccountMutation, AccountQuery
from app.resolvers.bookings import BookingMutation, BookingQuery
from app.resolvers.catalogue import CatalogueMutation, CatalogueQuery
from app.resolvers.realtime import RealtimeSubscription
from app.resolvers.waitlist import WaitlistMutation, WaitlistQuery
from app.settings import Settings

MAX_TOKENS = 5000  # refuses absurd documents before they are even validated
# Clients send a handful of distinct documents; parsing and validating each once saves
# milliseconds per request. Bounded, so unique junk documents cannot grow memory.
DOCUMENT_CACHE_SIZE = 512

Query = merge_types("Query", (AccountQuery, CatalogueQuery, BookingQuery, WaitlistQuery))
Mutation = merge_types("Mutation", (AccountMutation, CatalogueMutation, BookingMutation, WaitlistMutation))
Subscription = merge_types("Subscription", (RealtimeSubscription,))


class ErrorMasking(MaskErrors):
    """Top-level errors: GraphQL's own (malformed documents) pass as they are; a DomainError
    raised by a query or subscription keeps its safe message and gets its code; anything
    else is a server fault, logged by strawberry and shown only as a generic message."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=self._unexpected, error_message="Internal server error")

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.message = f"Internal server error (request id {logs.request_id.get()})"
        masked.extensions = {"code": "INTERNAL_SERVER_ERROR", "requestId": logs.request_id.get()}
        return masked

    @staticmethod
    def _unexpected(error: GraphQLError) -> bool:
        original = error.original_error
        return original is not None and not isinstance(original, (DomainError, GraphQLError))

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        for error in errors:
            if isinstance(error.original_error, DomainError):
                error.extensions = {**(error.extensions or {}), "code": error.original_error.code.value}
        return super()._process_errors(errors)


class OperationTiming(SchemaExtension):
    """Latency per query and mutation, labelled by the first root field (a bounded set)."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        context = self.execution_context
        if context.operation_type == OperationType.SUBSCRIPTION or context.graphql_document is None:
            return
        for definition in context.graphql_document.definitions:
            if isinstance(definition, OperationDefinitionNode):
                first = definition.selection_set.selections[0]
                if isinstance(first, FieldNode):
                    metrics.OPERATION_SECONDS.labels(first.name.value).observe(time.perf_counter() - started)
                return


def create_schema(settings: Settings) -> strawberry.Schema:
    # The document limits are stateless validation rules, built once and shared: fresh rule
    # classes per operation would defeat the validation cache, whose key includes the rules.
    depth_limit = QueryDepthLimiter(max_depth=settings.max_query_depth)
    alias_limit = MaxAliasesLimiter(max_alias_count=settings.max_aliases)
    # Factories: strawberry builds the extensions for every operation from these.
    extensions: list[Any] = [
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: depth_limit,
        lambda: alias_limit,
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        ErrorMasking,
        OperationTiming,
    ]
    if not settings.graphql_introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription,
                             extensions=extensions)
