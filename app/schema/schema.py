"""The GraphQL schema: per-domain Query, Mutation and Subscription classes composed into one,
with the document limits and the error masking every operation goes through."""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import strawberry
from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSyntaxError,
    InlineFragmentNode,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    StringValueNode,
    Visitor,
    parse,
    visit,
)
from strawberry.extensions import (
    MaskErrors,
    MaxAliasesLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES, validate_document
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from app import logs, metrics
from app.errors import DomainError, ErrorCode
from app.persisted import AllowListed, Manifest
from app.resolvers.accounts import AccountMutation, AccountQuery
from app.resolvers.bookings import BookingMutation, BookingQuery
from app.resolvers.catalogue import CatalogueMutation, CatalogueQuery
from app.resolvers.checkin import CheckInMutation, CheckInQuery, CheckInSubscription
from app.resolvers.partners import PartnerMutation, PartnerQuery
from app.resolvers.queue import QueueMutation, QueueQuery, QueueSubscription
from app.resolvers.realtime import RealtimeSubscription
from app.resolvers.relay import RelayQuery
from app.resolvers.waitlist import WaitlistMutation, WaitlistQuery
from app.schema.common import SCALARS
from app.schema.cost import QueryCostLimit
from app.schema.hooks import CachedHooksRunner
from app.schema.inputs import compile_inputs
from app.services.ratelimit import enforce
from app.settings import Settings

MAX_TOKENS = 5000  # refuses absurd documents before they are even validated
# Clients send a handful of distinct documents; parsing and validating each once saves
# milliseconds per request. Bounded, so unique junk documents cannot grow memory.
DOCUMENT_CACHE_SIZE = 512

Query = merge_types("Query", (AccountQuery, CatalogueQuery, BookingQuery, WaitlistQuery, QueueQuery, PartnerQuery,
                                CheckInQuery, RelayQuery))
Mutation = merge_types("Mutation", (AccountMutation, CatalogueMutation, BookingMutation, WaitlistMutation,
                                    QueueMutation, PartnerMutation, CheckInMutation))
Subscription = merge_types("Subscription", (RealtimeSubscription, QueueSubscription, CheckInSubscription))


class CachedParsing(ParserCache):
    """Parsing, cached per document text and bounded in tokens (refusing absurd documents
    before they are even validated).

    strawberry's ParserCache raises a syntax error from its hook, where the websocket
    transport does not catch it: the client got a bare `complete` and the log a stack trace.
    Invalid documents are left to strawberry's own parsing, which reports them properly
    (over graphql-transport-ws: the connection closes with 4400 and the syntax error)."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = MAX_TOKENS  # strawberry's own parsing too
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(context.query, **context.parse_options)
        yield


class CachedValidation(SchemaExtension):
    """Validation by the spec's rules and ours (the document limits), cached per document text.
    strawberry's ValidationCache keys on the parsed document, whose hash graphql-core works
    out anew, node by node, on every request (about 1% of a reserve's CPU); the text says the
    same, and hashes once. Our rules are built once and shared: the rules are part of the key."""

    def __init__(self, rules: tuple[type[ASTValidationRule], ...], results: dict[Any, list[GraphQLError]]) -> None:
        self.rules = rules
        self.results = results  # one per schema, bounded by DOCUMENT_CACHE_SIZE

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        rules = (*context.validation_rules, *self.rules)
        key = (context.query, rules)
        errors = self.results.get(key)
        if errors is None:
            if len(self.results) >= DOCUMENT_CACHE_SIZE:
                self.results.clear()  # unique junk documents cannot grow memory
            assert context.graphql_document is not None
            errors = self.results[key] = validate_document(context.schema._schema, context.graphql_document, rules)
        # Set here, strawberry does not validate again.
        context.pre_execution_errors = errors
        yield


def is_server_fault(error: GraphQLError) -> bool:
    """Not the client's doing: neither GraphQL's own errors nor an expected DomainError."""
    original = error.original_error
    return original is not None and not isinstance(original, (DomainError, GraphQLError))


class BookMyEventSchema(strawberry.Schema):
    async def execute(self, query: str | None, variable_values: dict[str, Any] | None = None,
                      context_value: Any = None, root_value: Any = None, operation_name: str | None = None,
                      allowed_operation_types: Any = None, operation_extensions: dict[str, Any] | None = None,
                      ) -> Any:
        """HTTP's entry: a subscription there is refused (400), since strawberry would run it as a
        query and fail on the stream its resolver returns. Websockets subscribe through `subscribe`."""
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES) - {OperationType.SUBSCRIPTION}
        if query is None or not _asks_the_waiting_room(query):
            return await super().execute(query, variable_values, context_value, root_value, operation_name,
                                         allowed, operation_extensions)
        # The waiting room's own flood waits at its gate (app/services/gate.py) before any of
        # its execution, so that it cannot crowd out admitted buyers.
        gate = context_value.services.queue_gate
        try:
            await gate.take()
        except DomainError as busy:
            return _refused(busy, context_value)
        try:
            return await super().execute(query, variable_values, context_value, root_value, operation_name,
                                         allowed, operation_extensions)
        finally:
            gate.release()

    def create_extensions_runner(self, execution_context: ExecutionContext,
                                 extensions: list[SchemaExtension]) -> SchemaExtensionsRunner:
        return CachedHooksRunner(execution_context=execution_context, extensions=extensions)

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log server faults only: clients can send malformed documents as fast as they like,
        and a stack trace for each would bury the real faults."""
        super().process_errors([error for error in errors if is_server_fault(error)], execution_context)


# PostgreSQL text cannot hold U+0000, and a lone UTF-16 surrogate (JSON "\ud800", GraphQL
# "\uD800") cannot even be encoded to send it: neither belongs in any text we keep.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class RefuseUnstorableText(SchemaExtension):
    """Refuse NUL and lone surrogates in any string of the request, in the document's literals
    (after their escapes, `\\u{0}` alike) or in its variables, as the client's error, before
    anything reaches a resolver or the database."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if _unstorable_variables(context.variables) or (
                context.graphql_document is not None and _unstorable_literals(context.query or "")):
            # Set before validation runs: strawberry then skips it and answers with these.
            context.pre_execution_errors = [GraphQLError(
                "Text may not contain NUL characters or unpaired surrogates",
                extensions={"code": ErrorCode.INVALID_INPUT.value})]
        yield


def _unstorable_variables(value: object) -> bool:
    stack = [value]  # a loop, not recursion: nesting depth is the client's choice
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# graphql-core ends a message with "Did you mean 'x', 'y'?" for every near miss: enough,
# with introspection off, to map most of the schema by guessing.
SUGGESTION = re.compile(r"\s*Did you mean .*$", re.DOTALL)


class _StringLiterals(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def enter_string_value(self, node: StringValueNode, *_: Any) -> Any:
        if UNSTORABLE.search(node.value):
            self.found = True
            return self.BREAK
        return None


@functools.lru_cache(maxsize=DOCUMENT_CACHE_SIZE)
def _unstorable_literals(query: str) -> bool:
    """Of a document that parses: a fact of its text, so worked out once per document."""
    visitor = _StringLiterals()
    visit(parse(query), visitor)
    return visitor.found


WAITING_ROOM_FIELDS = frozenset({"joinQueue", "leaveQueue", "myQueueTicket"})


@functools.lru_cache(maxsize=DOCUMENT_CACHE_SIZE)
def _asks_the_waiting_room(query: str) -> bool:
    """Whether a root field of the document (fragments included) is one of the waiting
    room's: a fact of its text, so worked out once per document."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return False  # strawberry's own parsing answers it
    fragments = {node.name.value: node for node in document.definitions if isinstance(node, FragmentDefinitionNode)}

    def asks(selections: Any, seen: frozenset[str]) -> bool:
        for node in selections:
            if isinstance(node, FieldNode) and node.name.value in WAITING_ROOM_FIELDS:
                return True
            if isinstance(node, InlineFragmentNode) and asks(node.selection_set.selections, seen):
                return True
            if isinstance(node, FragmentSpreadNode) and node.name.value in fragments \
                    and node.name.value not in seen \
                    and asks(fragments[node.name.value].selection_set.selections, seen | {node.name.value}):
                return True
        return False
    return any(asks(node.selection_set.selections, frozenset()) for node in document.definitions
               if isinstance(node, OperationDefinitionNode))


def _refused(error: DomainError, context: Any) -> ExecutionResult:
    """A request turned away before it ran: RATE_LIMITED with retryAfterSeconds (over HTTP
    also 429 with Retry-After), as QueryRateLimit answers."""
    if context.response is not None:
        context.response.status_code = 429
        context.response.headers["Retry-After"] = str(error.retry_after_seconds)
    return ExecutionResult(data=None, errors=[GraphQLError(error.message, extensions={
        "code": error.code.value, "retryAfterSeconds": error.retry_after_seconds})])


class ErrorMasking(MaskErrors):
    """Top-level errors: GraphQL's own (malformed documents) pass as they are, without
    suggestions when the schema is hidden; a DomainError raised by a query or subscription
    keeps its safe message and gets its code; anything else is a server fault, logged by
    strawberry and shown only as a generic message."""

    def __init__(self, *, hide_suggestions: bool) -> None:
        super().__init__(should_mask_error=is_server_fault, error_message="Internal server error")
        self.hide_suggestions = hide_suggestions

    def _process_result(self, result: object) -> None:
        # Most results have no error to mask; strawberry's own check starts with an
        # isinstance against a runtime Protocol, which typing answers slowly (~1% of a request).
        if getattr(result, "errors", None):
            super()._process_result(result)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.message = f"Internal server error (request id {logs.request_id.get()})"
        masked.extensions = {"code": "INTERNAL_SERVER_ERROR", "requestId": logs.request_id.get()}
        return masked

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        for error in errors:
            if isinstance(error.original_error, DomainError):
                domain = error.original_error
                error.extensions = {**(error.extensions or {}), "code": domain.code.value}
                if domain.retry_after_seconds is not None:
                    error.extensions["retryAfterSeconds"] = domain.retry_after_seconds
            elif not (error.extensions or {}).get("code") and not is_server_fault(error):
                # GraphQL's own refusals: a document that does not parse, or does not fit the schema.
                code = "GRAPHQL_PARSE_FAILED" if isinstance(error, GraphQLSyntaxError) else "GRAPHQL_VALIDATION_FAILED"
                error.extensions = {**(error.extensions or {}), "code": code}
            if self.hide_suggestions:
                error.message = SUGGESTION.sub("", error.message)
        return super()._process_errors(errors)


class QueryRateLimit(SchemaExtension):
    """Queries per caller per minute (mutations have their own limit in run_mutation): reads
    are free to anyone, so without this one address can keep a worker busy. A partner's API
    key also has its own limit, on every operation. Over the limit
    the answer is RATE_LIMITED with retryAfterSeconds, and HTTP 429 with Retry-After."""

    def __init__(self, *, per_minute: int) -> None:
        self.per_minute = per_minute

    async def on_validate(self) -> AsyncIterator[None]:
        context = self.execution_context
        caller = context.context
        limits = [(f"query:{caller.caller_key}", self.per_minute)] if context.operation_type == OperationType.QUERY \
            else []
        key = caller.identity.key if caller.identity is not None else None
        if key is not None:  # a partner's key: every operation counts against the key's own limit
            metrics.API_KEY_REQUESTS.labels(key.prefix).inc()
            limits.append((f"apikey:{key.prefix}", key.rate_limit_per_minute))
        if limits:
            try:
                await enforce(caller.services.limiter, limits)
            except DomainError as error:
                context.pre_execution_errors = [GraphQLError(error.message, extensions={
                    "code": error.code.value, "retryAfterSeconds": error.retry_after_seconds})]
                if caller.response is not None:  # HTTP; a websocket has no status to set
                    caller.response.status_code = 429
                    caller.response.headers["Retry-After"] = str(error.retry_after_seconds)
        yield


class OperationTiming(SchemaExtension):
    """Latency per query and mutation, labelled by the first root field (a bounded set)."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        context = self.execution_context
        # No document (a syntax error) has no operation type either: ask in this order.
        if context.graphql_document is None or context.operation_type == OperationType.SUBSCRIPTION:
            return
        for definition in context.graphql_document.definitions:
            if isinstance(definition, OperationDefinitionNode):
                first = definition.selection_set.selections[0]
                if isinstance(first, FieldNode):
                    metrics.OPERATION_SECONDS.labels(first.name.value).observe(time.perf_counter() - started)
                return


def create_schema(settings: Settings, allow_list: Manifest | None = None) -> strawberry.Schema:
    rules = (*QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
             *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
             *(() if settings.graphql_introspection else (NoSchemaIntrospectionCustomRule,)))
    validated: dict[Any, list[GraphQLError]] = {}
    # Factories: strawberry builds the extensions for every operation from these. Every
    # extension costs every operation its hooks, whatever they do: keep them few.
    extensions: list[Any] = [
        lambda: CachedParsing(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: CachedValidation(rules, validated),
        # All after CachedValidation: their errors replace its (empty) list, not the reverse.
        lambda: QueryCostLimit(max_cost=settings.max_query_cost),
        lambda: QueryRateLimit(per_minute=settings.query_rate_limit_per_minute),
        RefuseUnstorableText,
        lambda: ErrorMasking(hide_suggestions=not settings.graphql_introspection),
        OperationTiming,
    ]
    if allow_list is not None:
        extensions.append(lambda: AllowListed(manifest=allow_list))
    schema = BookMyEventSchema(query=Query, mutation=Mutation, subscription=Subscription,
                               extensions=extensions, config=StrawberryConfig(scalar_map=SCALARS))
    compile_inputs(schema)
    return schema
