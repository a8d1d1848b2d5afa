"""Inventory: the statements that take and return places, and what they announce.

Every change goes through the event row's counter (`available`, `version`) in one
conditional UPDATE, so PostgreSQL's row lock orders concurrent buyers and its re-check of
the WHERE clause after the lock wait makes sure nobody takes a place that is gone, while
everybody who fits succeeds. Seats are locked in id order before the event row; bookings
before seats. Holds past `expires_at` count as free to every read, before any sweeper,
except the places the sweep will hand to the waitlist (`public_places`).

The statements on the event row are Core and leave ORM objects already loaded in the session
as they were: callers use what RETURNING gives them, and re-read with
`populate_existing` where they need the row as it is now. (Letting SQLAlchemy expire the
objects instead would make a later attribute access load lazily, which async sessions forbid.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import and_, bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import not_found
from app.models import Booking, BookingStatus, Event, EventStatus, Seat, SeatStatus, WaitlistEntry, WaitlistStatus
from app.services import outbox, webhooks


class EventState(Protocol):
    id: int
    available: int
    version: int
    status: str


class EventCounter(NamedTuple):
    """An event's counter as already read (hashable: a DataLoader key)."""

    id: int
    available: int
    version: int
    status: str


def availability_message(event_id: int, available: int, version: int, status: str,
                         changed_seats: Iterable[tuple[int, str]] = (), since: int | None = None) -> dict[str, Any]:
    """An event's state at a version, as subscribers receive it (app/resolvers/realtime.py).
    `sinceVersion`: the seat changes listed are every one after that version (merging two
    messages keeps the older one's), so a subscriber can tell merged messages from lost ones."""
    return {
        "eventId": event_id,
        "availableSeats": available,
        "version": version,
        "sinceVersion": version - 1 if since is None else since,
        "status": status,
        "changedSeats": [{"seatId": seat_id, "status": seat_status} for seat_id, seat_status in changed_seats],
    }


def record_availability(
    session: AsyncSession, event: EventState, changed_seats: Iterable[tuple[int, str]] = (), *,
    since: int | None = None,
) -> None:
    """Announce (after commit) the event's state at this version: one step after the last
    announced, or, given `since`, every step after that one (a unit of work that moved the
    version more than once, announced once)."""
    outbox.record(session, outbox.availability_channel(event.id), availability_message(
        event.id, event.available, event.version, event.status, changed_seats, since))


# The event row's statements below are Core, on the table: with `synchronize_session=False`
# the ORM's bulk-UPDATE layer did nothing for them but cost more CPU than the UPDATE itself
# (a tenth of a reserve batch's).
EVENTS = Event.__table__
_EVENT_STATE = (EVENTS.c.id, EVENTS.c.available, EVENTS.c.version, EVENTS.c.status)


async def event_for_update(session: AsyncSession, event_id: int) -> Event:
    """The event, its row locked until the commit (changes that are not a take: details,
    waiting room, cancellation); NOT_FOUND when there is none."""
    event = await session.scalar(select(Event).where(Event.id == event_id).with_for_update()
                                 .execution_options(populate_existing=True))
    if event is None:
        raise not_found("Event")
    return event


# What a take returns: the event's new state, and what writing its holds needs.
_TAKEN = (*_EVENT_STATE, EVENTS.c.capacity, EVENTS.c.price_cents, EVENTS.c.currency, EVENTS.c.max_tickets_per_user)


def _take_statement(*conditions: Any) -> Any:
    return (
        update(EVENTS)
        .where(EVENTS.c.id == bindparam("event_id"), EVENTS.c.status == EventStatus.ON_SALE,
               EVENTS.c.available >= bindparam("quantity"), *conditions)
        .values(
            available=EVENTS.c.available - bindparam("quantity"),
            version=EVENTS.c.version + 1,
            status=case((EVENTS.c.available == bindparam("quantity"), EventStatus.SOLD_OUT), else_=EVENTS.c.status),
        )
        .returning(*_TAKEN)
    )


# Built once: the hottest statements of a sale, compiled once and then only bound.
_TAKE_PLACES = _take_statement()
# For buyers who have not been checked against the event yet: none of them may ask for more
# than one booking allows, so the common case needs no read before it. Events with a waiting
# room never take this path: their buyers' admissions are checked first (`bookings`).
_TAKE_CHECKED = _take_statement(EVENTS.c.max_tickets_per_booking >= bindparam("largest"),
                                EVENTS.c.waiting_room.is_(False))


async def take_places(session: AsyncSession, *, event_id: int, quantity: int,
                      largest: int | None = None) -> Any | None:
    """Take `quantity` places of an ON_SALE event in one statement; None when they are not
    there (or, given `largest`, when a booking of that many is over the event's limit). From
    here the event row stays locked until the commit: keep the rest short."""
    if largest is None:
        result = await session.execute(_TAKE_PLACES, {"event_id": event_id, "quantity": quantity})
    else:
        result = await session.execute(_TAKE_CHECKED, {"event_id": event_id, "quantity": quantity,
                                                       "largest": largest})
    taken = result.one_or_none()
    if taken is not None and taken.status == EventStatus.SOLD_OUT:  # this take sold the last place
        await webhooks.enqueue(session, webhooks.WebhookEvent.EVENT_SOLD_OUT,
                               webhooks.event_data(taken.id, taken.status, taken.available))
    return taken


async def return_places(session: AsyncSession, *, event_id: int, quantity: int) -> Any:
    """Put places back on sale; a sold-out event goes back on sale."""
    result = await session.execute(
        update(EVENTS)
        .where(EVENTS.c.id == event_id)
        .values(
            available=EVENTS.c.available + quantity,
            version=EVENTS.c.version + 1,
            status=case((EVENTS.c.status == EventStatus.SOLD_OUT, EventStatus.ON_SALE),
                        else_=EVENTS.c.status),
        )
        .returning(*_EVENT_STATE)
    )
    return result.one()


async def bump_version(session: AsyncSession, *, event_id: int) -> Any:
    """A change that moves no place (seats turning BOOKED) still gets its own version."""
    result = await session.execute(
        update(EVENTS).where(EVENTS.c.id == event_id).values(version=EVENTS.c.version + 1)
        .returning(*_EVENT_STATE)
    )
    return result.one()


async def hold_seats(
    session: AsyncSession, *, event_id: int, seat_ids: Sequence[int], booking_id: int, skip_locked: bool = False
) -> list[tuple[int, int]]:
    """Hold exactly these seats if they are free; returns (seat id, price) of those taken.
    Locks in id order, so two buyers of overlapping seats cannot deadlock. `skip_locked`:
    seats another buyer is taking are left out at once instead of waited for."""
    free = (
        select(Seat.id).where(Seat.event_id == event_id, Seat.id.in_(seat_ids),
                              Seat.status == SeatStatus.AVAILABLE)
        .order_by(Seat.id).with_for_update(skip_locked=skip_locked)
    )
    result = await session.execute(
        update(Seat).where(Seat.id.in_(free.scalar_subquery()))
        .values(status=SeatStatus.HELD, booking_id=booking_id)
        .returning(Seat.id, Seat.price_cents)
        .execution_options(synchronize_session=False)
    )
    return [(row.id, row.price_cents) for row in result]


# How many free seats a best-available buyer looks at to find a block side by side.
BEST_AVAILABLE_WINDOW = 4


async def hold_best_seats(
    session: AsyncSession, *, event_id: int, quantity: int, booking_id: int
) -> list[tuple[int, int]]:
    """Hold `quantity` of the best free seats, side by side in one row when the window
    allows. The window is read without locks and only the seats chosen are locked: a buyer
    that locked its whole window would push racing buyers (who skip locked seats) to worse
    seats than those it leaves free. Chosen seats another buyer is taking are passed over
    and the next best chosen; only when every free seat is being taken does the buyer wait,
    since a locked seat may yet come free (its locker may roll back)."""
    free = (select(Seat.id, Seat.section, Seat.row, Seat.number)
            .where(Seat.event_id == event_id, Seat.status == SeatStatus.AVAILABLE).order_by(Seat.id))
    passed_over: set[int] = set()  # grows every round, so the loop ends
    while len(window := (await session.execute(
            free.where(Seat.id.not_in(passed_over)).limit(max(quantity * BEST_AVAILABLE_WINDOW, 16)))).all()) \
            >= quantity:
        chosen = _adjacent_block(window, quantity) or [row.id for row in window[:quantity]]
        attempt = await session.begin_nested()  # all or none: a part taken is let go at once
        taken = await hold_seats(session, event_id=event_id, seat_ids=chosen, booking_id=booking_id,
                                 skip_locked=True)
        if len(taken) == quantity:
            await attempt.commit()
            return taken
        await attempt.rollback()
        passed_over.update(set(chosen) - {seat_id for seat_id, _ in taken})
    window = (await session.execute(free.limit(quantity))).all()
    return await hold_seats(session, event_id=event_id, seat_ids=[row.id for row in window], booking_id=booking_id)


def _adjacent_block(window: Sequence[Any], quantity: int) -> list[int] | None:
    """The first run of `quantity` consecutive seats in one row of the window, if any."""
    run: list[Any] = []
    for seat in window:
        if run and (seat.section, seat.row, seat.number) == (run[-1].section, run[-1].row,
                                                             run[-1].number + 1):
            run.append(seat)
        else:
            run = [seat]
        if len(run) == quantity:
            return [s.id for s in run]
    return None


async def set_seats_status(session: AsyncSession, *, booking_id: int, status: str) -> list[tuple[int, str]]:
    """Move every seat of a booking to `status` (AVAILABLE also frees it)."""
    holder = None if status == SeatStatus.AVAILABLE else booking_id
    result = await session.execute(
        update(Seat).where(Seat.booking_id == booking_id)
        .values(status=status, booking_id=holder)
        .returning(Seat.id)
        .execution_options(synchronize_session=False)
    )
    return [(seat_id, status) for seat_id in result.scalars()]


async def release(session: AsyncSession, booking: Booking) -> None:
    """Return a booking's places (and seats) to sale and announce it."""
    changed = []
    if booking.seat_ids is not None:
        changed = await set_seats_status(session, booking_id=booking.id, status=SeatStatus.AVAILABLE)
    state = await return_places(session, event_id=booking.event_id, quantity=booking.quantity)
    record_availability(session, state, changed)


# --- reads that treat lapsed holds as free ----------------------------------------------

def lapsed_hold(now: datetime) -> Any:
    return and_(Booking.status == BookingStatus.PENDING, Booking.expires_at <= now)


async def lapsed_places(session: AsyncSession, event_ids: Sequence[int], now: datetime) -> dict[int, int]:
    """Places held by holds that have lapsed but are not swept yet, per event."""
    rows = await session.execute(
        select(Booking.event_id, func.sum(Booking.quantity))
        .where(Booking.event_id.in_(event_ids), lapsed_hold(now))
        .group_by(Booking.event_id)
    )
    return {event_id: int(total) for event_id, total in rows}


def waitlist_takes(free: int, wanted: Sequence[int]) -> list[int]:
    """Which waiting entries returned places go to, by position in the queue (oldest first):
    each in turn that fits what is still free; bigger ones keep their place."""
    taken = []
    for position, quantity in enumerate(wanted):
        if quantity <= free:
            taken.append(position)
            free -= quantity
    return taken


async def public_places(session: AsyncSession, events: Sequence[EventState], now: datetime) -> dict[int, int]:
    """The places a buyer can take now, per event: the counter, plus the places of lapsed
    holds not swept yet, less those that the sweep (or the next reserve) will offer to the
    waitlist before anyone else can have them."""
    lapsed = await lapsed_places(session, [event.id for event in events], now)
    owing = [event.id for event in events
             if lapsed.get(event.id) and event.status in (EventStatus.ON_SALE, EventStatus.SOLD_OUT)]
    wanted: dict[int, list[int]] = defaultdict(list)
    if owing:
        rows = await session.execute(
            select(WaitlistEntry.event_id, WaitlistEntry.quantity)
            .where(WaitlistEntry.event_id.in_(owing), WaitlistEntry.status == WaitlistStatus.WAITING)
            .order_by(WaitlistEntry.id))
        for event_id, quantity in rows:
            wanted[event_id].append(quantity)
    places = {}
    for event in events:
        free = event.available + lapsed.get(event.id, 0)
        queue = wanted.get(event.id, [])
        places[event.id] = free - sum(queue[position] for position in waitlist_takes(free, queue))
    return places


async def free_places(session: AsyncSession, event: EventState, now: datetime) -> int:
    return (await public_places(session, [event], now))[event.id]


async def availability_now(session: AsyncSession, event_ids: Sequence[int], now: datetime) -> dict[int, dict[str, Any]]:
    """What buyers see of each event now (drafts included; unknown ids left out), as
    `availability_message`s."""
    events = (await session.execute(select(*_EVENT_STATE).where(EVENTS.c.id.in_(event_ids)))).all()
    places = await public_places(session, events, now)
    return {event.id: availability_message(event.id, places[event.id], event.version,
                                           status_as_seen(event.status, places[event.id]))
            for event in events}


def status_as_seen(status: str, free: int) -> str:
    """An event sold out only on paper (its lapsed holds not swept yet) is on sale to buyers."""
    return EventStatus.ON_SALE if status == EventStatus.SOLD_OUT and free > 0 else status


def effective_seat_status(now: datetime) -> Any:
    """A seat's status as buyers should see it: HELD by a lapsed hold is AVAILABLE."""
    lapsed = select(Booking.id).where(Booking.id == Seat.booking_id, lapsed_hold(now)).exists()
    return case((and_(Seat.status == SeatStatus.HELD, lapsed), SeatStatus.AVAILABLE),
                else_=Seat.status)


async def seats_of_event(
    session: AsyncSession, *, event_id: int, section: str | None, now: datetime
) -> list[tuple[Seat, str]]:
    query = select(Seat, effective_seat_status(now)).where(Seat.event_id == event_id)
    if section is not None:
        query = query.where(Seat.section == section)
    return [(seat, status) for seat, status in (await session.execute(query.order_by(Seat.id))).all()]


async def seats_by_ids(session: AsyncSession, seat_ids: Sequence[int], now: datetime) -> dict[int, tuple[Seat, str]]:
    rows = await session.execute(select(Seat, effective_seat_status(now)).where(Seat.id.in_(seat_ids)))
    return {seat.id: (seat, status) for seat, status in rows.all()}

