"""A hypothesis state machine over reserve / confirm / cancel / expire / time travel, on
PostgreSQL, checking after every step that no place is lost or sold twice and that a buyer
is refused only when the places are really gone."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from sqlalchemy import func, select

from app.db import create_engine, create_sessionmaker
from app.errors import DomainError, ErrorCode
from app.models import Booking, BookingStatus, Event, Seat, SeatStatus, User, utcnow
from app.services import bookings, inventory
from app.services.accounts import Identity
from app.services.payments import MockGateway
from tests.conftest import _empty_tables, base_settings
from tests.factories import SMALL_SEAT_MAP, make_event, make_users
from tests.test_concurrency import settle

HOLDS = bookings.HoldTimes(reservation_seconds=60, offer_seconds=120)


class BookingMachine(RuleBasedStateMachine):
    database_url: str = ""
    booking_ids = Bundle("booking_ids")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.engine = create_engine(base_settings(database_url=self.database_url))
        self.sessionmaker = create_sessionmaker(self.engine)
        self.gateway = MockGateway()
        self.now = utcnow()
        self.run(_empty_tables(self.engine))
        self.events: list[Event] = [self.run(make_event(self.sessionmaker, capacity=5)),
                                    self.run(make_event(self.sessionmaker, seat_map=SMALL_SEAT_MAP))]
        self.users: list[User] = self.run(make_users(self.sessionmaker, 3))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()

    async def _in_transaction(self, work: Any) -> Any:
        async with self.sessionmaker() as session:
            try:
                result = await work(session)
                await session.commit()
                return result
            except DomainError as error:
                return await settle(session, error)

    async def _free_places(self, event_id: int) -> int:
        async with self.sessionmaker() as session:
            event = await session.get(Event, event_id)
            assert event is not None
            lapsed = await inventory.lapsed_places(session, [event_id], self.now)
            return event.available + lapsed.get(event_id, 0)

    @rule(target=booking_ids, event=st.integers(0, 1), user=st.integers(0, 2), quantity=st.integers(1, 4))
    def reserve(self, event: int, user: int, quantity: int) -> int:
        event_id = self.events[event].id
        free = self.run(self._free_places(event_id))
        result = self.run(self._in_transaction(lambda session: bookings.reserve(
            session, user_id=self.users[user].id, event_id=event_id, quantity=quantity, seat_ids=None,
            idempotency_key=None, expected_version=None, holds=HOLDS, now=self.now)))
        if free >= quantity:
            assert isinstance(result, Booking), f"refused with {result} while {free} places were free"
            return result.id
        assert result in (ErrorCode.SOLD_OUT, ErrorCode.NOT_ENOUGH_SEATS)
        return -1

    def _caller(self, booking_id: int) -> Identity:
        async def owner() -> int:
            async with self.sessionmaker() as session:
                booking = await session.get(Booking, booking_id)
                return booking.user_id if booking else self.users[0].id
        return Identity(user_id=self.run(owner()), role="USER")

    @rule(booking_id=booking_ids)
    def confirm(self, booking_id: int) -> None:
        if booking_id < 0:
            return
        caller = self._caller(booking_id)
        self.run(self._in_transaction(lambda session: bookings.confirm(
            session, caller=caller, booking_id=booking_id, payment_token="tok_visa", payment_method="card",
            idempotency_key=None, gateway=self.gateway, now=self.now)))

    @rule(booking_id=booking_ids)
    def cancel(self, booking_id: int) -> None:
        if booking_id < 0:
            return
        caller = self._caller(booking_id)
        self.run(self._in_transaction(lambda session: bookings.cancel(
            session, caller=caller, booking_id=booking_id, idempotency_key=None, gateway=self.gateway,
            holds=HOLDS, now=self.now)))

    @rule()
    def sweep(self) -> None:
        self.run(self._in_transaction(lambda session: bookings.expire_lapsed(session, holds=HOLDS, now=self.now)))

    @rule(seconds=st.sampled_from([1, 30, HOLDS.reservation_seconds + 1]))
    def time_travel(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @invariant()
    def places_add_up(self) -> None:
        self.run(self._check(self.now))

    async def _check(self, now: datetime) -> None:
        async with self.sessionmaker() as session:
            for event in self.events:
                row = await session.get(Event, event.id, populate_existing=True)
                assert row is not None
                active = (await session.scalars(select(Booking).where(
                    Booking.event_id == event.id,
                    Booking.status.in_([BookingStatus.PENDING, BookingStatus.CONFIRMED])))).all()
                # The counter: every place is free or in exactly one active booking.
                assert row.available + sum(b.quantity for b in active) == row.capacity
                if row.is_seated:
                    taken_seats = await session.scalar(select(func.count()).select_from(Seat).where(
                        Seat.event_id == event.id, Seat.status != SeatStatus.AVAILABLE))
                    assert taken_seats == sum(b.quantity for b in active)
            charges = len(self.gateway.charges)
            confirmed_ever = await session.scalar(select(func.count()).select_from(Booking).where(
                Booking.confirmed_at.is_not(None)))
            assert charges == confirmed_ever  # one charge per confirmed booking, never two


def test_booking_state_machine(postgres_database: str) -> None:
    BookingMachine.database_url = postgres_database
    case = BookingMachine.TestCase
    case.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
    case().runTest()
