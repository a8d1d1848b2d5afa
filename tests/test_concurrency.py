"""Many buyers at once on PostgreSQL: real commits from many connections, released together
by a barrier, then the truth checked in the database (not in the replies)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DomainError, ErrorCode
from app.models import Booking, BookingStatus, Event, Payment, Seat, SeatStatus, utcnow
from app.services import bookings, catalogue
from app.services.payments import MockGateway
from tests.factories import SMALL_SEAT_MAP, identity_of, make_event, make_users

HOLDS = bookings.HoldTimes(reservation_seconds=300, offer_seconds=600)
Work = Callable[[AsyncSession, int], Awaitable[Any]]


@pytest.fixture
def backend() -> str:
    return "postgres"


async def race(sessionmaker: async_sessionmaker[AsyncSession], count: int, work: Work) -> list[Any]:
    """Run `work` for `count` buyers released at the same instant, each in its own transaction.
    Returns each buyer's result, or the ErrorCode it was refused with."""
    barrier = asyncio.Barrier(count)
    connect_first = count <= 25  # small races hold a connection each before the start

    async def buyer(index: int) -> Any:
        async with sessionmaker() as session:
            if connect_first:
                await session.connection()
            await barrier.wait()
            try:
                result = await work(session, index)
                await session.commit()
                return result
            except DomainError as error:
                return await settle(session, error)

    return await asyncio.gather(*(buyer(i) for i in range(count)))


async def settle(session: AsyncSession, error: DomainError) -> ErrorCode:
    """End a refused unit of work as `run_mutation` does: rolled back, unless the error keeps
    its changes (a reserve refused after expiring lapsed holds keeps the expiry)."""
    if error.keep_changes:
        await session.commit()
    else:
        await session.rollback()
    return error.code


async def assert_inventory_truth(sessionmaker: async_sessionmaker[AsyncSession], event_id: int) -> int:
    """Places taken on the counter == places in active bookings; no seat in two bookings.
    Returns the places taken."""
    async with sessionmaker() as session:
        event = await session.get(Event, event_id)
        assert event is not None
        active = (await session.scalars(select(Booking).where(
            Booking.event_id == event_id,
            Booking.status.in_([BookingStatus.PENDING, BookingStatus.CONFIRMED])))).all()
        taken = sum(b.quantity for b in active)
        assert 0 <= event.available <= event.capacity
        assert event.capacity - event.available == taken
        if event.is_seated:
            seat_owner = {s.id: s.booking_id for s in await session.scalars(
                select(Seat).where(Seat.event_id == event_id, Seat.status != SeatStatus.AVAILABLE))}
            claimed = [seat for b in active for seat in (b.seat_ids or [])]
            assert len(claimed) == len(set(claimed)) == taken  # no seat in two active bookings
            assert seat_owner == {seat: b.id for b in active for seat in (b.seat_ids or [])}
        return taken


def reserve(event_id: int, users: list[Any], **fields: Any) -> Work:
    async def work(session: AsyncSession, index: int) -> Booking:
        return await bookings.reserve(
            session, user_id=users[index].id, event_id=event_id, quantity=fields.get("quantity"),
            seat_ids=fields.get("seat_ids"), idempotency_key=fields.get("idempotency_key"),
            expected_version=None, holds=HOLDS)
    return work


async def test_25_buyers_of_2_places_against_100_all_succeed(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100)
    users = await make_users(sessionmaker, 25)
    results = await race(sessionmaker, 25, reserve(event.id, users, quantity=2))
    assert all(isinstance(r, Booking) for r in results), Counter(map(str, results))
    assert await assert_inventory_truth(sessionmaker, event.id) == 50


async def test_1000_buyers_against_300_places_sell_exactly_300(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=300)
    users = await make_users(sessionmaker, 1000)
    results = await race(sessionmaker, 1000, reserve(event.id, users, quantity=1))
    outcomes = Counter("ok" if isinstance(r, Booking) else r for r in results)
    assert outcomes["ok"] == 300
    assert outcomes[ErrorCode.SOLD_OUT] + outcomes[ErrorCode.NOT_ENOUGH_SEATS] == 700, outcomes
    assert await assert_inventory_truth(sessionmaker, event.id) == 300
    async with sessionmaker() as session:
        final = await session.get(Event, event.id)
        assert final is not None and (final.available, final.status) == (0, "SOLD_OUT")


async def test_200_best_available_buyers_get_different_seats(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)  # 30 seats
    users = await make_users(sessionmaker, 200)
    results = await race(sessionmaker, 200, lambda s, i: reserve(event.id, users, quantity=1 + i % 2)(s, i))
    ok = [r for r in results if isinstance(r, Booking)]
    refused = Counter(r for r in results if not isinstance(r, Booking))
    assert set(refused) <= {ErrorCode.SOLD_OUT, ErrorCode.NOT_ENOUGH_SEATS}, refused
    taken = await assert_inventory_truth(sessionmaker, event.id)
    assert taken == sum(b.quantity for b in ok)
    # Nobody was refused while a seat that fit was free: at most one seat is left over.
    assert taken >= 29


async def test_racing_best_available_buyers_get_the_best_seats(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    # Rows of 10: every buyer's pair fits side by side in the front rows.
    rows = [catalogue.SeatRow(label=label, seats=10) for label in "ABCDEFGH"]
    event = await make_event(sessionmaker, seat_map=[catalogue.Section(name="Stalls", price_cents=5000, rows=rows)])
    users = await make_users(sessionmaker, 20)
    results = await race(sessionmaker, 20, reserve(event.id, users, quantity=2))
    assert all(isinstance(r, Booking) for r in results), Counter(map(str, results))
    assert await assert_inventory_truth(sessionmaker, event.id) == 40
    async with sessionmaker() as session:
        seats = (await session.execute(select(Seat.id, Seat.status).where(Seat.event_id == event.id)
                                       .order_by(Seat.id))).all()
    # No back-row seat went out while a front-row one stayed free: the 40 held are the first 40.
    assert [status for _, status in seats] == [SeatStatus.HELD] * 40 + [SeatStatus.AVAILABLE] * 40


async def test_50_buyers_racing_for_one_seat(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    async with sessionmaker() as session:
        seat_ids = list((await session.scalars(select(Seat.id).where(Seat.event_id == event.id)
                                               .order_by(Seat.id).limit(2))).all())
    users = await make_users(sessionmaker, 50)
    results = await race(sessionmaker, 50, reserve(event.id, users, seat_ids=seat_ids))
    outcomes = Counter("ok" if isinstance(r, Booking) else r for r in results)
    assert outcomes == {"ok": 1, ErrorCode.SEATS_UNAVAILABLE: 49}
    assert await assert_inventory_truth(sessionmaker, event.id) == 2


async def test_one_idempotency_key_raced_has_one_effect(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100)
    user = (await make_users(sessionmaker, 1))[0]
    results = await race(sessionmaker, 20, reserve(event.id, [user] * 20, quantity=2, idempotency_key="once"))
    assert {r.id for r in results} == {results[0].id}
    assert await assert_inventory_truth(sessionmaker, event.id) == 2


async def _pending_booking(sessionmaker: async_sessionmaker[AsyncSession], event_id: int, user: Any) -> Booking:
    async with sessionmaker() as session:
        booking = await bookings.reserve(session, user_id=user.id, event_id=event_id, quantity=1,
                                         seat_ids=None, idempotency_key=None, expected_version=None,
                                         holds=HOLDS)
        await session.commit()
    return booking


async def test_confirm_racing_expiry_has_one_winner(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100)
    user = (await make_users(sessionmaker, 1))[0]
    gateway = MockGateway()
    winners: Counter[str] = Counter()
    for _ in range(15):
        booking = await _pending_booking(sessionmaker, event.id, user)
        lapses_at = utcnow() + timedelta(seconds=1)
        async with sessionmaker() as session:
            await session.execute(update(Booking).where(Booking.id == booking.id).values(expires_at=lapses_at))
            await session.commit()

        async def confirm_just_before(session: AsyncSession, _: int, booking_id: int = booking.id,
                                      lapses_at: datetime = lapses_at) -> str:
            await bookings.confirm(session, caller=identity_of(user), booking_id=booking_id,
                                   payment_token="tok_visa", payment_method="card", idempotency_key=None,
                                   gateway=gateway, now=lapses_at - timedelta(milliseconds=1))
            return "confirmed"

        async def sweep_just_after(session: AsyncSession, _: int, lapses_at: datetime = lapses_at) -> str:
            expired = await bookings.expire_lapsed(session, holds=HOLDS, now=lapses_at + timedelta(milliseconds=1))
            return f"swept {expired}"

        results = await race(sessionmaker, 2, lambda s, i: (confirm_just_before, sweep_just_after)[i](s, i))
        async with sessionmaker() as session:
            final = await session.get(Booking, booking.id)
        assert final is not None
        if results[0] == "confirmed":
            assert (final.status, results[1]) == (BookingStatus.CONFIRMED, "swept 0")
        else:
            assert (results, final.status) == ([ErrorCode.RESERVATION_EXPIRED, "swept 1"], BookingStatus.EXPIRED)
        winners[final.status] += 1
    async with sessionmaker() as session:
        charges = await session.scalar(select(func.count()).select_from(Payment))
    assert charges == winners[BookingStatus.CONFIRMED] == len(gateway.charges)
    await assert_inventory_truth(sessionmaker, event.id)


async def test_confirm_racing_cancel_and_double_confirm_charge_once(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100)
    user = (await make_users(sessionmaker, 1))[0]
    gateway = MockGateway()

    def confirm(booking_id: int, key: str | None) -> Work:
        async def work(session: AsyncSession, _: int) -> str:
            await bookings.confirm(session, caller=identity_of(user), booking_id=booking_id,
                                   payment_token="tok_visa", payment_method="card", idempotency_key=key,
                                   gateway=gateway)
            return "confirmed"
        return work

    def cancel(booking_id: int) -> Work:
        async def work(session: AsyncSession, _: int) -> str:
            await bookings.cancel(session, caller=identity_of(user), booking_id=booking_id,
                                  idempotency_key=None, gateway=gateway, holds=HOLDS)
            return "cancelled"
        return work

    for _ in range(10):
        booking = await _pending_booking(sessionmaker, event.id, user)
        first, second = confirm(booking.id, None), cancel(booking.id)
        results = await race(sessionmaker, 2, lambda s, i, pair=(first, second): pair[i](s, i))
        # Either confirm then cancel (charged and refunded) or cancel first (never charged).
        assert results in (["confirmed", "cancelled"], [ErrorCode.INVALID_STATE, "cancelled"])

    for key in (None, "same-key"):
        booking = await _pending_booking(sessionmaker, event.id, user)
        keys = [key or f"k{i}" for i in range(5)] if key else [None] * 5
        results = await race(sessionmaker, 5, lambda s, i, b=booking.id, k=keys: confirm(b, k[i])(s, i))
        if key:
            assert results == ["confirmed"] * 5  # replays of the one payment
        else:
            assert sorted(map(str, results)) == sorted(["confirmed"] + [str(ErrorCode.INVALID_STATE)] * 4)

    async with sessionmaker() as session:
        payments = Counter((await session.scalars(select(Payment.kind))).all())
        cancelled_after_paying = await session.scalar(select(func.count()).select_from(Booking).where(
            Booking.status == BookingStatus.CANCELLED, Booking.confirmed_at.is_not(None)))
    assert payments["CHARGE"] == len(gateway.charges) == cancelled_after_paying + 2
    assert payments["REFUND"] == len(gateway.refunds) == cancelled_after_paying
    await assert_inventory_truth(sessionmaker, event.id)
