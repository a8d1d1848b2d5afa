"""Render once, send to many: subscription updates over graphql-transport-ws.

strawberry runs a subscription's selection set, its extension hooks and the JSON encoding
for every subscriber and every event, about 140 us each: a change reaching the 1,000
subscribers of one worker cost 140 ms of CPU before the last of them heard of it. When an
update is the same for everyone who asked the same question (`eventAvailability`: facts
about the event, nothing about the reader), its resolver sends the updates that follow the
first message itself, through a `DirectSender`: each update is rendered once per distinct
subscription (document, operation, variables) and the same text goes to all of them, so
only the send is paid per subscriber.

The first message of every subscription, and any error, still goes through strawberry, so
validation, document limits and error masking are those of any other operation. Other
transports (the legacy graphql-ws protocol, HTTP) have no direct sender: there the resolver
yields its updates as usual.
"""

from __future__ import annotations

import functools
import inspect
import json
from contextvars import ContextVar
from typing import Any

from graphql import GraphQLSchema, execute_subscription_event, parse
from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation

from app.pubsub import Delivery
from app.wsprotocol import CheckedTransportWSHandler

RENDERER_CACHE_SIZE = 512  # distinct subscription documents kept ready; clients send a handful

_current: ContextVar[DirectSender | None] = ContextVar("direct_sender", default=None)


def direct_sender() -> DirectSender | None:
    """The sender of the subscription being resolved, when its transport allows one."""
    return _current.get()


class TransportWSHandler(CheckedTransportWSHandler):
    """strawberry's graphql-transport-ws handler, offering each operation a direct sender."""

    async def run_operation(self, operation: Operation[Any, None]) -> None:
        # Each operation runs in a task of its own, so this is seen by its resolver alone.
        _current.set(DirectSender(self, operation))
        await super().run_operation(operation)


class DirectSender:
    """Sends `next` messages of one operation, rendered from the value its resolver would yield.

    Only for payloads that depend on nothing but the value: rendering runs without a context,
    and one rendering serves every subscriber of the same document."""

    def __init__(self, handler: TransportWSHandler, operation: Operation[Any, None]) -> None:
        self._websocket = handler.websocket.ws  # the Starlette WebSocket under strawberry's adapter
        self._schema: GraphQLSchema = handler.schema._schema  # type: ignore[attr-defined]
        self._operation = operation
        self._prefix = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'
        self._renderer: _Renderer | None = None

    async def send(self, value: object, delivery: Delivery | None) -> None:
        """Send `value`; rendered once per `delivery` for all who share it (None: for us alone)."""
        if self._renderer is None:  # only now: strawberry has accepted the document by this time
            operation = self._operation
            self._renderer = _renderer(self._schema, operation.query, operation.operation_name,
                                       json.dumps(operation.variables, sort_keys=True))
        render = functools.partial(self._renderer.render, value)
        payload = render() if delivery is None else delivery.derive(self._renderer, render)
        try:
            await self._websocket.send_text(self._prefix + payload + "}")
        except WebSocketDisconnect as error:  # as strawberry's own sends report it
            raise WebSocketDisconnected from error


class _Renderer:
    """One subscription document, ready to render values into `next` payloads (JSON text)."""

    def __init__(self, schema: GraphQLSchema, query: str, operation_name: str | None, variables: str) -> None:
        executor = StrawberryGraphQLCoreExecutionContext.build(
            schema, parse(query), raw_variable_values=json.loads(variables), operation_name=operation_name)
        if isinstance(executor, list):  # cannot happen: strawberry ran this very document first
            raise executor[0]
        self._executor = executor

    def render(self, value: object) -> str:
        result = execute_subscription_event(self._executor.build_per_event_executor(value))
        if inspect.isawaitable(result):
            raise TypeError("direct sending needs a payload whose fields resolve synchronously")
        if result.errors:
            raise result.errors[0]  # strawberry reports it on this operation, masked like any other
        return json.dumps({"data": result.data})


@functools.lru_cache(maxsize=RENDERER_CACHE_SIZE)
def _renderer(schema: GraphQLSchema, query: str, operation_name: str | None, variables: str) -> _Renderer:
    return _Renderer(schema, query, operation_name, variables)
