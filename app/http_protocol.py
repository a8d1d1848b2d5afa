"""uvicorn's HTTP/1.1 protocol (httptools) with read deadlines and a bounded request head.

uvicorn times out idle keep-alive connections only: a client that sends its headers or its
body a byte at a time keeps the connection, and what it buffered, for as long as it likes,
and llhttp takes headers of any size. Here a request's line and headers must arrive within
HEADER_TIMEOUT_SECONDS of the connection (or of the request's first byte on a kept-alive
connection) and within MAX_HEAD_BYTES, and its body within BODY_TIMEOUT_SECONDS of the
headers. Past a deadline the client gets 408 (unless a response has started) and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import load_settings

MAX_HEAD_BYTES = 64 * 1024
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@functools.cache
def _timeouts() -> tuple[float, float]:
    """(header, body) timeouts: uvicorn builds protocols from a class path, so each worker
    reads them from its environment like the app does."""
    settings = load_settings()
    return settings.header_timeout_seconds, settings.body_timeout_seconds


class HeadTooLarge(Exception):
    """Raised from a parser callback: uvicorn answers 400 and closes."""


class TimedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_timeouts()[0])  # a connection that never sends a byte is slow too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._deadline is None:
            self._arm(_timeouts()[0])

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._disarm()
        upgrading = self.parser.should_upgrade() and self._should_upgrade()
        super().on_headers_complete()
        if not upgrading:  # a websocket is the websocket protocol's business from here
            self._arm(_timeouts()[1])

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
