"""A minimal graphql-transport-ws subscriber for benchmarks, on a bare asyncio protocol.

One process has to hold a thousand or more sockets and stamp the arrival of every message.
A full client library (`websockets`) spends tens of microseconds of Python per message,
which with a thousand subscribers adds its own queue to the very tail being measured. This
client parses only what the server sends (unmasked frames: text, ping, close) and stamps a
message as soon as its bytes arrive, in `data_received`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections.abc import Callable
from typing import Any

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, masked as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class Subscriber(asyncio.Protocol):
    """Connects, sends connection_init and one subscribe, then records (arrival, message) of
    every `next` message. `snapshot` resolves with the first one."""

    def __init__(self, host: str, port: int, subscribe: dict[str, Any],
                 on_next: Callable[[float, dict[str, Any]], None] | None = None,
                 init: dict[str, Any] | None = None) -> None:
        self.host, self.port = host, port
        self.subscribe = subscribe
        self.init = init or {}  # connection_init payload: {"Authorization": "Bearer ..."} signs in
        self.on_next = on_next
        self.buffer = bytearray()
        self.upgraded = False
        self.snapshot: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /graphql HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                         "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n").encode())

    def send_json(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(frame(TEXT, json.dumps(message).encode()))

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status:
                self._fail(RuntimeError(f"upgrade refused: {status!r}"))
                return
            del self.buffer[:end + 4]
            self.upgraded = True
            self.send_json({"type": "connection_init", "payload": self.init})
        while (parsed := self._next_frame()) is not None:
            opcode, payload = parsed
            if opcode == TEXT:
                self._on_text(arrived, json.loads(payload))
            elif opcode == PING:
                assert self.transport is not None
                self.transport.write(frame(PONG, payload))
            elif opcode == CLOSE:
                self._fail(ConnectionError(f"closed by server: {payload[2:].decode(errors='replace')}"))

    def _next_frame(self) -> tuple[int, bytes] | None:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
        if len(buffer) < offset + length:
            return None
        payload = bytes(buffer[offset:offset + length])
        del buffer[:offset + length]
        return opcode, payload

    def _on_text(self, arrived: float, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connection_ack":
            self.send_json({"id": "1", "type": "subscribe", "payload": self.subscribe})
        elif kind == "next":
            if not self.snapshot.done():
                self.snapshot.set_result(message)
            elif self.on_next is not None:
                self.on_next(arrived, message)
        elif kind == "ping":
            self.send_json({"type": "pong"})
        elif kind in ("error", "complete"):
            self._fail(RuntimeError(f"server sent {kind}: {message}"))

    def _fail(self, error: Exception) -> None:
        for future in (self.snapshot, self.closed):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: whoever awaits it still gets it
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection lost"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(CLOSE, struct.pack("!H", 1000)))
            self.transport.close()


async def subscribe(host: str, port: int, payload: dict[str, Any],
                    on_next: Callable[[float, dict[str, Any]], None] | None = None,
                    timeout: float = 30, init: dict[str, Any] | None = None) -> tuple[Subscriber, dict[str, Any]]:
    """Open a subscription; returns the subscriber and its first message (the snapshot)."""
    loop = asyncio.get_running_loop()
    _, subscriber = await asyncio.wait_for(
        loop.create_connection(lambda: Subscriber(host, port, payload, on_next, init), host, port), timeout)
    try:
        first = await asyncio.wait_for(asyncio.shield(subscriber.snapshot), timeout)
    except BaseException:
        subscriber.close()
        raise
    return subscriber, first
