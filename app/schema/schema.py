"""The GraphQL schema: per-domain Query, Mutation and Subscription classes composed into one,
with the document limits and the error masking every operation goes through."""

from __future__ import annotations

import contextlib
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
from app.errors import DomainError, ErrorCode
from app.resolvers.accounts import AccountMutation, AccountQuery
from app.resolvers.bookings import BookingMutation, BookingQuery
from app.resolvers.catalogue import CatalogueMutation, CatalogueQuery
from app.resolvers.queue import QueueMutation, QueueQuery, QueueSubscription
from app.resolvers.realtime import RealtimeSubscription
from app.resolvers.waitlist import WaitlistMutation, WaitlistQuery
from app.settings import Settings

MAX_TOKENS = 5000  # refuses absurd documents before they are even validated
# Clients send a handful of distinct documents; parsing and validating each once saves
# milliseconds per request. Bounded, so unique junk documents cannot grow memory.
DOCUMENT_CACHE_SIZE = 512

Query = merge_types("Query", (AccountQuery, CatalogueQuery, BookingQuery, WaitlistQuery, QueueQuery))
Mutation = merge_types("Mutation", (AccountMutation, CatalogueMutation, BookingMutation, WaitlistMutation,
                                    QueueMutation))
Subscription = merge_types("Subscription", (RealtimeSubscription, QueueSubscription))


class CachedParsing(ParserCache):
    """strawberry's ParserCache raises a syntax error from its hook, where the websocket
    transport does not catch it: the client got a bare `complete` and the log a stack trace.
    Invalid documents are left to strawberry's own parsing, which reports them properly
    (over graphql-transport-ws: the connection closes with 4400 and the syntax error)."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(context.query, **context.parse_options)
        yield


def is_server_fault(error: GraphQLError) -> bool:
    """Not the client's doing: neither GraphQL's own errors nor an expected DomainError."""
    original = error.original_error
    return original is not None and not isinstance(original, (DomainError, GraphQLError))


class BookMyEventSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log server faults only: clients can send malformed documents as fast as they like,
        and a stack trace for each would bury the real faults."""
        super().process_errors([error for error in errors if is_server_fault(error)], execution_context)


class RefuseNulCharacters(SchemaExtension):
    """PostgreSQL text cannot hold U+0000: refuse it in any input, literal or variable, as the
    client's error, before anything reaches a resolver or the database."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        query = context.query or ""
        if "\\u0000" in query or "\x00" in query or _contains_nul(context.variables):
            # Set before validation runs: strawberry then skips it and answers with these.
            context.pre_execution_errors = [GraphQLError(
                "Text may not contain NUL characters", extensions={"code": ErrorCode.INVALID_INPUT.value})]
        yield


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(item) for item in value.values())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


class ErrorMasking(MaskErrors):
    """Top-level errors: GraphQL's own (malformed documents) pass as they are; a DomainError
    raised by a query or subscription keeps its safe message and gets its code; anything
    else is a server fault, logged by strawberry and shown only as a generic message."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=is_server_fault, error_message="Internal server error")

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.message = f"Internal server error (request id {logs.request_id.get()})"
        masked.extensions = {"code": "INTERNAL_SERVER_ERROR", "requestId": logs.request_id.get()}
        return masked

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
        lambda: CachedParsing(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: depth_limit,
        lambda: alias_limit,
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        RefuseNulCharacters,
        ErrorMasking,
        OperationTiming,
    ]
    if not settings.graphql_introspection:
        extensions.append(DisableIntrospection)
    return BookMyEventSchema(query=Query, mutation=Mutation, subscription=Subscription,
                             extensions=extensions)
