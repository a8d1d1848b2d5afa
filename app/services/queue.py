"""The waiting room of a high-demand event: joining and leaving its queue, admission in queue
order at the room's rate, and the check the reserve path makes.

Admission is a row state (`QueueTicket.status` ADMITTED until `admitted_until`) that the
reserve checks in its own transaction, for the caller's own user and event: nothing a client
holds can forge, pass on or reuse it. `admit` runs in every instance (app/jobs/admission.py);
each room's row is claimed with SKIP LOCKED and its admission clock moved on as it admits,
so any number of admitters together keep the room's rate.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, String, and_, case, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DomainError, ErrorCode, invalid_input, not_found
from app.models import Booking, BookingStatus, Event, EventStatus, QueueStatus, QueueTicket, WaitingRoom, utcnow
from app.models.base import UTCDateTime
from app.services import inventory, outbox

# Ranks below this are the random ranks of buyers who joined before the sales start; later
# joiners get LATE_RANK + their join time in µs (under 2**51 for centuries): after them, in order.
LATE_RANK = 2**62
MAX_ADMIT_PER_MINUTE = 1_000_000
MAX_ADMISSION_SECONDS = 24 * 3600
# At most this much unused admission time is made up at once (after an outage of every
# admitter, say); idle, paused or sold-out rooms bank none at all.
MAX_CATCH_UP = timedelta(seconds=10)


def queue_channel(event_id: int) -> str:
    return f"event:{event_id}:queue"


def queue_required() -> DomainError:
    return DomainError(ErrorCode.QUEUE_REQUIRED, "This event has a waiting room: join its queue with joinQueue, "
                       "and reserve once you are admitted")


# --- the room -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RoomConfig:
    admit_per_minute: int
    admission_seconds: int = 600
    paused: bool = False


async def set_waiting_room(session: AsyncSession, *, event_id: int, config: RoomConfig | None,
                           now: datetime | None = None) -> Event:
    """Give an event a waiting room, change it (rate, admission time, pause), or with None
    take it away: reserves are then open to everyone again."""
    now = now or utcnow()
    event = await inventory.event_for_update(session, event_id)
    if event.status == EventStatus.CANCELLED:
        raise DomainError(ErrorCode.INVALID_STATE, "A cancelled event cannot be changed")
    room = await session.get(WaitingRoom, event_id, with_for_update=True)
    if config is None:
        if room is not None:
            await session.delete(room)
    else:
        if not 1 <= config.admit_per_minute <= MAX_ADMIT_PER_MINUTE:
            raise invalid_input("admitPerMinute", f"admitPerMinute must be between 1 and {MAX_ADMIT_PER_MINUTE}")
        if not 1 <= config.admission_seconds <= MAX_ADMISSION_SECONDS:
            raise invalid_input("admissionSeconds",
                                f"admissionSeconds must be between 1 and {MAX_ADMISSION_SECONDS}")
        if room is None:
            room = WaitingRoom(event_id=event_id, admitted_through=now)
            session.add(room)
        room.admit_per_minute = config.admit_per_minute
        room.admission_seconds = config.admission_seconds
        room.paused = config.paused
    event.waiting_room = config is not None
    event.version += 1
    await session.flush()
    inventory.record_availability(session, event)
    return event


async def get_room(session: AsyncSession, event_id: int) -> WaitingRoom | None:
    return await session.get(WaitingRoom, event_id)


async def room_counts(session: AsyncSession, event_id: int, now: datetime | None = None) -> tuple[int, int]:
    """(tickets WAITING, tickets ADMITTED and not lapsed) of an event's queue."""
    now = now or utcnow()
    waiting, admitted = (await session.execute(
        select(func.count().filter(QueueTicket.status == QueueStatus.WAITING),
               func.count().filter(_admitted(now)))
        .where(QueueTicket.event_id == event_id))).one()
    return int(waiting), int(admitted)


def _admitted(now: datetime) -> Any:
    return and_(QueueTicket.status == QueueStatus.ADMITTED, QueueTicket.admitted_until > now)


# --- buyers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TicketView:
    """A ticket with where it stands: `position` 1 is next (WAITING only)."""

    ticket: QueueTicket
    position: int | None
    estimated_wait_seconds: int | None


async def join(session: AsyncSession, *, user_id: int, event_id: int, now: datetime | None = None) -> QueueTicket:
    """A place in the event's queue; the same ticket when the buyer already has one that is
    WAITING, ADMITTED or SOLD_OUT. One who left or whose admission lapsed goes to the back."""
    now = now or utcnow()
    early, late = _ranks(now)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    # The flood of an on-sale is first joins of an event open to its queue: one statement.
    # Concurrent joins of one buyer meet on the unique (event, user): one inserts, the others
    # wait for it and then read the same ticket below.
    inserted = await session.scalar(
        dialect.insert(QueueTicket)
        .from_select(["event_id", "user_id", "status", "rank", "joined_at"], select(
            Event.id, literal(user_id, BigInteger), literal(QueueStatus.WAITING, String),
            case((Event.sales_start_at > now, early), else_=late), literal(now, UTCDateTime))
            .where(Event.id == event_id, Event.waiting_room,
                   Event.status.in_([EventStatus.SCHEDULED, EventStatus.ON_SALE, EventStatus.SOLD_OUT])))
        .on_conflict_do_nothing(index_elements=["event_id", "user_id"])
        .returning(QueueTicket))
    if inserted is not None:
        return inserted
    event = await session.get(Event, event_id)  # no new ticket: the event says why, or one exists
    if event is None or event.status == EventStatus.DRAFT:
        raise not_found("Event")
    if not event.waiting_room:
        raise DomainError(ErrorCode.INVALID_STATE, "This event has no waiting room: reserve directly")
    if event.status == EventStatus.CANCELLED:
        raise DomainError(ErrorCode.EVENT_NOT_ON_SALE, "This event is cancelled")
    ticket = await session.scalar(
        select(QueueTicket).where(QueueTicket.event_id == event_id, QueueTicket.user_id == user_id)
        .with_for_update().execution_options(populate_existing=True))
    assert ticket is not None
    lapsed = ticket.status == QueueStatus.ADMITTED and ticket.admitted_until is not None \
        and ticket.admitted_until <= now
    if ticket.status in (QueueStatus.LEFT, QueueStatus.LAPSED) or lapsed:
        early_now = event.sales_start_at is not None and now < event.sales_start_at
        ticket.status, ticket.rank, ticket.joined_at = QueueStatus.WAITING, early if early_now else late, now
        ticket.admitted_at = ticket.admitted_until = None
        await session.flush()
        _record_change(session, ticket)
    return ticket


def _ranks(now: datetime) -> tuple[int, int]:
    """A ticket's rank if it joins before the sales start (random: an early arrival buys
    nothing), and if it joins after (its join time: first come, first served)."""
    return secrets.randbelow(LATE_RANK), LATE_RANK + int(now.timestamp() * 1_000_000)


def _record_change(session: AsyncSession, ticket: QueueTicket) -> None:
    """Tell the buyer's own queueStatus streams (on any instance) that their ticket changed."""
    outbox.record(session, queue_channel(ticket.event_id),
                  {"eventId": ticket.event_id, "users": [ticket.user_id], "soldOut": False})


async def leave(session: AsyncSession, *, user_id: int, event_id: int) -> QueueTicket:
    """Give up one's place (or admission): the ones behind move up."""
    ticket = await session.scalar(
        select(QueueTicket).where(QueueTicket.event_id == event_id, QueueTicket.user_id == user_id)
        .with_for_update().execution_options(populate_existing=True))
    if ticket is None:
        raise not_found("Queue ticket")
    if ticket.status in (QueueStatus.WAITING, QueueStatus.ADMITTED):
        ticket.status = QueueStatus.LEFT
        ticket.admitted_until = None
        await session.flush()
        _record_change(session, ticket)
    return ticket


async def ticket_of(session: AsyncSession, *, user_id: int, event_id: int) -> QueueTicket | None:
    return await session.scalar(
        select(QueueTicket).where(QueueTicket.event_id == event_id, QueueTicket.user_id == user_id)
        .execution_options(populate_existing=True))


@dataclass(frozen=True)
class _Order:
    keys: list[tuple[int, int]]  # (rank, id) of the WAITING tickets, in queue order
    admit_per_minute: int | None  # None while paused
    read_at: float


class WaitingOrders:
    """Where the waiting tickets of each event stand, read at most every `max_age_seconds`
    per instance and shared by all its requests. A position is then a bisection, not a count
    of everyone ahead: 20,000 buyers joining, polling and watching would each count up to
    20,000 rows. A position is at most `max_age_seconds` old; a ticket that joined since the
    read is placed among the tickets the read saw."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_age_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessionmaker = sessionmaker
        self._max_age = max_age_seconds
        self._clock = clock
        self._orders: dict[int, _Order] = {}
        self._reads: dict[int, asyncio.Lock] = {}

    async def view(self, ticket: QueueTicket, session: AsyncSession | None = None) -> TicketView:
        """The ticket and where it stands. Give the `session` of a transaction in progress to
        read the order in it (no second connection, and its own changes are seen)."""
        if ticket.status != QueueStatus.WAITING:
            return TicketView(ticket, None, None)
        order = await self._order(ticket.event_id, session)
        position = bisect.bisect_left(order.keys, (ticket.rank, ticket.id)) + 1
        rate = order.admit_per_minute
        return TicketView(ticket, position, None if rate is None else math.ceil(position * 60 / rate))

    def _fresh(self, event_id: int) -> _Order | None:
        order = self._orders.get(event_id)
        return order if order is not None and self._clock() - order.read_at <= self._max_age else None

    async def _order(self, event_id: int, session: AsyncSession | None) -> _Order:
        if order := self._fresh(event_id):
            return order
        # One read at a time per event: those who wait for it use what it read.
        async with self._reads.setdefault(event_id, asyncio.Lock()):
            if order := self._fresh(event_id):
                return order
            read_at = self._clock()
            if session is None:
                async with self._sessionmaker() as own:
                    keys, rate = await _read_order(own, event_id)
            else:
                keys, rate = await _read_order(session, event_id)
            order = self._orders[event_id] = _Order(keys, rate, read_at)
            return order


async def _read_order(session: AsyncSession, event_id: int) -> tuple[list[tuple[int, int]], int | None]:
    """The (rank, id) of an event's WAITING tickets in queue order, and its room's rate (None
    while paused)."""
    rows = await session.execute(
        select(QueueTicket.rank, QueueTicket.id)
        .where(QueueTicket.event_id == event_id, QueueTicket.status == QueueStatus.WAITING)
        .order_by(QueueTicket.rank, QueueTicket.id))
    keys = [(rank, ticket_id) for rank, ticket_id in rows]
    room = await get_room(session, event_id)
    return keys, None if room is None or room.paused else room.admit_per_minute


# --- the reserve path's check ---------------------------------------------------------------

async def admitted_users(session: AsyncSession, *, event_id: int, user_ids: Sequence[int],
                         now: datetime) -> set[int]:
    """Which of these buyers are admitted to this event's sale right now (one query)."""
    rows = await session.scalars(select(QueueTicket.user_id).where(
        QueueTicket.event_id == event_id, QueueTicket.user_id.in_(set(user_ids)), _admitted(now)))
    return set(rows)


async def require_admission(session: AsyncSession, *, event_id: int, user_id: int, now: datetime,
                            sold_out_ok: bool = False) -> None:
    """QUEUE_REQUIRED unless the buyer is admitted now (or, given `sold_out_ok`, was waiting
    when the event sold out: the waitlist is theirs to join)."""
    if user_id in await admitted_users(session, event_id=event_id, user_ids=[user_id], now=now):
        return
    if sold_out_ok:
        ticket = await ticket_of(session, user_id=user_id, event_id=event_id)
        if ticket is not None and ticket.status == QueueStatus.SOLD_OUT:
            return
    raise queue_required()


# --- admission ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdmissionRound:
    """What one admitter did to one room."""

    event_id: int
    admitted: int
    lapsed_unused: int  # admissions that ran out without a booking made while they lasted
    sold_out: int
    waiting: int


async def admit(session: AsyncSession, *, now: datetime | None = None) -> list[AdmissionRound]:
    """One round over every room of a published event that no other admitter holds: lapse
    admissions past their time, end the queue when the event sold out, admit the next in
    queue order as the rate allows. Records one message per changed room on its queue channel."""
    now = now or utcnow()
    rooms = (await session.scalars(
        select(WaitingRoom).join(Event, Event.id == WaitingRoom.event_id)
        .where(Event.status.in_([EventStatus.SCHEDULED, EventStatus.ON_SALE, EventStatus.SOLD_OUT]))
        .order_by(WaitingRoom.event_id)
        .with_for_update(of=WaitingRoom, skip_locked=True)
        .execution_options(populate_existing=True))).all()
    return [await _admit_room(session, room, now) for room in rooms]


async def _admit_room(session: AsyncSession, room: WaitingRoom, now: datetime) -> AdmissionRound:
    lapsed_since = {user_id: admitted_at for user_id, admitted_at in await session.execute(
        update(QueueTicket)
        .where(QueueTicket.event_id == room.event_id, QueueTicket.status == QueueStatus.ADMITTED,
               QueueTicket.admitted_until <= now)
        .values(status=QueueStatus.LAPSED)
        .returning(QueueTicket.user_id, QueueTicket.admitted_at)
        .execution_options(synchronize_session=False))}
    lapsed = list(lapsed_since)
    admitted: list[int] = []
    sold_out = 0
    event = await session.scalar(select(Event).where(Event.id == room.event_id)
                                 .execution_options(populate_existing=True))
    assert event is not None
    if await _sold_out(session, event, now):
        sold_out = (await session.execute(
            update(QueueTicket).where(QueueTicket.event_id == room.event_id, QueueTicket.status == QueueStatus.WAITING)
            .values(status=QueueStatus.SOLD_OUT).execution_options(synchronize_session=False))).rowcount
        room.admitted_through = now
    elif room.paused or event.status == EventStatus.SCHEDULED:  # nothing banked before the start either
        room.admitted_through = now
    else:
        interval = timedelta(seconds=60 / room.admit_per_minute)
        start = max(room.admitted_through, now - max(MAX_CATCH_UP, interval))
        due = int((now - start) / interval)
        if due > 0:
            next_ones = (select(QueueTicket.id)
                         .where(QueueTicket.event_id == room.event_id, QueueTicket.status == QueueStatus.WAITING)
                         .order_by(QueueTicket.rank, QueueTicket.id).limit(due))
            admitted = list(await session.scalars(
                update(QueueTicket)
                .where(QueueTicket.id.in_(next_ones.scalar_subquery()), QueueTicket.status == QueueStatus.WAITING)
                .values(status=QueueStatus.ADMITTED, admitted_at=now,
                        admitted_until=now + timedelta(seconds=room.admission_seconds))
                .returning(QueueTicket.user_id).execution_options(synchronize_session=False)))
            # A queue that ran short banks no admissions for later: the rate is a flow, not a credit.
            room.admitted_through = start + interval * due if len(admitted) == due else now
    await session.flush()
    if admitted or lapsed or sold_out:
        outbox.record(session, queue_channel(room.event_id), {
            "eventId": room.event_id, "users": sorted(set(admitted) | set(lapsed)), "soldOut": sold_out > 0})
    waiting = await session.scalar(select(func.count()).select_from(QueueTicket).where(
        QueueTicket.event_id == room.event_id, QueueTicket.status == QueueStatus.WAITING))
    return AdmissionRound(room.event_id, len(admitted), await _unused(session, room.event_id, lapsed_since),
                          sold_out, int(waiting or 0))


async def _unused(session: AsyncSession, event_id: int, admitted_at: dict[int, datetime]) -> int:
    """How many of these admissions (user: admitted at) ended without a booking of the event."""
    if not admitted_at:
        return 0
    last_bookings = await session.execute(
        select(Booking.user_id, func.max(Booking.created_at))
        .where(Booking.event_id == event_id, Booking.user_id.in_(admitted_at)).group_by(Booking.user_id))
    used = sum(1 for user_id, last in last_bookings if last >= admitted_at[user_id])
    return len(admitted_at) - used


async def _sold_out(session: AsyncSession, event: Event, now: datetime) -> bool:
    """Nothing left to buy and nothing held that could come back: the queue has ended."""
    if event.status == EventStatus.SCHEDULED or event.available > 0 \
            or await inventory.free_places(session, event, now) > 0:
        return False
    held = await session.scalar(select(Booking.id).where(
        Booking.event_id == event.id, Booking.status == BookingStatus.PENDING, Booking.expires_at > now).limit(1))
    return held is None


def merge_queue_messages(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """Fold two queue messages a subscriber has not read yet: every user either names, sold
    out if either says so."""
    return {**newer, "users": sorted(set(older["users"]) | set(newer["users"])),
            "soldOut": older["soldOut"] or newer["soldOut"]}

