"""Websocket protocol edges, against `bookmyevent serve` in a subprocess: frames that are not
messages of the protocol close the connection cleanly (4400), never with a traceback, and
both protocols stop waiting for a silent client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.factories import make_event
from tests.servers import MESSAGE_TIMEOUT, AppProcess, app_processes

QUERY = "subscription($id: ID!) { eventAvailability(eventId: $id) { version snapshot } }"
TOO_DEEP = "[" * 30_000 + "]" * 30_000  # within the frame limit, past Python's recursion limit


def bad_frames(start: str) -> list[str]:
    """Frames each protocol must refuse; `start` is its message that starts an operation."""
    def operation(**fields: Any) -> str:
        return json.dumps({"id": "1", "type": start, **fields})

    return [
        "[]", "123", "null", '"connection_init"', "true", json.dumps({"type": 5}), json.dumps({"payload": {}}),
        operation(payload=[]), operation(payload="query"), operation(payload=None), operation(),
        operation(payload={"query": 123}), operation(payload={"query": None}), operation(payload={"query": ["{"]}),
        operation(payload={"query": QUERY, "variables": []}), operation(payload={"query": QUERY, "variables": 7}),
        operation(payload={"query": QUERY, "operationName": 5}),
        json.dumps({"id": 1, "type": start, "payload": {"query": QUERY}}),
        json.dumps({"id": ["1"], "type": start, "payload": {"query": QUERY}}),
    ]


@pytest.fixture
def backend() -> str:
    return "postgres"


async def open_socket(server: AppProcess, protocol: str, *, init: bool) -> ClientConnection:
    ws = await connect(server.ws_url, subprotocols=[protocol], open_timeout=MESSAGE_TIMEOUT)  # type: ignore[list-item]
    if init:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
    return ws


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """The close code and reason the server ends the connection with, once it does."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
            assert message["type"] == "ka", message  # graphql-ws keep-alives only
    assert closed.value.rcvd is not None, closed.value  # the server closed, with a code
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def still_serves(server: AppProcess, protocol: str, event_id: int) -> None:
    start, answer = ("subscribe", "next") if protocol == "graphql-transport-ws" else ("start", "data")
    ws = await open_socket(server, protocol, init=True)
    try:
        await ws.send(json.dumps({"id": "1", "type": start,
                                  "payload": {"query": QUERY, "variables": {"id": str(event_id)}}}))
        message = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
        assert message["type"] == answer and message["payload"]["data"]["eventAvailability"]["snapshot"], message
    finally:
        await ws.close()


@pytest.mark.parametrize(("protocol", "start"), [("graphql-transport-ws", "subscribe"), ("graphql-ws", "start")])
async def test_frames_that_are_not_protocol_messages_close_the_connection_with_4400(
        protocol: str, start: str, postgres_database: str, redis_url: str,
        sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    event = await make_event(sessionmaker, capacity=10)
    frames = bad_frames(start)
    if protocol == "graphql-transport-ws":
        frames.append(TOO_DEEP)  # graphql-ws skips frames it cannot decode, by its own rule
    async with app_processes(1, database_url=postgres_database, redis_url=redis_url,
                             log_dir=tmp_path) as [server]:
        for frame in frames:
            for init in (True, False):  # after the handshake, and as the very first frame
                ws = await open_socket(server, protocol, init=init)
                try:
                    await ws.send(frame)
                    code, _reason = await closed_with(ws)
                    assert code == 4400, (frame[:80], init, code)
                finally:
                    await ws.close()
        await still_serves(server, protocol, event.id)
        log = server.log()
    assert "Traceback" not in log, log[-5000:]


async def test_a_legacy_client_that_never_initialises_is_closed_after_the_wait(
        postgres_database: str, redis_url: str, tmp_path: Path) -> None:
    """As graphql-transport-ws clients are (tests/test_realtime.py)."""
    async with app_processes(1, database_url=postgres_database, redis_url=redis_url,
                             log_dir=tmp_path) as [server]:
        silent = await open_socket(server, "graphql-ws", init=False)
        try:
            assert await closed_with(silent) == (4408, "Connection initialisation timeout")
        finally:
            await silent.close()
        log = server.log()
    assert "Traceback" not in log, log[-5000:]
