"""The waiting room (issue 14): scheduled on-sales, fair admission at a rate, enforcement on the
reserve path, sold out ending the queue, and the live queueStatus subscription."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import async_playwright
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DomainError, ErrorCode
from app.jobs.admission import admit_once
from app.models import Booking, Event, EventStatus, QueueStatus, QueueTicket, Role, WaitingRoom, utcnow
from app.services import bookings, catalogue, queue, waitlist
from app.services.gate import Gate, LoopLag
from app.services.payments import MockGateway
from app.settings import Settings
from app.web import create_app
from tests.conftest import running_app
from tests.factories import SMALL_SEAT_MAP, identity_of, make_event, make_user, make_users, token_for
from tests.servers import MESSAGE_TIMEOUT, RedisProcess, serve_in_process, subscribe, wait_until_ready
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, open_page, require_chromium
from tests.test_concurrency import HOLDS, race
from tests.test_realtime import served

QUEUE_STATUS = """subscription($id: ID!) { queueStatus(eventId: $id) {
  eventId status position estimatedWaitSeconds admittedUntil joinedAt } }"""


async def sale(sessionmaker: async_sessionmaker[AsyncSession], *, starts_in: timedelta | None = None,
               admit_per_minute: int = 60, admission_seconds: int = 600, **fields: Any) -> Event:
    """A published event with a waiting room; SCHEDULED when its sales start `starts_in` from now."""
    event = await make_event(sessionmaker, publish=False, **fields)
    async with sessionmaker() as session:
        if starts_in is not None:
            await catalogue.update_event(session, event_id=event.id, expected_version=None,
                                         changes={"sales_start_at": utcnow() + starts_in})
        await queue.set_waiting_room(session, event_id=event.id, config=queue.RoomConfig(
            admit_per_minute=admit_per_minute, admission_seconds=admission_seconds))
        event = await catalogue.publish_event(session, event_id=event.id)
        await session.commit()
    return event


async def join(sessionmaker: async_sessionmaker[AsyncSession], event_id: int, user_ids: list[int],
               now: datetime | None = None) -> None:
    async with sessionmaker() as session:
        for user_id in user_ids:
            await queue.join(session, user_id=user_id, event_id=event_id, now=now)
        await session.commit()


async def admit(sessionmaker: async_sessionmaker[AsyncSession], now: datetime) -> list[queue.AdmissionRound]:
    async with sessionmaker() as session:
        rounds = await queue.admit(session, now=now)
        await session.commit()
    return rounds


async def clock_of(sessionmaker: async_sessionmaker[AsyncSession], event_id: int) -> datetime:
    async with sessionmaker() as session:
        room = await session.get(WaitingRoom, event_id)
        assert room is not None
        return room.admitted_through


async def statuses(sessionmaker: async_sessionmaker[AsyncSession], event_id: int) -> dict[int, str]:
    async with sessionmaker() as session:
        return dict((await session.execute(select(QueueTicket.user_id, QueueTicket.status)
                                           .where(QueueTicket.event_id == event_id))).all())


async def reserve_as(sessionmaker: async_sessionmaker[AsyncSession], user_id: int, event_id: int,
                     **fields: Any) -> Booking | ErrorCode:
    async with sessionmaker() as session:
        try:
            booking = await bookings.reserve(session, user_id=user_id, event_id=event_id,
                                             quantity=fields.get("quantity", 1 if "seat_ids" not in fields else None),
                                             seat_ids=fields.get("seat_ids"), idempotency_key=None,
                                             expected_version=None, holds=HOLDS)
        except DomainError as error:
            return error.code
        await session.commit()
        return booking


# --- scheduled on-sales -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_scheduled_sale_is_refused_then_opens_exactly_once_with_two_jobs_racing(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, publish=False, capacity=10)
    starts = utcnow() + timedelta(hours=1)
    async with sessionmaker() as session:
        await catalogue.update_event(session, event_id=event.id, expected_version=None,
                                     changes={"sales_start_at": starts})
        event = await catalogue.publish_event(session, event_id=event.id)
        await session.commit()
    assert event.status == EventStatus.SCHEDULED
    [user] = await make_users(sessionmaker, 1)
    assert await reserve_as(sessionmaker, user.id, event.id) == ErrorCode.EVENT_NOT_ON_SALE
    async with sessionmaker() as session:
        assert await catalogue.open_due_sales(session, now=starts - timedelta(seconds=1)) == []

    opened = await race(sessionmaker, 2, lambda session, _: catalogue.open_due_sales(
        session, now=starts + timedelta(seconds=1)))
    assert sorted(opened, key=len) == [[], [event.id]]  # one winner
    async with sessionmaker() as session:
        now_on_sale = await session.get(Event, event.id)
        assert now_on_sale is not None
        assert (now_on_sale.status, now_on_sale.version) == (EventStatus.ON_SALE, event.version + 1)
    assert isinstance(await reserve_as(sessionmaker, user.id, event.id), Booking)


# --- enforcement ----------------------------------------------------------------------------------

async def test_reserve_needs_the_callers_own_current_admission_to_this_event(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    general = await sale(sessionmaker, capacity=100)
    seated = await sale(sessionmaker, seat_map=SMALL_SEAT_MAP, capacity=None)
    other = await sale(sessionmaker, capacity=100)
    admitted, lapsed, elsewhere, stranger = users = await make_users(sessionmaker, 4)
    for event in (general, seated):
        await join(sessionmaker, event.id, [admitted.id, lapsed.id])
    await join(sessionmaker, other.id, [elsewhere.id])
    await admit(sessionmaker, utcnow() + timedelta(minutes=1))
    assert set((await statuses(sessionmaker, general.id)).values()) == {QueueStatus.ADMITTED}
    async with sessionmaker() as session:  # the lapsed buyer's admission ran out
        await session.execute(update(QueueTicket).where(QueueTicket.user_id == lapsed.id)
                              .values(admitted_until=utcnow() - timedelta(seconds=1)))
        await session.commit()

    for event in (general, seated):
        for user in (lapsed, elsewhere, stranger):
            assert await reserve_as(sessionmaker, user.id, event.id, quantity=1) == ErrorCode.QUEUE_REQUIRED
        assert isinstance(await reserve_as(sessionmaker, admitted.id, event.id, quantity=1), Booking)

    # Buyers served together in one transaction (group commit) each get their own answer.
    async with sessionmaker() as session:
        answers = await bookings.reserve_general(
            session, event_id=general.id, holds=HOLDS, known_general=True,
            requests=[bookings.HoldRequest(user.id, 1) for user in users])
        await session.commit()
    assert [a if isinstance(a, Booking) else a.code for a in answers][1:] == [ErrorCode.QUEUE_REQUIRED] * 3
    assert isinstance(answers[0], Booking)

    async with sessionmaker() as session:  # the waitlist is behind the queue too
        with pytest.raises(DomainError) as refused:
            await waitlist.join(session, user_id=stranger.id, event_id=general.id, quantity=1)
        assert refused.value.code == ErrorCode.QUEUE_REQUIRED


# --- fairness -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["postgres"])
async def test_early_joiners_are_admitted_in_random_order_then_later_joiners_in_join_order(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    early_count, per_second = 2000, 100
    event = await sale(sessionmaker, starts_in=timedelta(hours=1), capacity=100_000,
                       admit_per_minute=per_second * 60)
    assert event.sales_start_at is not None
    start = event.sales_start_at
    early = await make_users(sessionmaker, early_count)
    await race(sessionmaker, early_count, lambda session, i: queue.join(
        session, user_id=early[i].id, event_id=event.id, now=start - timedelta(minutes=5)))
    async with sessionmaker() as session:
        join_order = list((await session.scalars(select(QueueTicket.user_id).where(
            QueueTicket.event_id == event.id).order_by(QueueTicket.id))).all())
    assert sorted(join_order) == sorted(user.id for user in early)

    await admit(sessionmaker, start - timedelta(seconds=1))  # before the start: nobody, nothing banked
    async with sessionmaker() as session:
        assert await catalogue.open_due_sales(session, now=start) == [event.id]
        await session.commit()
    late = await make_users(sessionmaker, 20)
    for i, user in enumerate(late):
        await join(sessionmaker, event.id, [user.id], now=start + timedelta(milliseconds=10 * (i + 1)))
    orders = queue.WaitingOrders(sessionmaker, max_age_seconds=0)
    async with sessionmaker() as session:
        positions = [(await orders.view(ticket)).position for ticket in await session.scalars(
            select(QueueTicket).where(QueueTicket.user_id.in_([u.id for u in late])).order_by(QueueTicket.id))]
    assert positions == list(range(early_count + 1, early_count + 21))  # behind every early joiner, in order

    rounds = []
    for second in range(1, early_count // per_second + 2):
        before = await statuses(sessionmaker, event.id)
        [done] = await admit(sessionmaker, start - timedelta(seconds=1) + timedelta(seconds=second))
        after = await statuses(sessionmaker, event.id)
        rounds.append({user for user, status in after.items()
                       if status == QueueStatus.ADMITTED and before[user] == QueueStatus.WAITING})
        assert done.admitted == len(rounds[-1])
    admitted_early = set().union(*rounds[:-1])
    assert admitted_early == set(join_order) and sum(len(r) for r in rounds[:-1]) == early_count
    assert rounds[-1] == {user.id for user in late}
    # Random, not join order: the first 100 admitted are not the first 100 to join.
    assert rounds[0] != set(join_order[:per_second])


async def test_only_admissions_that_ran_out_unused_count_as_lapsed(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, capacity=10, admit_per_minute=60, admission_seconds=60)
    buyer, idler = await make_users(sessionmaker, 2)
    await join(sessionmaker, event.id, [buyer.id, idler.id])
    async with sessionmaker() as session:  # the room's clock 2 s back: both are due now, not later
        await session.execute(update(WaitingRoom).where(WaitingRoom.event_id == event.id)
                              .values(admitted_through=utcnow() - timedelta(seconds=2)))
        await session.commit()
    [round_] = await admit(sessionmaker, now=utcnow())
    assert round_.admitted == 2
    assert isinstance(await reserve_as(sessionmaker, buyer.id, event.id), Booking)
    [round_] = await admit(sessionmaker, now=utcnow() + timedelta(seconds=61))
    assert round_.lapsed_unused == 1  # the idler's; the buyer used theirs
    assert await statuses(sessionmaker, event.id) == {buyer.id: QueueStatus.LAPSED, idler.id: QueueStatus.LAPSED}


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_admitters_together_admit_at_the_configured_rate(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, capacity=1000, admit_per_minute=120)  # 2 a second
    users = await make_users(sessionmaker, 200)
    await join(sessionmaker, event.id, [user.id for user in users])
    t0 = await clock_of(sessionmaker, event.id)
    for half_seconds in range(1, 61):  # 30 s: each admitter runs every half second, at the same instants
        now = t0 + timedelta(seconds=half_seconds / 2)
        await asyncio.gather(admit(sessionmaker, now), admit(sessionmaker, now))
    admitted = [s for s in (await statuses(sessionmaker, event.id)).values() if s == QueueStatus.ADMITTED]
    assert len(admitted) == 60


# --- sold out ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["postgres"])
async def test_sold_out_ends_the_queue_and_every_waiting_subscriber_is_told(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, capacity=2, admit_per_minute=6)  # one admission per 10 s
    buyer, *waiting = await make_users(sessionmaker, 501)
    await join(sessionmaker, event.id, [buyer.id])
    await join(sessionmaker, event.id, [user.id for user in waiting])
    async with served(replace(settings, redis_url=redis_url)) as (services, ws_url, _):
        [done] = await admit_once(services, now=await clock_of(sessionmaker, event.id) + timedelta(seconds=10))
        assert done.admitted == 1
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(subscribe(ws_url, QUEUE_STATUS, {"id": str(event.id)},
                                                              token=token_for(user, settings)))
                    for user in waiting[:3]]
            for position, sub in enumerate(subs, start=1):
                first = (await sub.next())["queueStatus"]
                assert (first["status"], first["position"]) == ("WAITING", position)
            booking = await reserve_as(sessionmaker, buyer.id, event.id, quantity=2)
            assert isinstance(booking, Booking)
            async with sessionmaker() as session:
                await bookings.confirm(session, caller=identity_of(buyer), booking_id=booking.id,
                                       payment_token="tok_visa", payment_method="card", idempotency_key=None,
                                       gateway=MockGateway())
                await session.commit()
            [done] = await admit_once(services)
            assert done.sold_out == 500
            for sub in subs:
                assert (await sub.next())["queueStatus"]["status"] == "SOLD_OUT"
    assert set((await statuses(sessionmaker, event.id)).values()) == {QueueStatus.ADMITTED, QueueStatus.SOLD_OUT}
    async with sessionmaker() as session:  # told so, they may join the waitlist instead
        entry = await waitlist.join(session, user_id=waiting[0].id, event_id=event.id, quantity=1)
        assert entry.status == "WAITING"


# --- the live position ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def second_in_line_watching(redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
                                  event: Event) -> AsyncIterator[tuple[Any, Any, str, Any]]:
    """Two buyers queued for the event; the app served with position pushes an hour apart;
    the second buyer's queueStatus stream open: (services, gql, that buyer's token, stream)."""
    ahead, user = await make_users(sessionmaker, 2)
    await join(sessionmaker, event.id, [ahead.id, user.id])
    token = token_for(user, settings)
    async with served(replace(settings, redis_url=redis_url, queue_status_interval_seconds=3600)) \
            as (services, ws_url, gql), subscribe(ws_url, QUEUE_STATUS, {"id": str(event.id)}, token=token) as sub:
        yield services, gql, token, sub


@pytest.mark.parametrize("backend", ["postgres"])
async def test_queue_status_sends_the_ticket_then_the_admission_at_once(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, capacity=10, admit_per_minute=6)
    # Position pushes are bounded per subscriber; admission is not.
    async with second_in_line_watching(redis_url, settings, sessionmaker, event) as (services, gql, token, sub):
        first = (await sub.next())["queueStatus"]
        assert (first["eventId"], first["status"], first["position"]) == (str(event.id), "WAITING", 2)
        assert first["estimatedWaitSeconds"] == 20 and first["admittedUntil"] is None
        t0 = await clock_of(sessionmaker, event.id)
        await admit_once(services, now=t0 + timedelta(seconds=10))  # admits the first: position 2 -> 1, not pushed
        await admit_once(services, now=t0 + timedelta(seconds=20))  # admits this buyer: pushed at once
        update = (await sub.next())["queueStatus"]
        assert (update["status"], update["position"]) == ("ADMITTED", None)
        assert update["admittedUntil"] is not None and update["joinedAt"] == first["joinedAt"]
        reserved = (await gql("""mutation($input: ReserveInput!) { reserveSeats(input: $input) {
            booking { status } errors { code } } }""", {"input": {"eventId": str(event.id), "quantity": 1}},
                              token))["reserveSeats"]
        assert reserved == {"booking": {"status": "PENDING"}, "errors": []}


@pytest.mark.parametrize("backend", ["postgres"])
async def test_positions_come_from_one_shared_read_of_the_queue_order_at_most_max_age_old(
        engine: Any, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, admit_per_minute=30)
    users = await make_users(sessionmaker, 4)
    await join(sessionmaker, event.id, [user.id for user in users[:3]])
    reads: list[str] = []

    def count_order_reads(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if re.match(r"SELECT queue_tickets\.rank, queue_tickets\.id\s+FROM", statement):
            reads.append(statement)

    clock = [100.0]
    orders = queue.WaitingOrders(sessionmaker, max_age_seconds=5, clock=lambda: clock[0])
    async with sessionmaker() as session:
        first, _, third = (await session.scalars(select(QueueTicket).where(QueueTicket.event_id == event.id)
                                                 .order_by(QueueTicket.rank, QueueTicket.id))).all()
    sqlalchemy_event.listen(engine.sync_engine, "before_cursor_execute", count_order_reads)
    try:
        views = await asyncio.gather(*(orders.view(third) for _ in range(50)))
        assert {(view.position, view.estimated_wait_seconds) for view in views} == {(3, 6)}
        assert len(reads) == 1  # fifty buyers asking at once: one read of the order
        async with sessionmaker() as session:
            await queue.leave(session, user_id=first.user_id, event_id=event.id)
            await session.commit()
        await join(sessionmaker, event.id, [users[3].id])
        async with sessionmaker() as session:
            fourth = await queue.ticket_of(session, user_id=users[3].id, event_id=event.id)
        assert fourth is not None
        clock[0] += 5  # still within the age: the order read before
        assert ((await orders.view(third)).position, (await orders.view(fourth)).position) == (3, 4)
        assert len(reads) == 1
        clock[0] += 0.01  # older than that: read again, and everyone ahead who left is gone
        assert ((await orders.view(third)).position, (await orders.view(fourth)).position) == (2, 3)
        assert len(reads) == 2
    finally:
        sqlalchemy_event.remove(engine.sync_engine, "before_cursor_execute", count_order_reads)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_leaving_and_joining_again_reach_the_buyers_own_stream_at_once(
        redis_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, admit_per_minute=6)
    # Position pushes are an hour apart: only a message naming the buyer can move the stream.
    async with second_in_line_watching(redis_url, settings, sessionmaker, event) as (_, gql, token, sub):
        first = (await sub.next())["queueStatus"]
        assert (first["status"], first["position"]) == ("WAITING", 2)
        await gql("mutation($id: ID!) { leaveQueue(eventId: $id) { ticket { status } } }", {"id": str(event.id)}, token)
        assert (await sub.next())["queueStatus"]["status"] == "LEFT"
        await gql(JOIN, {"id": str(event.id)}, token)  # back in, at the back
        again = (await sub.next())["queueStatus"]
        assert (again["status"], again["position"]) == ("WAITING", 2)


async def test_the_gate_turns_away_who_waits_too_long_and_lets_a_stream_wait() -> None:
    gate = Gate(1, lag=LoopLag(), max_lag_seconds=0.01, wait_seconds=0.05, busy_message="busy")
    async with gate.enter():
        with pytest.raises(DomainError) as refused:
            async with gate.enter():
                pass
        assert (refused.value.code, refused.value.retry_after_seconds) == (ErrorCode.RATE_LIMITED, 1)

        async def stream() -> str:
            async with gate.enter(wait=True):
                return "in"
        waiting = asyncio.create_task(stream())
        await asyncio.sleep(0.2)  # four times what a request may wait
        assert not waiting.done()
    assert await waiting == "in"


async def test_the_gate_stays_shut_while_the_event_loop_runs_late() -> None:
    lag = LoopLag(interval=0.01)
    measuring = asyncio.create_task(lag.run())
    await asyncio.sleep(0.02)
    time.sleep(0.1)  # the loop blocked, as by a flood of requests
    await asyncio.sleep(0.005)  # the sample overdue since then comes first: late by 0.09 s at least
    measuring.cancel()
    assert lag.seconds >= 0.09
    gate = Gate(8, lag=lag, max_lag_seconds=0.01, wait_seconds=0.05, busy_message="busy")
    with pytest.raises(DomainError):  # every place free, but the loop is late
        async with gate.enter():
            pass
    lag.seconds = 0.0
    async with gate.enter():
        pass


async def test_a_busy_waiting_room_tells_joiners_and_pollers_when_to_come_back(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker)
    [user] = await make_users(sessionmaker, 1)
    token, variables = token_for(user, settings), {"id": str(event.id)}
    my_ticket = "query($id: ID!) { myQueueTicket(eventId: $id) { status position } }"
    hidden_in_a_fragment = """query($id: ID!) { ...mine } fragment mine on Query {
        ... on Query { myQueueTicket(eventId: $id) { status } } }"""
    async with running_app(replace(settings, queue_concurrency=1, queue_busy_seconds=0.1)) as (app, gql):
        async with app.state.services.queue_gate.enter():  # the one place is taken
            for document in (JOIN, my_ticket, hidden_in_a_fragment):
                refused = await gql.http.post("/graphql", json={"query": document, "variables": variables},
                                              headers={"Authorization": f"Bearer {token}"})
                assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
                assert [error["extensions"] for error in refused.json()["errors"]] == [
                    {"code": "RATE_LIMITED", "retryAfterSeconds": 1}]
            # Everything else passes: the gate is the waiting room's alone.
            assert (await gql("{ events(first: 1) { totalCount } }"))["events"]["totalCount"] == 1
        assert (await gql(JOIN, variables, token))["joinQueue"]["ticket"]["status"] == "WAITING"
        assert (await gql(my_ticket, variables, token))["myQueueTicket"] == {"status": "WAITING", "position": 1}


# --- the API ------------------------------------------------------------------------------------------

EVENT_FIELDS = "id status salesStartAt waitingRoom { admitPerMinute admissionSeconds paused queueLength admittedCount }"
JOIN = "mutation($id: ID!) { joinQueue(eventId: $id) { ticket { status position joinedAt } errors { code } } }"


async def test_the_waiting_room_over_graphql(settings: Settings, engine: Any,
                                             sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    admin = await make_user(sessionmaker, role=Role.ADMIN)
    buyer, other = await make_users(sessionmaker, 2)
    admin_token, token = token_for(admin, settings), token_for(buyer, settings)
    starts = utcnow() + timedelta(days=30)
    async with running_app(replace(settings, queue_join_rate_limit_per_minute=2)) as (_, gql):
        venue = (await gql("""mutation { createVenue(input: {name: "Arena", address: "1 Road", city: "Porto",
            country: "Portugal", capacity: 5000}) { venue { id } } }""", token=admin_token))["createVenue"]
        created = (await gql(f"""mutation($input: EventInput!) {{ createEvent(input: $input) {{
            event {{ {EVENT_FIELDS} }} errors {{ code }} }} }}""", {"input": {
            "venueId": venue["venue"]["id"], "name": "Big night", "category": "concert",
            "startsAt": starts.isoformat(), "endsAt": (starts + timedelta(hours=3)).isoformat(),
            "capacity": 100, "priceCents": 5000, "salesStartAt": (utcnow() + timedelta(hours=1)).isoformat(),
            "waitingRoom": {"admitPerMinute": 300}}}, admin_token))["createEvent"]
        assert created["errors"] == []
        event_id = created["event"]["id"]
        assert created["event"]["waitingRoom"] == {"admitPerMinute": 300, "admissionSeconds": 600, "paused": False,
                                                   "queueLength": 0, "admittedCount": 0}
        published = (await gql(f"mutation($id: ID!) {{ publishEvent(id: $id) {{ event {{ {EVENT_FIELDS} }} }} }}",
                               {"id": event_id}, admin_token))["publishEvent"]["event"]
        assert published["status"] == "SCHEDULED" and published["salesStartAt"] is not None

        anonymous = (await gql(JOIN, {"id": event_id}))["joinQueue"]
        assert anonymous == {"ticket": None, "errors": [{"code": "UNAUTHENTICATED"}]}
        joined = (await gql(JOIN, {"id": event_id}, token))["joinQueue"]
        again = (await gql(JOIN, {"id": event_id}, token))["joinQueue"]
        assert joined["ticket"]["status"] == "WAITING" and again == joined  # the same ticket
        assert (await gql(JOIN, {"id": event_id}, token))["joinQueue"]["errors"] == [{"code": "RATE_LIMITED"}]
        mine = (await gql("query($id: ID!) { myQueueTicket(eventId: $id) { status position } }",
                          {"id": event_id}, token))["myQueueTicket"]
        assert mine == {"status": "WAITING", "position": 1}
        reserved = (await gql("""mutation($input: ReserveInput!) { reserveSeats(input: $input) {
            errors { code message } } }""", {"input": {"eventId": event_id, "quantity": 1}}, token))["reserveSeats"]
        assert [e["code"] for e in reserved["errors"]] == ["EVENT_NOT_ON_SALE"]
        left = (await gql("mutation($id: ID!) { leaveQueue(eventId: $id) { ticket { status position } } }",
                          {"id": event_id}, token))["leaveQueue"]
        assert left["ticket"] == {"status": "LEFT", "position": None}

        refused = (await gql("""mutation($id: ID!) { setWaitingRoom(eventId: $id, input: {admitPerMinute: 10}) {
            errors { code } } }""", {"id": event_id}, token_for(other, settings)))["setWaitingRoom"]
        assert refused["errors"] == [{"code": "FORBIDDEN"}]
        paused = (await gql(f"""mutation($id: ID!) {{ setWaitingRoom(eventId: $id,
            input: {{admitPerMinute: 10, admissionSeconds: 60, paused: true}}) {{ event {{ {EVENT_FIELDS} }} }} }}""",
                            {"id": event_id}, admin_token))["setWaitingRoom"]["event"]
        assert paused["waitingRoom"]["paused"] is True and paused["waitingRoom"]["admitPerMinute"] == 10
        removed = (await gql(f"""mutation($id: ID!) {{ setWaitingRoom(eventId: $id) {{
            event {{ {EVENT_FIELDS} }} }} }}""", {"id": event_id}, admin_token))["setWaitingRoom"]["event"]
        assert removed["waitingRoom"] is None
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(WaitingRoom)) == 0


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_redis_restart_during_admissions_loses_and_duplicates_nobody(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await sale(sessionmaker, capacity=100, admit_per_minute=60)  # one a second
    users = await make_users(sessionmaker, 6)
    await join(sessionmaker, event.id, [user.id for user in users])
    watched = users[2]
    private_redis = RedisProcess()
    await private_redis.start()
    try:
        async with served(replace(settings, redis_url=private_redis.url, queue_status_interval_seconds=3600)) \
                as (services, ws_url, gql), \
                subscribe(ws_url, QUEUE_STATUS, {"id": str(event.id)}, token=token_for(watched, settings)) as sub:
            assert (await sub.next())["queueStatus"]["position"] == 3
            t0 = await clock_of(sessionmaker, event.id)
            await admit_once(services, now=t0 + timedelta(seconds=1))
            await private_redis.kill()
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                while (await gql.http.get("/readyz")).json()["checks"]["pubsub"] == "ok":
                    await asyncio.sleep(0.05)
            for second in (2, 3, 4):  # the watched buyer is admitted while nobody can be told
                await admit_once(services, now=t0 + timedelta(seconds=second))
            await private_redis.start()
            update = (await sub.next())["queueStatus"]  # resynchronised: read from PostgreSQL
            assert update["status"] == "ADMITTED"
            await wait_until_ready(gql.http)
            for second in (5, 6, 7):
                await admit_once(services, now=t0 + timedelta(seconds=second))
    finally:
        await private_redis.kill()
    async with sessionmaker() as session:
        tickets = (await session.scalars(select(QueueTicket).where(QueueTicket.event_id == event.id)
                                         .order_by(QueueTicket.admitted_at, QueueTicket.id))).all()
    assert [t.user_id for t in tickets] == [user.id for user in users]  # all admitted, once each, in order
    assert {t.status for t in tickets} == {QueueStatus.ADMITTED}


# --- the page -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_page_shows_a_buyer_waiting_then_admitted_then_reserving(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    require_chromium()
    event = await sale(sessionmaker, capacity=50, admit_per_minute=6, name="Queue Night")
    ahead, buyer = await make_users(sessionmaker, 2)
    await join(sessionmaker, event.id, [ahead.id])
    problems: list[str] = []
    app = create_app(replace(settings, queue_concurrency=1, queue_busy_seconds=0.2))
    async with serve_in_process(app) as address, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            context, page = await open_page(browser, problems)
            await context.add_init_script(
                f"sessionStorage.setItem('bme.token', {json.dumps(token_for(buyer, settings))})")
            await page.goto(f"http://{address}/#event/{event.id}")
            await page.wait_for_selector('#waiting-room[data-status="NONE"]')
            assert await page.is_hidden("#reserve-form")
            async with app.state.services.queue_gate.enter():  # the room too busy to take the join
                await page.click("#join-queue-btn")
                busy = await page.wait_for_selector("#messages .info")
                assert "(trying again in 1 s)" in (await busy.text_content() or "")
            await page.wait_for_selector('#waiting-room[data-status="WAITING"]')  # taken when it tried again
            assert await page.text_content("#queue-text") == "You are number 2 in the queue · about 1 min to wait"
            assert await page.is_visible("#queue-progress") and await page.is_hidden("#reserve-form")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "browser-queue-waiting.png", full_page=True)

            services = app.state.services
            t0 = await clock_of(sessionmaker, event.id)
            await admit_once(services, now=t0 + timedelta(seconds=10))
            await admit_once(services, now=t0 + timedelta(seconds=20))  # the buyer's turn
            await page.wait_for_selector('#waiting-room[data-status="ADMITTED"]')
            assert re.fullmatch(r"It's your turn: reserve within 1?\d:\d\d",  # 10 minutes from the job's clock
                                await page.text_content("#admission-countdown") or "")
            await page.screenshot(path=ARTIFACTS / "browser-queue-admitted.png", full_page=True)
            await page.click("#reserve-btn")
            await page.wait_for_selector('#hold[data-status="PENDING"]')
            # Chromium logs every 4xx answer, the busy one provoked above too (a 429); nothing else.
            assert [problem for problem in problems if "status of 429 (Too Many Requests)" not in problem] == []
        finally:
            await browser.close()
