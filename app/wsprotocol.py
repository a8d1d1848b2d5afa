"""Both websocket subprotocols, held to their message format.

strawberry's handlers index into every frame as if it were a well-formed message: a frame
that is valid JSON but not an object (`[]`, `123`, `null`), a `subscribe` whose payload is
not an object, a query that is not a string, each raised a TypeError out of the handler (an
abnormal close, 1006, and a traceback in the log). Here such a frame closes the connection
with 4400, as graphql-transport-ws prescribes for invalid messages, before strawberry sees it.

The legacy graphql-ws protocol has no connection_init timeout of its own in strawberry: a
client could hold a socket open without ever saying who it is. It gets the same wait as
graphql-transport-ws, and the same close (4408).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.websockets import WebSocketDisconnect
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

INVALID_MESSAGE = 4400
INIT_TIMED_OUT = 4408
_WITH_ID = frozenset({"subscribe", "complete", "start", "stop"})  # both protocols' operation messages
_STARTING = frozenset({"subscribe", "start"})


def malformed(message: object) -> str | None:
    """Why a decoded frame is not a message either protocol can act on; None when it is."""
    if not isinstance(message, dict):
        return "WebSocket message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "Message type must be a string"
    if kind in _WITH_ID and not isinstance(message.get("id"), str):
        return "Operation id must be a string"
    if kind in _STARTING:
        payload = message.get("payload")
        if not isinstance(payload, dict):
            return "Subscribe payload must be an object"
        if not isinstance(payload.get("query"), str):
            return "Query must be a string"
        if not isinstance(payload.get("variables"), dict | None):
            return "Variables must be an object"
        if not isinstance(payload.get("operationName"), str | None):
            return "Operation name must be a string"
    return None


class CheckedTransportWSHandler(BaseGraphQLTransportWSHandler[Any, None]):
    """graphql-transport-ws, closing with 4400 on a frame that is not one of its messages."""

    async def handle_message(self, message: Any) -> None:
        if (reason := malformed(message)) is not None:
            await self.handle_invalid_message(reason)
            return
        await super().handle_message(message)


class CheckedWSHandler(BaseGraphQLWSHandler[Any, None]):
    """The legacy graphql-ws protocol, with the checks and the connection_init timeout of
    graphql-transport-ws."""

    _initialised = False

    async def handle(self) -> None:
        watchdog = asyncio.create_task(self._close_unless_initialised())
        try:
            await super().handle()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._initialised:
            with contextlib.suppress(WebSocketDisconnect):  # the client left at this very moment
                await self.websocket.close(code=INIT_TIMED_OUT, reason="Connection initialisation timeout")

    async def handle_message(self, message: Any) -> None:
        if (reason := malformed(message)) is not None:
            await self.websocket.close(code=INVALID_MESSAGE, reason=reason)
            return
        if message["type"] == "connection_init":
            self._initialised = True
        await super().handle_message(message)
