"""ASGI middleware: a request id for every request, and a cap on request bodies; and the
GraphQL-shaped JSON answer every refusal before execution takes."""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def error_response(status_code: int, message: str, code: str) -> JSONResponse:
    """A request refused before any GraphQL ran, answered as GraphQL clients parse errors."""
    return JSONResponse({"data": None, "errors": [{"message": message, "extensions": {"code": code}}]},
                        status_code=status_code)


class RequestIdMiddleware:
    """Takes a sane incoming X-Request-ID or makes one; logs and the response carry it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        value = incoming if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        token = logs.request_id.set(value)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = value
            await send(message)

        try:
            # A websocket's logs carry the id too; its many frames skip the header wrapper.
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            logs.request_id.reset(token)


class BodySizeLimitMiddleware:
    """Refuses HTTP bodies over `max_bytes` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"Request body over {self.max_bytes} bytes", "PAYLOAD_TOO_LARGE")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
