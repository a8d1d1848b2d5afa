"""Group commit (app/services/batching.py) on PostgreSQL: reserves of one event that arrive
together share one transaction, and each buyer still gets the answer it would have had alone.

To make a batch form on purpose, a test holds the event row from another connection: the
first buyer's transaction waits on it, and everyone who arrives meanwhile queues for the next
one. Truth is checked in the database afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.errors import DomainError, ErrorCode
from app.models import Booking, Event, IdempotencyKey, utcnow
from app.services import outbox
from app.services.batching import ReserveBatcher
from app.services.bookings import HoldRequest
from app.services.holds import write_holds
from app.settings import Settings
from tests.conftest import running_app
from tests.factories import SMALL_SEAT_MAP, make_event, make_users, token_for
from tests.test_concurrency import HOLDS, assert_inventory_truth, race, reserve
from tests.test_realtime import commits_refused_for


@pytest.fixture
def backend() -> str:
    return "postgres"


class Published:
    """Collects what the batcher publishes after its commits."""

    def __init__(self) -> None:
        self.messages: list[outbox.Message] = []

    async def __call__(self, messages: list[outbox.Message]) -> None:
        self.messages += messages

    def versions(self, event_id: int) -> list[int]:
        return [m["version"] for channel, m in self.messages if channel == outbox.availability_channel(event_id)]

    def assert_chained(self, event: Event) -> None:
        """Each message takes over where the one before ended: no version goes unannounced."""
        spans = [(m["sinceVersion"], m["version"]) for channel, m in self.messages
                 if channel == outbox.availability_channel(event.id)]
        ends = [event.version] + [version for _, version in spans]
        assert [since for since, _ in spans] == ends[:-1], spans


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
async def batcher(sessionmaker: async_sessionmaker[AsyncSession],
                  published: Published) -> AsyncIterator[ReserveBatcher]:
    batcher = ReserveBatcher(sessionmaker, holds=HOLDS, publish=published)
    yield batcher
    await batcher.close()


@contextlib.asynccontextmanager
async def event_row_held(engine: AsyncEngine, event_id: int) -> AsyncIterator[None]:
    """Another transaction holds the event row until the block ends."""
    async with engine.connect() as connection, connection.begin():
        await connection.execute(text("SELECT 1 FROM events WHERE id = :id FOR UPDATE"), {"id": event_id})
        yield


async def submit_in_order(batcher: ReserveBatcher, event_id: int, requests: list[HoldRequest],
                          engine: AsyncEngine) -> list[Booking | ErrorCode | BaseException]:
    """Send the requests in this order while the event row is held (so they batch), then let go."""
    async with event_row_held(engine, event_id):
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(batcher.reserve(event_id, request)))
            await asyncio.sleep(0)  # each joins its queue before the next is sent
        await asyncio.sleep(0.2)  # let the first transaction reach the held row
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    return [answer.code if isinstance(answer, DomainError) else answer for answer in answers]


async def event_now(sessionmaker: async_sessionmaker[AsyncSession], event_id: int) -> Event:
    async with sessionmaker() as session:
        event = await session.get(Event, event_id)
        assert event is not None
        return event


async def test_buyers_that_arrive_together_share_one_transaction_and_one_message(
        batcher: ReserveBatcher, published: Published, engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=500)
    users = await make_users(sessionmaker, 60)
    answers = await submit_in_order(batcher, event.id, [HoldRequest(u.id, 2) for u in users], engine)
    assert all(isinstance(answer, Booking) for answer in answers), answers
    assert len({answer.id for answer in answers}) == 60  # type: ignore[union-attr]
    assert await assert_inventory_truth(sessionmaker, event.id) == 120
    after = await event_now(sessionmaker, event.id)
    # The first buyer went alone at once; the 59 who came while it waited went together.
    assert after.version == event.version + 2
    assert published.versions(event.id) == [event.version + 1, event.version + 2]


async def test_arrival_order_decides_and_a_later_smaller_buyer_may_still_fit(
        batcher: ReserveBatcher, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=6)
    first, big, small, late = await make_users(sessionmaker, 4)
    answers = await submit_in_order(batcher, event.id, [
        HoldRequest(first.id, 1), HoldRequest(big.id, 3), HoldRequest(small.id, 4), HoldRequest(late.id, 2)],
        engine)
    # After the first (1 of 6), the next batch is served in turn: 3 fit (2 left), 4 do not,
    # then 2 still fit: nobody is refused while what they ask for is free at their turn.
    assert [type(a) if isinstance(a, Booking) else a for a in answers] == \
        [Booking, Booking, ErrorCode.NOT_ENOUGH_SEATS, Booking]
    assert await assert_inventory_truth(sessionmaker, event.id) == 6


async def test_mixed_quantities_racing_for_the_last_places_never_oversell_nor_refuse_a_fit(
        batcher: ReserveBatcher, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=150)
    users = await make_users(sessionmaker, 120)
    quantities = [random.Random(7).randint(1, 6) for _ in users]
    answers = await asyncio.gather(*(batcher.reserve(event.id, HoldRequest(u.id, q))
                                     for u, q in zip(users, quantities, strict=True)), return_exceptions=True)
    taken = await assert_inventory_truth(sessionmaker, event.id)
    granted = [q for a, q in zip(answers, quantities, strict=True) if isinstance(a, Booking)]
    refused = [(a, q) for a, q in zip(answers, quantities, strict=True) if not isinstance(a, Booking)]
    assert taken == sum(granted) <= 150
    left = 150 - taken
    for error, quantity in refused:
        assert isinstance(error, DomainError) and error.code in (ErrorCode.NOT_ENOUGH_SEATS, ErrorCode.SOLD_OUT)
        # What is free only shrinks, so a buyer refused at its turn does not fit what is left now.
        assert quantity > left, (quantity, left)


async def test_a_batch_whose_transaction_fails_fails_every_buyer_and_leaves_nothing(
        batcher: ReserveBatcher, published: Published, engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=50)
    opener, doomed, bystander = await make_users(sessionmaker, 3)
    await submit_in_order(batcher, event.id, [HoldRequest(opener.id, 1)], engine)
    published.messages.clear()
    async with commits_refused_for(engine, doomed.id):
        answers = await submit_in_order(batcher, event.id, [
            HoldRequest(bystander.id, 1), HoldRequest(doomed.id, 2), HoldRequest(bystander.id, 3, "key")],
            engine)
    # The bystander's first reserve went alone (it held the row first); the two after it
    # shared the doomed transaction.
    assert isinstance(answers[0], Booking)
    assert [type(a) for a in answers[1:]] == [type(answers[1])] * 2 and not isinstance(answers[1], Booking | ErrorCode)
    assert await assert_inventory_truth(sessionmaker, event.id) == 2
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    assert published.versions(event.id) == [event.version + 2]  # the bystander's alone


async def test_a_buyer_whose_rows_cannot_be_written_fails_alone(
        batcher: ReserveBatcher, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=50)
    first, gone, other = await make_users(sessionmaker, 3)
    async with sessionmaker() as session:  # an account deleted while its token is still valid
        await session.execute(text("DELETE FROM users WHERE id = :id"), {"id": gone.id})
        await session.commit()
    answers = await submit_in_order(batcher, event.id, [
        HoldRequest(first.id, 1), HoldRequest(gone.id, 2), HoldRequest(other.id, 3)], engine)
    assert isinstance(answers[0], Booking) and isinstance(answers[2], Booking)
    assert isinstance(answers[1], IntegrityError)  # run_mutation tells its caller UNAUTHENTICATED
    assert await assert_inventory_truth(sessionmaker, event.id) == 4


async def test_idempotent_replays_inside_and_across_batches(
        batcher: ReserveBatcher, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=50)
    user, other = await make_users(sessionmaker, 2)
    answers = await submit_in_order(batcher, event.id, [
        HoldRequest(other.id, 1), HoldRequest(user.id, 2, "k1"), HoldRequest(user.id, 2, "k1"),
        HoldRequest(user.id, 3, "k1")], engine)
    first = answers[1]
    assert isinstance(first, Booking) and isinstance(answers[2], Booking) and answers[2].id == first.id
    assert answers[3] == ErrorCode.IDEMPOTENCY_KEY_REUSED
    again = await batcher.reserve(event.id, HoldRequest(user.id, 2, "k1"))  # a later batch
    assert again is not None and again.id == first.id
    with pytest.raises(DomainError) as reused:
        await batcher.reserve(event.id, HoldRequest(user.id, 1, "k1"))
    assert reused.value.code == ErrorCode.IDEMPOTENCY_KEY_REUSED
    assert await assert_inventory_truth(sessionmaker, event.id) == 3


async def test_a_buyer_refused_in_a_batch_may_retry_with_the_same_key(
        batcher: ReserveBatcher, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=3)
    first, second = await make_users(sessionmaker, 2)
    answers = await submit_in_order(batcher, event.id, [HoldRequest(first.id, 1), HoldRequest(second.id, 3, "k")],
                                    engine)
    assert answers[1] == ErrorCode.NOT_ENOUGH_SEATS
    async with sessionmaker() as session:
        await session.execute(text("UPDATE bookings SET status = 'CANCELLED'"))
        await session.execute(text("UPDATE events SET available = capacity"))
        await session.commit()
    retried = await batcher.reserve(event.id, HoldRequest(second.id, 3, "k"))
    assert retried is not None and retried.quantity == 3


async def test_a_seated_event_is_left_to_the_caller(
        batcher: ReserveBatcher, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    [user] = await make_users(sessionmaker, 1)
    assert await batcher.reserve(event.id, HoldRequest(user.id, 2)) is None
    assert await assert_inventory_truth(sessionmaker, event.id) == 0


async def test_a_general_admission_reserve_opens_no_session_besides_its_batch(settings: Settings) -> None:
    """The request's own unit of work (`run_mutation`) is opened only when the batch does not
    serve it: opening and committing an unused session was a tenth of a reserve's CPU."""
    async with running_app(replace(settings, webhook_poll_interval_seconds=3600)) as (app, gql):
        services = app.state.services
        sessionmaker = services.sessionmaker
        general = await make_event(sessionmaker, capacity=10)
        seated = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
        [user] = await make_users(sessionmaker, 1)
        opened: list[None] = []

        def counted() -> AsyncSession:
            opened.append(None)
            return sessionmaker()

        services.sessionmaker = counted
        token = token_for(user, settings)
        # Fields that read nothing more, so that any session opened is the mutation's own.
        reserve = "mutation($input: ReserveInput!) { reserveSeats(input: $input) { booking { quantity } } }"
        reserved = await gql(reserve, {"input": {"eventId": str(general.id), "quantity": 2}}, token)
        assert reserved["reserveSeats"]["booking"]["quantity"] == 2 and not opened
        reserved = await gql(reserve, {"input": {"eventId": str(seated.id), "quantity": 2}}, token)
        assert reserved["reserveSeats"]["booking"]["quantity"] == 2 and len(opened) == 1
    assert await assert_inventory_truth(sessionmaker, general.id) == 2
    assert await assert_inventory_truth(sessionmaker, seated.id) == 2


async def test_holds_written_in_one_statement_read_back_as_stored(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """`write_holds` on PostgreSQL (one INSERT from arrays, its RETURNING loaded as bookings):
    every column of what it returns is what the database holds, in the order asked."""
    event = await make_event(sessionmaker, capacity=10)
    first, second = await make_users(sessionmaker, 2)
    now = utcnow()
    async with sessionmaker() as session:
        written = await write_holds(session, event_id=event.id, price_cents=700, currency="USD",
                                    holders=[(second.id, 2), (first.id, 1)], now=now,
                                    expires_at=now + timedelta(minutes=5), waitlist_offer=True,
                                    external_references=["order-7", None])
        await session.commit()
        returned = [{column.key: getattr(booking, column.key) for column in Booking.__mapper__.columns}
                    for booking in written]
    async with sessionmaker() as session:
        stored = [{column.key: getattr(booking, column.key) for column in Booking.__mapper__.columns}
                  for booking in [await session.get(Booking, row["id"]) for row in returned]]
    assert returned == stored
    assert [(row["user_id"], row["quantity"], row["total_cents"], row["external_reference"]) for row in stored] == \
        [(second.id, 2, 1400, "order-7"), (first.id, 1, 700, None)]
    assert all(row["status"] == "PENDING" and row["version"] == 1 and row["waitlist_offer"]
               and row["seat_ids"] is None and row["expires_at"] == now + timedelta(minutes=5) for row in stored)


# --- the per-buyer cap ---------------------------------------------------------------------

async def test_one_buyer_cannot_hold_more_than_the_event_allows_across_bookings(
        batcher: ReserveBatcher, published: Published, engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100, max_tickets_per_user=4)
    hoarder, other = await make_users(sessionmaker, 2)
    assert isinstance(await batcher.reserve(event.id, HoldRequest(hoarder.id, 3)), Booking)
    with pytest.raises(DomainError) as refused:
        await batcher.reserve(event.id, HoldRequest(hoarder.id, 2))
    assert refused.value.code == ErrorCode.LIMIT_EXCEEDED and "4" in refused.value.message
    # Inside one batch: in turn, as far as the cap allows; others are not affected.
    answers = await submit_in_order(batcher, event.id, [
        HoldRequest(other.id, 1), HoldRequest(hoarder.id, 1), HoldRequest(hoarder.id, 1), HoldRequest(other.id, 3)],
        engine)
    assert [type(a) if isinstance(a, Booking) else a for a in answers] == \
        [Booking, Booking, ErrorCode.LIMIT_EXCEEDED, Booking]
    assert await assert_inventory_truth(sessionmaker, event.id) == 3 + 1 + 1 + 3
    published.assert_chained(event)  # a batch that gave places back announced both steps


async def test_concurrent_reserves_of_one_buyer_stop_at_the_cap(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    general = await make_event(sessionmaker, capacity=100, max_tickets_per_user=4)
    seated = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP, max_tickets_per_user=4)
    [user] = await make_users(sessionmaker, 1)
    for event in (general, seated):
        results: list[Any] = await race(sessionmaker, 12, reserve(event.id, [user] * 12, quantity=1))
        assert sum(isinstance(r, Booking) for r in results) == 4, results
        assert set(r for r in results if not isinstance(r, Booking)) == {ErrorCode.LIMIT_EXCEEDED}
        assert await assert_inventory_truth(sessionmaker, event.id) == 4
