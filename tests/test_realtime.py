"""Live availability end to end: real servers, real websockets, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from redis import asyncio as aioredis
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.db import create_sessionmaker
from app.models import Booking, BookingStatus, Role, Seat
from app.pubsub import Broker, Delivery, Slot
from app.resolvers.context import AppServices
from app.resolvers.realtime import availability_span, merge_availability
from app.schema.realtime import AvailabilityUpdate
from app.services import bookings, catalogue, inventory, outbox
from app.settings import Settings
from app.web import create_app
from tests.conftest import REDIS_PREFIX, GraphQLClient
from tests.factories import SMALL_SEAT_MAP, make_event, make_users, token_for
from tests.servers import (
    MESSAGE_TIMEOUT,
    RedisProcess,
    Subscription,
    app_processes,
    http_client,
    init_connection,
    serve_in_process,
    subscribe,
    wait_until_ready,
)
from tests.test_bookings import lapse

AVAILABILITY = """subscription($id: ID!) { eventAvailability(eventId: $id) {
  eventId availableSeats version sinceVersion status snapshot changedSeats { seatId status } } }"""
RESERVE = """mutation($input: ReserveInput!) { reserveSeats(input: $input) {
  booking { id status seats { id } event { version availableSeats } } errors { code } } }"""
CONFIRM = """mutation($input: ConfirmInput!) { confirmBooking(input: $input) {
  booking { id status } errors { code } } }"""
CANCEL = """mutation($input: CancelInput!) { cancelBooking(input: $input) {
  booking { id status } errors { code } } }"""
MY_BOOKINGS = "subscription { myBookingUpdates { reason booking { id status reference tickets { code } } } }"


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
async def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Pub/sub channels belong to the whole Redis server, not to a database: other test runs
    or a benchmark on the same Redis have their events and users 1, 2, 3... Ours start at a
    random id, so their messages cannot reach our subscribers."""
    start = random.randrange(10**6, 10**9)
    async with engine.begin() as connection:
        for sequence in ("events_id_seq", "users_id_seq"):
            await connection.execute(text(f"ALTER SEQUENCE {sequence} RESTART WITH {start}"))
    return create_sessionmaker(engine)


@contextlib.asynccontextmanager
async def served(settings: Settings, *, ready: bool = True) -> AsyncIterator[tuple[AppServices, str, GraphQLClient]]:
    """The app under uvicorn in this event loop: its services (to look inside), its websocket
    URL, and a GraphQL client over HTTP. `ready`: wait until it listens on Redis."""
    app = create_app(settings)
    async with serve_in_process(app) as address, http_client(f"http://{address}") as gql:
        if ready:
            await wait_until_ready(gql.http)
        yield app.state.services, f"ws://{address}/graphql", gql


async def reserve(gql: GraphQLClient, token: str, event_id: int, **fields: Any) -> dict[str, Any]:
    payload = (await gql(RESERVE, {"input": {"eventId": str(event_id), **fields}}, token))["reserveSeats"]
    return dict(payload)


async def test_snapshot_then_updates_over_a_real_websocket(
        postgres_database: str, redis_url: str, settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    general = await make_event(sessionmaker, capacity=10)
    seated = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    [user] = await make_users(sessionmaker, 1)
    token = token_for(user, settings)
    async with app_processes(1, database_url=postgres_database, redis_url=redis_url,
                             log_dir=tmp_path) as [server], http_client(server.http_url) as gql:
        async with subscribe(server.ws_url, AVAILABILITY, {"id": str(general.id)}) as sub:
            first = (await sub.next())["eventAvailability"]
            assert first == {"eventId": str(general.id), "availableSeats": 10, "version": general.version,
                             "sinceVersion": general.version, "status": "ON_SALE", "snapshot": True,
                             "changedSeats": []}
            booked = await reserve(gql, token, general.id, quantity=3)
            assert booked["errors"] == []
            update = (await sub.next())["eventAvailability"]
            assert update == {"eventId": str(general.id), "availableSeats": 7,
                              "version": general.version + 1, "sinceVersion": general.version,
                              "status": "ON_SALE", "snapshot": False, "changedSeats": []}
        async with subscribe(server.ws_url, AVAILABILITY, {"id": str(seated.id)}) as sub:
            first = (await sub.next())["eventAvailability"]
            assert (first["snapshot"], first["availableSeats"], first["version"]) == (True, 30, seated.version)
            booked = await reserve(gql, token, seated.id, quantity=2)
            held = sorted(seat["id"] for seat in booked["booking"]["seats"])
            update = (await sub.next())["eventAvailability"]
            assert (update["snapshot"], update["availableSeats"], update["version"]) == (False, 28, seated.version + 1)
            assert sorted(change["seatId"] for change in update["changedSeats"]) == held
            assert {change["status"] for change in update["changedSeats"]} == {"HELD"}


async def test_a_draft_event_is_not_there_for_subscribers_but_admins(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    draft = await make_event(sessionmaker, capacity=10, publish=False)
    user, admin = await make_users(sessionmaker, 1) + await make_users(sessionmaker, 1, role=Role.ADMIN)
    async with served(replace(settings, redis_url=redis_url)) as (_, ws_url, _gql):
        # Anonymous, a user: the same answer as for an event that does not exist.
        for event_id, token in ((draft.id, None), (draft.id, token_for(user, settings)), (draft.id + 10**6, None)):
            async with subscribe(ws_url, AVAILABILITY, {"id": str(event_id)}, token=token) as sub:
                refused = json.loads(await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT))
                assert [(error["message"], error["extensions"]["code"]) for error in refused["payload"]["errors"]] == \
                    [("Event not found", "NOT_FOUND")], refused
        async with subscribe(ws_url, AVAILABILITY, {"id": str(draft.id)}, token=token_for(admin, settings)) as sub:
            snapshot = (await sub.next())["eventAvailability"]
            assert (snapshot["status"], snapshot["availableSeats"]) == ("DRAFT", 10)


async def test_a_change_on_one_instance_reaches_subscribers_on_another(
        postgres_database: str, redis_url: str, settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    event = await make_event(sessionmaker, capacity=10)
    [user] = await make_users(sessionmaker, 1)
    async with app_processes(2, database_url=postgres_database, redis_url=redis_url, log_dir=tmp_path) as [a, b], \
            http_client(b.http_url) as gql_b, subscribe(a.ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:
        assert (await sub.next())["eventAvailability"]["snapshot"] is True
        assert (await reserve(gql_b, token_for(user, settings), event.id, quantity=4))["errors"] == []
        update = (await sub.next())["eventAvailability"]
        assert (update["snapshot"], update["availableSeats"], update["version"]) == (False, 6, event.version + 1)


async def test_subscriptions_resynchronise_after_redis_restarts(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    [user] = await make_users(sessionmaker, 1)
    token = token_for(user, settings)
    private_redis = RedisProcess()  # not started yet: the server comes up without Redis
    try:
        async with served(replace(settings, redis_url=private_redis.url), ready=False) as (_, ws_url, gql), \
                subscribe(ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:

            async def state() -> tuple[bool, int, int]:
                update = (await sub.next())["eventAvailability"]
                return update["snapshot"], update["availableSeats"], update["version"] - event.version

            async def book(quantity: int) -> None:
                assert (await reserve(gql, token, event.id, quantity=quantity))["errors"] == []

            # Subscribed, and booking, before Redis was ever reached: its first connection
            # must resynchronise too.
            assert await state() == (True, 10, 0)
            await book(1)
            await private_redis.start()
            assert await state() == (True, 9, 1)
            await book(1)
            assert await state() == (False, 8, 2)

            # A restart with nothing published meanwhile: every connection the server holds
            # to Redis is dead, and the next publish must not be lost on one.
            await private_redis.kill()
            await private_redis.start()
            assert await state() == (True, 8, 2)
            await book(1)
            assert await state() == (False, 7, 3)

            # Redis down: booking goes on; subscribers catch up from a snapshot; readiness
            # says whether this instance can deliver live updates.
            await private_redis.kill()
            await book(2)
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                while (await gql.http.get("/readyz")).json()["checks"]["pubsub"] == "ok":
                    await asyncio.sleep(0.05)
            await private_redis.start()
            assert await state() == (True, 5, 4)
            await wait_until_ready(gql.http)
            await book(1)
            assert await state() == (False, 4, 5)
    finally:
        await private_redis.kill()


async def test_subscribers_told_to_resynchronise_together_share_one_read(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    private_redis = RedisProcess()
    await private_redis.start()
    try:
        async with served(replace(settings, redis_url=private_redis.url)) as (services, ws_url, _), \
                contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(subscribe(ws_url, AVAILABILITY, {"id": str(event.id)}))
                    for _ in range(20)]
            for sub in subs:
                assert (await sub.next())["eventAvailability"]["snapshot"] is True
            reads: list[str] = []

            def count_event_reads(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                if "FROM events" in statement:
                    reads.append(statement)

            engine = services.sessionmaker.kw["bind"].sync_engine
            sa_event.listen(engine, "before_cursor_execute", count_event_reads)
            try:
                await private_redis.kill()
                await private_redis.start()
                for sub in subs:
                    update = (await sub.next())["eventAvailability"]
                    assert (update["snapshot"], update["version"]) == (True, event.version)
            finally:
                sa_event.remove(engine, "before_cursor_execute", count_event_reads)
            assert len(reads) == 1  # not one per subscriber
    finally:
        await private_redis.kill()


def redis_subscriber_count(redis_url: str, channel: str) -> int:
    client = redis.Redis.from_url(redis_url)
    channel = REDIS_PREFIX + channel  # as the app names it on the wire
    try:
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


@contextlib.contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    """`count` processes spinning for as long as the block runs: a machine as busy as a
    shared CI box on a bad day, on purpose."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.parametrize("cpu_hogs", [0, 2], ids=["as_is", "cpu_saturated"])
async def test_a_slow_subscriber_gets_the_latest_state_not_a_backlog(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], cpu_hogs: int) -> None:
    burst = 1000
    hall = [catalogue.Section(name="Floor", price_cents=1000,
                              rows=[catalogue.SeatRow(label=f"R{row}", seats=100) for row in range(burst // 100)])]
    event = await make_event(sessionmaker, seat_map=hall)
    async with sessionmaker() as session:
        seat_ids = set((await session.scalars(select(Seat.id).where(Seat.event_id == event.id))).all())
    [user] = await make_users(sessionmaker, 1)
    channel = outbox.availability_channel(event.id)
    final_version = event.version + burst

    async with served(replace(settings, redis_url=redis_url)) as (services, ws_url, _), \
            services.broker.subscribe(channel, merge_availability, availability_span) as unread, \
            connect(ws_url, subprotocols=["graphql-transport-ws"], max_queue=None) as ws:  # type: ignore[list-item]
        # However long the burst takes on a loaded machine: the client keeps answering pings
        # (an unbounded queue never stops it reading the socket), and changes merge.
        services.broker.coalesce_seconds = 0.5
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": AVAILABILITY, "variables": {"id": str(event.id)}}}))
        sub = Subscription(ws)

        async def buyer(seats: list[int]) -> None:  # one seat at a time, published after commit
            for seat_id in seats:
                async with sessionmaker() as session:
                    await bookings.reserve(session, user_id=user.id, event_id=event.id, quantity=None,
                                           seat_ids=[seat_id], idempotency_key=None, expected_version=None,
                                           holds=services.hold_times)
                    await session.commit()
                await services.broker.publish_all(outbox.take(session))

        assert (await sub.next())["eventAvailability"]["version"] == event.version
        with busy_cpus(cpu_hogs):  # concurrent commits then reach Redis out of version order more often
            await asyncio.gather(*(buyer(sorted(seat_ids)[i::4]) for i in range(4)))

        # A slot nobody reads holds one merged message, whatever the burst.
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            while unread._pending is None or unread._pending.message["version"] < final_version:
                await asyncio.sleep(0.05)
        assert unread.coalesced > 0
        merged = unread._pending.message
        assert (merged["availableSeats"], merged["status"]) == (0, "SOLD_OUT")
        assert {change["seatId"] for change in merged["changedSeats"]} == seat_ids
        assert {change["status"] for change in merged["changedSeats"]} == {"HELD"}

        # The websocket subscriber, reading only now, reaches the final state in far fewer
        # messages, and every seat change is in one of them.
        received = [(await sub.next())["eventAvailability"]]
        while received[-1]["version"] < final_version:
            received.append((await sub.next())["eventAvailability"])
        assert len(received) < burst
        assert (received[-1]["availableSeats"], received[-1]["status"]) == (0, "SOLD_OUT")
        # Fewer messages than changes, yet nothing missed: each takes over where the one
        # before it ended (sinceVersion), with every seat change in between.
        versions = [event.version] + [update["version"] for update in received]
        assert [update["sinceVersion"] for update in received] == versions[:-1]
        assert {int(change["seatId"]) for update in received for change in update["changedSeats"]} == seat_ids


def availability_message(event_id: int, version: int, seat_ids: range | list[int]) -> dict[str, Any]:
    """What the app publishes when these seats are taken."""
    return inventory.availability_message(event_id, 1, version, "ON_SALE",
                                          [(seat_id, "HELD") for seat_id in seat_ids])


async def test_a_channel_delivers_one_shared_message_and_merges_changes_within_its_window() -> None:
    broker = Broker("memory://", coalesce_seconds=0.5)
    await broker.start()
    channel = "test:coalescing"
    try:
        async with broker.subscribe(channel, merge_availability) as first, \
                broker.subscribe(channel, merge_availability) as second:
            await broker.publish(channel, availability_message(1, 1, [1]))
            # After a quiet spell a change goes out at once, as one object for every reader.
            leading = await asyncio.wait_for(first.next(), MESSAGE_TIMEOUT)
            assert leading is await asyncio.wait_for(second.next(), MESSAGE_TIMEOUT)
            assert leading.message["version"] == 1
            for version in range(2, 7):
                await broker.publish(channel, availability_message(1, version, [version]))
            # The changes within the window go out together when it closes, merged once by the
            # channel (not by each reader: both were waiting).
            merged = await asyncio.wait_for(first.next(), MESSAGE_TIMEOUT)
            assert merged is await asyncio.wait_for(second.next(), MESSAGE_TIMEOUT)
            assert (merged.message["version"], merged.message["sinceVersion"]) == (6, 1)
            assert [change["seatId"] for change in merged.message["changedSeats"]] == [2, 3, 4, 5, 6]
            assert first.coalesced == second.coalesced == 0
    finally:
        await broker.stop()


async def test_a_channel_delivers_versions_in_order_whatever_order_they_were_published_in() -> None:
    broker = Broker("memory://", coalesce_seconds=0.0, reorder_seconds=MESSAGE_TIMEOUT)
    await broker.start()
    channel = "test:reordering"
    try:
        async with broker.subscribe(channel, merge_availability, availability_span) as slot:
            slot.start_from(10)  # the reader's snapshot
            # 11 and 12 reach the channel after 13..15, and an old 9 after them all.
            for version in (13, 15, 14, 11, 12, 9):
                await broker.publish(channel, availability_message(1, version, [version]))
            received = []
            while not received or received[-1]["version"] < 15:
                delivery = await asyncio.wait_for(slot.next(), MESSAGE_TIMEOUT)
                assert delivery is not None
                received.append(delivery.message)
            # Each message takes over where the one before ended, with every seat change.
            assert [message["sinceVersion"] for message in received] == \
                [10] + [message["version"] for message in received[:-1]]
            assert sorted(change["seatId"] for message in received for change in message["changedSeats"]) == \
                [11, 12, 13, 14, 15]
            # Unversioned channels pass straight through, in arrival order.
            async with broker.subscribe("test:plain", merge_availability) as plain:
                await broker.publish("test:plain", availability_message(1, 2, [2]))
                delivery = await asyncio.wait_for(plain.next(), MESSAGE_TIMEOUT)
                assert delivery is not None and delivery.message["version"] == 2
    finally:
        await broker.stop()


async def test_a_version_that_never_comes_is_waited_for_only_so_long() -> None:
    broker = Broker("memory://", coalesce_seconds=0.0, reorder_seconds=0.2)
    await broker.start()
    channel = "test:lost"
    try:
        async with broker.subscribe(channel, merge_availability, availability_span) as slot:
            slot.start_from(1)
            await broker.publish(channel, availability_message(1, 3, [3]))  # 2 is lost
            delivery = await asyncio.wait_for(slot.next(), MESSAGE_TIMEOUT)
            # It goes after the wait, showing the gap so that the reader re-reads.
            assert delivery is not None
            assert (delivery.message["sinceVersion"], delivery.message["version"]) == (2, 3)
            # The lost one arriving at last is covered by the re-read: dropped; order goes on.
            await broker.publish(channel, availability_message(1, 2, [2]))
            await broker.publish(channel, availability_message(1, 4, [4]))
            delivery = await asyncio.wait_for(slot.next(), MESSAGE_TIMEOUT)
            assert delivery is not None
            assert (delivery.message["sinceVersion"], delivery.message["version"]) == (3, 4)
    finally:
        await broker.stop()


async def test_an_update_is_built_once_and_rendered_once_per_subscription_document(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    [user] = await make_users(sessionmaker, 1)
    variables = {"id": str(event.id)}
    fewer_fields = "subscription($id: ID!) { eventAvailability(eventId: $id) { version availableSeats } }"
    async with served(replace(settings, redis_url=redis_url)) as (services, ws_url, gql), \
            services.broker.subscribe(outbox.availability_channel(event.id), merge_availability,
                                     availability_span) as probe, \
            subscribe(ws_url, AVAILABILITY, variables) as one, \
            subscribe(ws_url, AVAILABILITY, variables, operation_id='the "same" document') as two, \
            subscribe(ws_url, fewer_fields, variables) as other:
        for sub in (one, two, other):
            assert (await sub.next())["eventAvailability"]["version"] == event.version
        assert (await reserve(gql, token_for(user, settings), event.id, quantity=2))["errors"] == []
        updates = [(await sub.next())["eventAvailability"] for sub in (one, two, other)]
        assert updates[0] == updates[1] == {
            "eventId": str(event.id), "availableSeats": 8, "version": event.version + 1,
            "sinceVersion": event.version, "status": "ON_SALE", "snapshot": False, "changedSeats": []}
        assert updates[2] == {"version": event.version + 1, "availableSeats": 8}
        assert two.last_id == 'the "same" document'
        # Every subscriber got the same delivery: it holds one GraphQL object and one
        # rendering per distinct document, however many subscribers share them.
        delivery = await asyncio.wait_for(probe.next(), MESSAGE_TIMEOUT)
        assert delivery is not None and AvailabilityUpdate in delivery.derived
        assert len(delivery.derived) == 1 + 2


async def test_the_legacy_graphql_ws_protocol_gets_the_same_updates(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    [user] = await make_users(sessionmaker, 1)
    async with served(replace(settings, redis_url=redis_url)) as (_, ws_url, gql), \
            connect(ws_url, subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]

        async def receive() -> dict[str, Any]:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
                if message["type"] != "ka":  # keep-alive
                    return dict(message)

        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert (await receive())["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "start", "id": "1",
                                  "payload": {"query": AVAILABILITY, "variables": {"id": str(event.id)}}}))
        first = await receive()
        assert first["type"] == "data" and first["payload"]["data"]["eventAvailability"]["snapshot"] is True
        assert (await reserve(gql, token_for(user, settings), event.id, quantity=3))["errors"] == []
        update = (await receive())["payload"]["data"]["eventAvailability"]
        assert (update["snapshot"], update["availableSeats"], update["version"]) == (False, 7, event.version + 1)


async def test_bad_documents_over_the_websocket_get_protocol_answers(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    async with served(replace(settings, redis_url=redis_url)) as (_, ws_url, _gql):
        # Invalid but parseable: an `error` message for that operation, the connection stays.
        async with subscribe(ws_url, "subscription { eventAvailability(eventId: 1) { nope } }") as sub:
            refused = json.loads(await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT))
            assert refused["type"] == "error" and "nope" in refused["payload"][0]["message"]
            await sub.ws.send(json.dumps({"id": "2", "type": "subscribe", "payload": {
                "query": AVAILABILITY, "variables": {"id": str(event.id)}}}))
            assert (await sub.next())["eventAvailability"]["snapshot"] is True
        # Not even parseable: the protocol closes the connection with 4400.
        async with subscribe(ws_url, "subscription { eventAvailability(") as sub:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
            assert "Syntax Error" in closed.value.rcvd.reason


async def test_a_client_that_stops_reading_holds_one_merged_update_not_a_backlog(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    channel = outbox.availability_channel(event.id)
    changes, seats_per_change = 40, 3000  # about 5 MB in all: far more than socket buffers take
    final_version = event.version + changes
    async with served(replace(settings, redis_url=redis_url)) as (services, ws_url, _):
        host, port = ws_url.removeprefix("ws://").removesuffix("/graphql").split(":")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, before connecting
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
        async with connect(ws_url, sock=raw, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                           max_queue=1, max_size=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                      "payload": {"query": AVAILABILITY, "variables": {"id": str(event.id)}}}))
            sub = Subscription(ws)
            assert (await sub.next())["eventAvailability"]["snapshot"] is True
            [server_side] = services.broker._channels[channel].slots

            # Each change its own delivery (they come slower than the coalescing window), each
            # sent while the client reads nothing.
            for k in range(1, changes + 1):
                await services.broker.publish(channel, availability_message(
                    event.id, event.version + k, range(k * seats_per_change, (k + 1) * seats_per_change)))
                await asyncio.sleep(services.broker.coalesce_seconds * 1.5)
            # The server's send waits for the socket; meanwhile the changes merge into the one
            # message its slot holds, instead of queueing in memory.
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                while server_side._pending is None or server_side._pending.message["version"] < final_version:
                    await asyncio.sleep(0.05)
            assert server_side.coalesced > 0

            received = [(await sub.next())["eventAvailability"]]
            while received[-1]["version"] < final_version:
                received.append((await sub.next())["eventAvailability"])
            assert len(received) < changes
            versions = [update["version"] for update in received]
            assert versions == sorted(set(versions))
            seen = {int(change["seatId"]) for update in received for change in update["changedSeats"]}
            assert seen == set(range(seats_per_change, (changes + 1) * seats_per_change))


async def test_a_slot_keeps_a_message_that_arrives_after_a_resync() -> None:
    slot = Slot(merge_availability)
    slot.put(Delivery({"version": 1, "changedSeats": []}))
    slot.resync()  # drops what was pending: the snapshot that follows covers it
    slot.put(Delivery({"version": 2, "changedSeats": []}))
    assert await slot.next() is None
    kept = await asyncio.wait_for(slot.next(), MESSAGE_TIMEOUT)
    assert kept is not None and kept.message["version"] == 2


async def test_dropped_connections_leave_nothing_behind(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    channel = outbox.availability_channel(event.id)
    # A small pool: the snapshots queue for it instead of taking a shared server's connections.
    async with served(replace(settings, redis_url=redis_url, db_pool_size=5, db_max_overflow=0)) \
            as (services, ws_url, _):
        broker: Broker = services.broker
        baseline = len(asyncio.all_tasks())

        async def connection(index: int) -> None:
            async with subscribe(ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:
                if index % 3 != 2:  # some leave before their snapshot, possibly mid-subscribe
                    assert (await sub.next())["eventAvailability"]["snapshot"] is True
                if index % 3 != 0:  # some vanish without a closing handshake
                    sub.ws.transport.abort()

        for batch in range(20):
            await asyncio.gather(*(connection(batch * 50 + i) for i in range(50)))
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            while broker.subscriber_count or broker._channels or len(asyncio.all_tasks()) > baseline:
                await asyncio.sleep(0.05)
        assert redis_subscriber_count(redis_url, channel) == 0


@contextlib.asynccontextmanager
async def commits_refused_for(engine: AsyncEngine, user_id: int) -> AsyncIterator[None]:
    """PostgreSQL refuses, at COMMIT, any transaction that inserted a booking of `user_id`
    (a deferred constraint trigger): a unit of work that fails after all its statements."""
    async with engine.begin() as connection:
        await connection.execute(text(
            "CREATE OR REPLACE FUNCTION refuse_for_test() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test at commit'; END $$"))
        await connection.execute(text(
            "CREATE CONSTRAINT TRIGGER refuse_for_test AFTER INSERT ON bookings DEFERRABLE INITIALLY DEFERRED "
            f"FOR EACH ROW WHEN (NEW.user_id = {int(user_id)}) EXECUTE FUNCTION refuse_for_test()"))
    try:
        yield
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TRIGGER refuse_for_test ON bookings"))
            await connection.execute(text("DROP FUNCTION refuse_for_test()"))


async def test_a_rolled_back_reserve_publishes_nothing(
        redis_url: str, settings: Settings, engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=3)
    first, second, third = await make_users(sessionmaker, 3)
    channels = [REDIS_PREFIX + outbox.availability_channel(event.id), REDIS_PREFIX + outbox.bookings_channel(first.id)]
    async with served(replace(settings, redis_url=redis_url)) as (_, ws_url, gql), \
            aioredis.Redis.from_url(redis_url) as raw, raw.pubsub(ignore_subscribe_messages=True) as published:
        held = await reserve(gql, token_for(first, settings), event.id, quantity=2)
        await lapse(sessionmaker, held["booking"]["id"])
        await published.subscribe(*channels)  # every message, unmerged, in publishing order
        async with subscribe(ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:
            snapshot = (await sub.next())["eventAvailability"]  # the lapsed hold counts as free
            assert (snapshot["snapshot"], snapshot["availableSeats"]) == (True, 3)
            # Taking 2 expires the lapsed hold first (recording its release and the EXPIRED
            # booking update), takes the places, then the commit fails: none of it published.
            async with commits_refused_for(engine, second.id):
                failed = await gql.raw(RESERVE, {"input": {"eventId": str(event.id), "quantity": 2}},
                                       token_for(second, settings))
            assert failed["data"] is None and failed["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
            assert (await reserve(gql, token_for(third, settings), event.id, quantity=1))["errors"] == []
            update = (await sub.next())["eventAvailability"]
            assert (update["snapshot"], update["availableSeats"], update["version"], update["status"]) == \
                (False, 0, event.version + 2, "SOLD_OUT")
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                while (message := await published.get_message(timeout=1.0)) is None:
                    pass  # subscribe confirmations, or nothing yet
            assert message["channel"].decode() == channels[0]
            assert (json.loads(message["data"])["version"], json.loads(message["data"])["availableSeats"]) == \
                (event.version + 2, 0)
    async with sessionmaker() as session:  # the expiry was rolled back too
        booking = await session.get(Booking, int(held["booking"]["id"]))
        assert booking is not None and booking.status == BookingStatus.PENDING


async def test_private_updates_end_with_the_access_token(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=5)
    [user] = await make_users(sessionmaker, 1)
    short_lived = token_for(user, replace(settings, access_token_ttl_seconds=3))
    expires_at = jwt.decode(short_lived, options={"verify_signature": False})["exp"]
    token = token_for(user, settings)  # for the HTTP calls
    async with served(replace(settings, redis_url=redis_url)) as (_, ws_url, gql), \
            subscribe(ws_url, MY_BOOKINGS, token=short_lived) as sub:
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            while not redis_subscriber_count(redis_url, outbox.bookings_channel(user.id)):
                await asyncio.sleep(0.05)
        booking_id = (await reserve(gql, token, event.id, quantity=1))["booking"]["id"]
        confirmed = await gql(CONFIRM, {"input": {"bookingId": booking_id, "paymentToken": "tok_visa"}}, token)
        assert confirmed["confirmBooking"]["errors"] == []
        assert (await sub.next())["myBookingUpdates"]["reason"] == "CONFIRMED"

        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.5)  # the token's own lifetime
        cancelled = await gql(CANCEL, {"input": {"bookingId": booking_id}}, token)
        assert cancelled["cancelBooking"]["errors"] == []
        ended = json.loads(await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT))
        assert ended["type"] == "next" and ended["payload"]["data"] is None
        assert "expired" in ended["payload"]["errors"][0]["message"]
        assert ended["payload"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert json.loads(await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT))["type"] == "complete"
        # The socket itself stays: public subscriptions go on, private ones are refused.
        for operation_id, query in (("2", MY_BOOKINGS), ("3", AVAILABILITY)):
            await sub.ws.send(json.dumps({"id": operation_id, "type": "subscribe", "payload": {
                "query": query, "variables": {"id": str(event.id)} if query == AVAILABILITY else {}}}))
        first: dict[str, dict[str, Any]] = {}
        while len(first) < 2:
            message = json.loads(await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT))
            first.setdefault(message["id"], message)
        assert [error["extensions"]["code"] for error in first["2"]["payload"]["errors"]] == ["UNAUTHENTICATED"]
        assert first["3"]["payload"]["data"]["eventAvailability"]["snapshot"] is True


async def test_my_booking_updates_and_websocket_authentication(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=5)
    [user] = await make_users(sessionmaker, 1)
    token = token_for(user, settings)
    async with served(replace(settings, redis_url=redis_url)) as (_, ws_url, gql):
        # No connection_init at all: closed once the server's wait (5 s) is over.
        silent = await connect(ws_url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        try:
            bad = await init_connection(ws_url, {"authorization": "Bearer not-a-token"})
            with pytest.raises(ConnectionClosed) as rejected:
                await asyncio.wait_for(bad.recv(), MESSAGE_TIMEOUT)
            assert rejected.value.rcvd is not None and rejected.value.rcvd.code == 4403

            async with subscribe(ws_url, MY_BOOKINGS) as anonymous:  # allowed, but not this
                refused = json.loads(await asyncio.wait_for(anonymous.ws.recv(), MESSAGE_TIMEOUT))
                assert [error["extensions"]["code"] for error in refused["payload"]["errors"]] == ["UNAUTHENTICATED"]

            async with subscribe(ws_url, MY_BOOKINGS, token=token) as sub:
                # Nothing is sent on subscribing: wait until the server listens on Redis.
                async with asyncio.timeout(MESSAGE_TIMEOUT):
                    while not redis_subscriber_count(redis_url, outbox.bookings_channel(user.id)):
                        await asyncio.sleep(0.05)
                booking_id = (await reserve(gql, token, event.id, quantity=2))["booking"]["id"]
                confirmed = (await gql(CONFIRM, {"input": {"bookingId": booking_id, "paymentToken": "tok_visa"}},
                                       token))["confirmBooking"]
                assert confirmed["errors"] == []
                update = (await sub.next())["myBookingUpdates"]
                assert update["reason"] == "CONFIRMED"
                assert (update["booking"]["id"], update["booking"]["status"]) == (booking_id, "CONFIRMED")
                assert len(update["booking"]["tickets"]) == 2

            with pytest.raises(ConnectionClosed) as timed_out:
                await asyncio.wait_for(silent.recv(), MESSAGE_TIMEOUT)
            assert timed_out.value.rcvd is not None and timed_out.value.rcvd.code == 4408
        finally:
            await silent.close()
