"""Faults under load: PostgreSQL restarted, Redis killed, a server process killed, the clock
jumping. After each, the database tells the truth: places taken == places held + sold,
no booking charged twice, no confirmed booking lost.

The PostgreSQL and Redis servers killed here are private ones on free ports (never the
shared ones other tests use); they are always stopped and removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.cli import migrate
from app.db import create_engine, create_sessionmaker
from app.errors import DomainError, ErrorCode
from app.models import Booking, BookingStatus, Event, Payment, PaymentKind, Seat, utcnow
from app.services import bookings, inventory, reports, waitlist
from app.services.payments import MockGateway
from app.settings import Settings
from tests.conftest import GraphQLClient, _service_missing, base_settings, free_port, running_app
from tests.factories import SMALL_SEAT_MAP, identity_of, make_event, make_users, token_for
from tests.servers import STARTUP_TIMEOUT, AppProcess, RedisProcess, http_client
from tests.test_concurrency import HOLDS, assert_inventory_truth

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
LEAKS = ("Traceback", 'File "', "sqlalchemy", "asyncpg", "sqlite3", "psycopg", "SELECT ", "UPDATE ")
MASKED = re.compile(r"^Internal server error \(request id [A-Za-z0-9._-]+\)$")
STORM_SECONDS = 40.0  # a bound, never an expectation: each storm stops by itself well before
RESERVE = """mutation($input: ReserveInput!) { reserveSeats(input: $input) {
  booking { id status } errors { code message } } }"""
CONFIRM = """mutation($input: ConfirmInput!) { confirmBooking(input: $input) {
  booking { id status } errors { code message } } }"""


@pytest.fixture
def backend() -> str:
    return "postgres"


# --- a private PostgreSQL cluster ---------------------------------------------------------

class PrivatePostgres:
    """initdb into a temporary directory, on a free port, trust auth, small and unsynced
    (a fast restart checkpoints, so nothing committed is lost)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bookmyevent-pg-"))
        self.data = self.root / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = STARTUP_TIMEOUT) -> None:
        # Every command that starts the server gives it a log file (-l): a server writing to
        # our pipes would keep them open, and this call would wait for it forever.
        result = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{args[0]} failed: {result.stdout}\n{result.stderr}\n{self.log()}"

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            _service_missing("PostgreSQL binaries", f"no initdb in {PG_BIN}")
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        await asyncio.to_thread(self._run, str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                                "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=40 -c shared_buffers=16MB")
        await asyncio.to_thread(self._run, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                                "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    async def restart(self) -> None:
        """Fast shutdown (open sessions are cut, open transactions roll back), then start
        with the same options."""
        await asyncio.to_thread(self._run, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                "-l", str(self.root / "server.log"), "-w", "-t", "60", "restart")

    async def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._run, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                                        "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[tuple[PrivatePostgres, str]]:
    """A migrated database on a private cluster; yields the cluster and the database URL."""
    cluster = PrivatePostgres()
    try:
        await cluster.start()
        admin = await asyncpg.connect(cluster.admin_dsn, timeout=10)
        try:
            await admin.execute("CREATE DATABASE bookmyevent")
        finally:
            await admin.close()
        url = cluster.url("bookmyevent")
        await asyncio.to_thread(migrate, base_settings(database_url=url))
        yield cluster, url
    finally:
        await cluster.remove()


# --- what every fault test checks afterwards -----------------------------------------------

def assert_clean(response: httpx.Response) -> dict[str, Any]:
    """A clean answer: JSON, no 5xx, no internals; a server fault only as the masked message."""
    assert response.status_code == 200, response.text
    leaked = [word for word in LEAKS if word in response.text]
    assert not leaked, f"{leaked} in {response.text}"
    body = response.json()
    for error in body.get("errors") or []:
        assert MASKED.match(error["message"]), error
        assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR", error
    return dict(body)


async def assert_payments_truth(sessionmaker: async_sessionmaker[AsyncSession], event_id: int,
                                confirmed: set[int]) -> None:
    """Every booking a client saw confirmed is CONFIRMED; every CONFIRMED booking has exactly
    one charge; no booking was charged twice; no charge without a confirmed booking."""
    async with sessionmaker() as session:
        status = dict((await session.execute(select(Booking.id, Booking.status)
                                             .where(Booking.event_id == event_id))).all())
        charges = Counter((await session.scalars(
            select(Payment.booking_id).join(Booking, Booking.id == Payment.booking_id)
            .where(Booking.event_id == event_id, Payment.kind == PaymentKind.CHARGE))).all())
    assert all(status.get(booking_id) == BookingStatus.CONFIRMED for booking_id in confirmed)
    assert set(charges) == {b for b, s in status.items() if s == BookingStatus.CONFIRMED}
    assert set(charges.values()) <= {1}


@dataclass
class Storm:
    """Buyers reserving (and paying for every other hold) in a loop, each for at most
    `max_requests` requests and STORM_SECONDS, tallying what the server answered."""

    gql: GraphQLClient
    event_id: int
    tokens: list[str]
    max_requests: int = 400
    reserved: set[int] = field(default_factory=set)
    confirmed: set[int] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    successes_after: Counter[int] = field(default_factory=Counter)  # per buyer, after `fault_over`
    fault_over: asyncio.Event = field(default_factory=asyncio.Event)

    def ok(self) -> int:
        return self.outcomes["ok"]

    async def _call(self, query: str, variables: dict[str, Any], token: str, field_name: str) -> dict[str, Any] | None:
        body = assert_clean(await self.gql.http.post("/graphql", json={"query": query, "variables": variables},
                                                     headers={"Authorization": f"Bearer {token}"}))
        if body.get("errors"):
            self.outcomes["masked fault"] += 1
            return None
        payload = body["data"][field_name]
        if payload["errors"]:
            self.outcomes[payload["errors"][0]["code"]] += 1
            return None
        self.outcomes["ok"] += 1
        return dict(payload["booking"])

    async def buyer(self, index: int, enough_after: int) -> None:
        token = self.tokens[index]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORM_SECONDS
        for number in range(self.max_requests):
            if loop.time() > deadline or self.successes_after[index] >= enough_after:
                return
            over = self.fault_over.is_set()
            booking = await self._call(RESERVE, {"input": {"eventId": str(self.event_id), "quantity": 1}},
                                       token, "reserveSeats")
            if booking is None:
                await asyncio.sleep(0.02)  # the fault is on: do not spin
                continue
            self.reserved.add(int(booking["id"]))
            if number % 2 == 0:
                paid = await self._call(CONFIRM, {"input": {"bookingId": booking["id"], "paymentToken": "tok_visa"}},
                                        token, "confirmBooking")
                if paid is not None:
                    assert paid["status"] == "CONFIRMED"
                    self.confirmed.add(int(paid["id"]))
            if over:
                self.successes_after[index] += 1


async def assert_reserved_not_lost(sessionmaker: async_sessionmaker[AsyncSession], reserved: set[int]) -> None:
    async with sessionmaker() as session:
        found = set((await session.scalars(select(Booking.id).where(Booking.id.in_(reserved)))).all())
    assert found == reserved  # every hold a client was told about was committed


# --- a. PostgreSQL restarted under a reserve storm -----------------------------------------

async def test_postgres_restart_during_a_reserve_storm() -> None:
    async with private_postgres() as (cluster, url):
        settings = base_settings(database_url=url, db_pool_size=6, db_max_overflow=2)
        engine = create_engine(replace(settings, db_pool_size=2, db_max_overflow=2))
        sessionmaker = create_sessionmaker(engine)
        try:
            event = await make_event(sessionmaker, capacity=10_000, max_tickets_per_booking=1)
            users = await make_users(sessionmaker, 6)
            async with running_app(settings) as (_, gql):
                storm = Storm(gql, event.id, [token_for(user, settings) for user in users])

                async def restart_midway() -> None:
                    async with asyncio.timeout(STORM_SECONDS):
                        while storm.ok() < 30:  # the storm is under way
                            await asyncio.sleep(0.02)
                    await cluster.restart()
                    storm.fault_over.set()

                restart = asyncio.create_task(restart_midway())
                await asyncio.gather(*(storm.buyer(i, enough_after=3) for i in range(len(users))))
                await restart  # raises if the storm never got going

                # Requests during the restart failed cleanly; afterwards every buyer was served
                # again by the same app, through the same engine (pool_pre_ping).
                assert storm.outcomes["masked fault"] > 0, storm.outcomes
                assert set(storm.outcomes) <= {"ok", "masked fault"}, storm.outcomes
                assert all(storm.successes_after[i] >= 3 for i in range(len(users))), storm.successes_after
                assert (await gql.http.get("/readyz")).status_code == 200

            await engine.dispose()  # its connections died with the restart; start afresh
            taken = await assert_inventory_truth(sessionmaker, event.id)
            assert taken >= len(storm.reserved)
            await assert_reserved_not_lost(sessionmaker, storm.reserved)
            await assert_payments_truth(sessionmaker, event.id, storm.confirmed)
        finally:
            await engine.dispose()


# --- b. Redis killed and restarted ---------------------------------------------------------

async def test_sales_go_on_while_redis_is_down(settings: Settings, engine: AsyncEngine,
                                               sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100, max_tickets_per_booking=1)
    users = await make_users(sessionmaker, 3)
    tokens = [token_for(user, settings) for user in users]
    redis_server = RedisProcess()
    await redis_server.start()
    limited = replace(settings, redis_url=redis_server.url, reserve_rate_limit_per_minute=3)
    variables = {"input": {"eventId": str(event.id), "quantity": 1}}

    async def reserve(gql: GraphQLClient, token: str) -> str:
        body = assert_clean(await gql.http.post("/graphql", json={"query": RESERVE, "variables": variables},
                                                headers={"Authorization": f"Bearer {token}"}))
        assert not body.get("errors"), body
        payload = body["data"]["reserveSeats"]
        return payload["errors"][0]["code"] if payload["errors"] else "ok"

    async def fresh_window() -> None:  # so that 4 calls in a row are counted in one minute
        remaining = 60 - time.time() % 60
        if remaining < 5:
            await asyncio.sleep(remaining + 0.1)

    try:
        async with running_app(limited) as (_, gql):
            await fresh_window()
            assert [await reserve(gql, tokens[0]) for _ in range(4)] == ["ok"] * 3 + ["RATE_LIMITED"]
            await redis_server.kill()
            # Redis is gone: every sale still goes through, and the limiter fails open.
            assert [await reserve(gql, tokens[1]) for _ in range(5)] == ["ok"] * 5
            assert (await gql.http.get("/readyz")).status_code == 503
            restarted = RedisProcess()
            restarted.port = redis_server.port  # the same address the app was given
            redis_server = restarted
            await redis_server.start()
            # Back: limits count again (a fresh window on the new server), sales go on.
            await fresh_window()
            assert [await reserve(gql, tokens[2]) for _ in range(4)] == ["ok"] * 3 + ["RATE_LIMITED"]
            async with asyncio.timeout(STARTUP_TIMEOUT):  # pub/sub reconnects on its own schedule
                while (await gql.http.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.1)
    finally:
        await redis_server.kill()
    assert await assert_inventory_truth(sessionmaker, event.id) == 3 + 5 + 3


# --- c. a server process killed mid-request ------------------------------------------------

async def test_a_server_killed_mid_request_leaves_holds_that_lapse(
        postgres_database: str, redis_url: str, settings: Settings, engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    event = await make_event(sessionmaker, capacity=1000, max_tickets_per_booking=1)
    users = await make_users(sessionmaker, 6)
    server = AppProcess(database_url=postgres_database, redis_url=redis_url, log_path=tmp_path / "server.log")
    server.env.update(DB_POOL_SIZE="6", DB_MAX_OVERFLOW="2")
    try:
        await server.start()
        async with http_client(server.http_url) as gql:
            storm = Storm(gql, event.id, [token_for(user, settings) for user in users], max_requests=200)

            async def buyer(index: int) -> None:
                with contextlib.suppress(httpx.TransportError):  # the server is gone mid-request
                    await storm.buyer(index, enough_after=1)

            async def kill_midway() -> None:
                async with asyncio.timeout(STORM_SECONDS):
                    while storm.ok() < 30:
                        await asyncio.sleep(0.01)
                assert server.process is not None
                server.process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(server.process.wait, 30)
                storm.fault_over.set()

            killer = asyncio.create_task(kill_midway())
            await asyncio.gather(*(buyer(i) for i in range(len(users))))
            await killer
        assert server.process is not None and server.process.returncode == -signal.SIGKILL
    finally:
        await server.stop()

    # What the dead server committed is there, PENDING; whatever it had not committed is not.
    await assert_reserved_not_lost(sessionmaker, storm.reserved)
    taken = await assert_inventory_truth(sessionmaker, event.id)
    await assert_payments_truth(sessionmaker, event.id, storm.confirmed)
    async with sessionmaker() as session:
        pending = int(await session.scalar(select(func.coalesce(func.sum(Booking.quantity), 0)).where(
            Booking.event_id == event.id, Booking.status == BookingStatus.PENDING)) or 0)
        sold = int(await session.scalar(select(func.coalesce(func.sum(Booking.quantity), 0)).where(
            Booking.event_id == event.id, Booking.status == BookingStatus.CONFIRMED)) or 0)
    assert pending > 0 and pending + sold == taken
    # Nobody will ever pay for those holds: past the TTL every read sees them free...
    later = utcnow() + timedelta(seconds=HOLDS.reservation_seconds + 1)
    async with sessionmaker() as session:
        assert (await inventory.lapsed_places(session, [event.id], later)).get(event.id, 0) == pending
    # ...and a sweep (any instance's) gives them back.
    async with sessionmaker() as session:
        assert await bookings.expire_lapsed(session, holds=HOLDS, now=later) == pending
        await session.commit()
    assert await assert_inventory_truth(sessionmaker, event.id) == sold
    await assert_payments_truth(sessionmaker, event.id, storm.confirmed)


# --- d. the clock jumping past hold TTLs ---------------------------------------------------

async def _reserve(sessionmaker: async_sessionmaker[AsyncSession], user_id: int, event_id: int, *,
                   now: Any, quantity: int | None = None, seat_ids: list[int] | None = None) -> Booking | ErrorCode:
    async with sessionmaker() as session:
        try:
            booking = await bookings.reserve(session, user_id=user_id, event_id=event_id, quantity=quantity,
                                             seat_ids=seat_ids, idempotency_key=None, expected_version=None,
                                             holds=HOLDS, now=now)
        except DomainError as error:
            return error.code
        await session.commit()
        return booking


async def test_after_a_clock_jump_lapsed_holds_are_free_before_any_sweep(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    general = await make_event(sessionmaker, capacity=5)
    seated = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    first, second, third = await make_users(sessionmaker, 3)
    async with sessionmaker() as session:
        seat_ids = list((await session.scalars(select(Seat.id).where(Seat.event_id == seated.id)
                                               .order_by(Seat.id).limit(3))).all())
    now = utcnow()
    held = await _reserve(sessionmaker, first.id, general.id, now=now, quantity=5)
    held_seats = await _reserve(sessionmaker, first.id, seated.id, now=now, seat_ids=seat_ids)
    assert isinstance(held, Booking) and isinstance(held_seats, Booking)
    assert await _reserve(sessionmaker, second.id, general.id, now=now, quantity=1) == ErrorCode.SOLD_OUT
    assert await _reserve(sessionmaker, second.id, seated.id, now=now, seat_ids=seat_ids) == \
        ErrorCode.SEATS_UNAVAILABLE

    jumped = now + timedelta(seconds=HOLDS.reservation_seconds + 1)
    async with sessionmaker() as session:
        # Every read already sees the places free...
        assert await inventory.lapsed_places(session, [general.id, seated.id], jumped) == \
            {general.id: 5, seated.id: 3}
        seats = dict((seat.id, status) for seat, status in
                     await inventory.seats_of_event(session, event_id=seated.id, section=None, now=jumped))
        assert {seats[seat_id] for seat_id in seat_ids} == {"AVAILABLE"}
        sales = await reports.event_sales(session, event_id=general.id, now=jumped)
        assert (sales.places_held, sales.places_free, sales.expired_holds) == (0, 5, 1)
        assert await bookings.active_holds(session, now=jumped) == (0, 0)
        # ...joining the waitlist is refused since places are free, and the hold cannot be paid.
        with pytest.raises(DomainError) as refused:
            await waitlist.join(session, user_id=third.id, event_id=general.id, quantity=1, now=jumped)
        assert refused.value.code == ErrorCode.WAITLIST_NOT_ALLOWED and refused.value.available_seats == 5
        await session.rollback()
        with pytest.raises(DomainError) as expired:
            await bookings.confirm(session, caller=identity_of(first), booking_id=held.id, payment_token="tok_visa",
                                   payment_method="card", idempotency_key=None, gateway=MockGateway(), now=jumped)
        assert expired.value.code == ErrorCode.RESERVATION_EXPIRED
        await session.rollback()
        # Nothing was swept: the rows still say PENDING and the counters still say taken.
        assert (await session.get(Booking, held.id)).status == BookingStatus.PENDING  # type: ignore[union-attr]
        assert (await session.get(Event, general.id)).available == 0  # type: ignore[union-attr]

    # ...and every reserve can take them, the whole lot at once, exact seats included.
    taken = await _reserve(sessionmaker, second.id, general.id, now=jumped, quantity=5)
    taken_seats = await _reserve(sessionmaker, third.id, seated.id, now=jumped, seat_ids=seat_ids)
    assert isinstance(taken, Booking) and isinstance(taken_seats, Booking), (taken, taken_seats)
    async with sessionmaker() as session:
        assert (await session.get(Booking, held.id)).status == BookingStatus.EXPIRED  # type: ignore[union-attr]
        assert (await session.get(Booking, held_seats.id)).status == BookingStatus.EXPIRED  # type: ignore[union-attr]
    assert await assert_inventory_truth(sessionmaker, general.id) == 5
    assert await assert_inventory_truth(sessionmaker, seated.id) == 3
