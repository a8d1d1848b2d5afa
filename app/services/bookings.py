"""Bookings in two phases: reserve (a PENDING hold with a TTL), then confirm (pay) or cancel.

Concurrency in short (see `inventory` for the statements): a reserve takes the places with
one conditional UPDATE of the event row, then writes its PENDING booking (`holds`), so the
row lock is held only from that statement to the commit; concurrent reserves of one event
may share that transaction (`reserve_general`, fed by `app/services/batching.py`). Confirm, cancel and expiry lock the
booking row first and move it by its current status, so a confirm racing an expiry or a
second confirm has exactly one winner, and one charge.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, invalid_input, not_found, parse_id
from app.models import (
    Booking,
    BookingStatus,
    Event,
    EventStatus,
    IdempotencyKey,
    Payment,
    PaymentKind,
    PaymentStatus,
    Seat,
    SeatStatus,
    Ticket,
    TicketStatus,
    User,
    Venue,
    WaitlistEntry,
    WaitlistStatus,
    utcnow,
)
from app.services import inventory, outbox, queue, webhooks
from app.services.accounts import Identity
from app.services.holds import over_cap, write_holds
from app.services.payments import PaymentDeclined, PaymentGateway
from app.services.tickets import sign as sign_ticket

MAX_IDEMPOTENCY_KEY_LENGTH = 200
MAX_SEATS_PER_REQUEST = 100
EXPIRY_BATCH = 500
# Random codes (secrets.token_urlsafe: bookings, and tickets issued before codes were signed)
# or signed ones (three base64url parts, app/services/tickets.py).
TICKET_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}|(?=.{1,512}$)[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class HoldTimes:
    """How long places are held: for a buyer's own reservation, and for a waitlist offer."""

    reservation_seconds: int
    offer_seconds: int


# What partners hear of each booking change (app/services/webhooks.py).
WEBHOOK_EVENTS = {BookingStatus.CONFIRMED: webhooks.WebhookEvent.BOOKING_CONFIRMED,
                  BookingStatus.CANCELLED: webhooks.WebhookEvent.BOOKING_CANCELLED,
                  BookingStatus.EXPIRED: webhooks.WebhookEvent.BOOKING_EXPIRED,
                  WaitlistStatus.OFFERED: webhooks.WebhookEvent.WAITLIST_OFFERED}


async def record_booking_update(session: AsyncSession, booking: Booking, reason: str) -> None:
    """Tell the owner's subscriptions (after commit) and its webhooks (in this transaction)."""
    outbox.record(session, outbox.bookings_channel(booking.user_id),
                  {"bookingId": booking.id, "reason": reason})
    await webhooks.enqueue(session, WEBHOOK_EVENTS[reason], webhooks.booking_data(booking), owner_id=booking.user_id)


# --- idempotency --------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyClaim:
    """A newly claimed idempotency key (`replay_booking_id` None) or an earlier answer."""

    key_id: int | None
    replay_booking_id: int | None


async def _claim_key(
    session: AsyncSession, *, user_id: int, key: str | None, operation: str, request: dict[str, Any]
) -> KeyClaim | None:
    """Claim `key` for this request before doing anything. A concurrent request with the same
    key waits on the unique index until the first commits, then replays its answer."""
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise invalid_input("idempotencyKey", f"idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    key_id = await session.scalar(
        dialect.insert(IdempotencyKey)
        .values(user_id=user_id, key=key, operation=operation, request_hash=request_hash,
                created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(IdempotencyKey.id)
    )
    if key_id is not None:
        return KeyClaim(key_id=key_id, replay_booking_id=None)
    earlier = await session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key))
    assert earlier is not None
    if earlier.operation != operation or earlier.request_hash != request_hash:
        raise DomainError(ErrorCode.IDEMPOTENCY_KEY_REUSED,
                          "This idempotency key was already used for a different request",
                          field="idempotencyKey")
    return KeyClaim(key_id=None, replay_booking_id=earlier.booking_id)


async def _remember(session: AsyncSession, claim: KeyClaim | None, booking_id: int) -> None:
    if claim is not None and claim.key_id is not None:
        await session.execute(update(IdempotencyKey).where(IdempotencyKey.id == claim.key_id)
                              .values(booking_id=booking_id))


async def _replayed(session: AsyncSession, claim: KeyClaim | None) -> Booking | None:
    if claim is None or claim.replay_booking_id is None:
        return None
    return await session.get(Booking, claim.replay_booking_id)


# --- reserve ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HoldRequest:
    """One buyer's general-admission reserve (several are served in one transaction)."""

    user_id: int
    quantity: int | None
    idempotency_key: str | None = None
    expected_version: int | None = None
    external_reference: str | None = None


def _check_request(event: Event, quantity: int | None, seat_ids: list[int] | None) -> int:
    if seat_ids is not None:
        if quantity is not None and quantity != len(seat_ids):
            raise invalid_input("quantity", "Give seatIds or quantity, not both")
        if not event.is_seated:
            raise invalid_input("seatIds", "This event has general admission: give a quantity")
        if not seat_ids:
            raise invalid_input("seatIds", "Choose at least one seat")
        if len(set(seat_ids)) != len(seat_ids):
            raise invalid_input("seatIds", "A seat is listed twice")
        quantity = len(seat_ids)
    return _check_quantity(event, quantity)


def _check_quantity_given(quantity: int | None) -> int:
    if quantity is None:
        raise invalid_input("quantity", "Give a quantity (or seatIds on a seated event)")
    if quantity < 1:
        raise invalid_input("quantity", "quantity must be at least 1")
    return quantity


def _check_quantity(event: Event, quantity: int | None) -> int:
    quantity = _check_quantity_given(quantity)
    if quantity > event.max_tickets_per_booking:
        raise DomainError(ErrorCode.LIMIT_EXCEEDED,
                          f"At most {event.max_tickets_per_booking} tickets per booking",
                          field="quantity")
    return quantity


def _check_event(event: Event, expected_version: int | None) -> None:
    if event.status not in (EventStatus.ON_SALE, EventStatus.SOLD_OUT):
        raise DomainError(ErrorCode.EVENT_NOT_ON_SALE, "This event is not on sale")
    if expected_version is not None and expected_version != event.version:
        raise DomainError(ErrorCode.VERSION_CONFLICT, "Availability changed since you looked",
                          current_version=event.version)


def _refusal(available: int, seat_ids: list[int] | None) -> DomainError:
    if seat_ids is not None:
        return DomainError(ErrorCode.SEATS_UNAVAILABLE, "Some of the chosen seats were just taken: choose others",
                           field="seatIds", available_seats=available)
    if available == 0:
        return DomainError(ErrorCode.SOLD_OUT, "Sold out", available_seats=0)
    return DomainError(ErrorCode.NOT_ENOUGH_SEATS, f"Only {available} left", available_seats=available)


def _over_cap(cap: int) -> DomainError:
    return DomainError(ErrorCode.LIMIT_EXCEEDED, f"At most {cap} tickets of this event per buyer, "
                       "counting your holds and purchases", field="quantity")


async def _why_not_taken(session: AsyncSession, event_id: int, seat_ids: list[int] | None,
                         now: datetime) -> DomainError:
    """Explain a take that found nothing, from the event as it is now. The places being
    gone is the real reason even when the caller's expected version is also stale."""
    event = await _read_event(session, event_id)
    assert event is not None
    try:
        _check_event(event, None)
    except DomainError as error:
        return error
    return _refusal(await inventory.free_places(session, event, now), seat_ids)


async def _read_event(session: AsyncSession, event_id: int, *, lock: bool = False) -> Event | None:
    query = select(Event).where(Event.id == event_id).execution_options(populate_existing=True)
    return await session.scalar(query.with_for_update() if lock else query)


async def reserve_general(
    session: AsyncSession, *, event_id: int, requests: Sequence[HoldRequest], holds: HoldTimes,
    now: datetime | None = None, known_general: bool = False,
) -> list[Booking | DomainError] | None:
    """Hold general-admission places for several buyers in this one transaction: one UPDATE of
    the event row for all of them, one INSERT of their bookings. Each gets its own answer, as
    if alone: its booking, or the error it would have had. Buyers are served in the order
    given; one that does not fit what is left is refused while a later, smaller one may still
    fit. None, with nothing written, when the event has reserved seating (`reserve` serves
    those one by one). `known_general` skips the look at the event's kind."""
    now = now or utcnow()
    if not known_general:
        kind = (await session.execute(select(Event.seat_map).where(Event.id == event_id))).first()
        if kind is not None and kind.seat_map is not None:
            return None
    results: list[Booking | DomainError | None] = [None] * len(requests)
    claims: list[KeyClaim | None] = [None] * len(requests)
    repeats: dict[int, int] = {}  # the same user and key twice here: the later gets the earlier's answer
    first_of_key: dict[tuple[int, str], int] = {}
    for i, request in enumerate(requests):
        if request.idempotency_key is not None:
            earlier = first_of_key.setdefault((request.user_id, request.idempotency_key), i)
            if earlier != i:
                repeats[i] = earlier
                continue
        try:
            _check_quantity_given(request.quantity)
            claims[i] = await _claim_key(session, user_id=request.user_id, key=request.idempotency_key,
                                         operation="reserve", request={"eventId": event_id, "quantity":
                                                                       request.quantity, "seatIds": None})
        except DomainError as error:
            results[i] = error
            continue
        results[i] = await _replayed(session, claims[i])

    waiting = [i for i, result in enumerate(results) if result is None and i not in repeats]
    taken, granted = None, []
    if waiting:
        quantities = [requests[i].quantity or 0 for i in waiting]
        if known_general and all(requests[i].expected_version is None for i in waiting):
            # The common case: everyone fits, and one statement both checks and takes.
            taken = await inventory.take_places(session, event_id=event_id, quantity=sum(quantities),
                                                largest=max(quantities))
            granted = waiting if taken is not None else []
        if taken is None:
            taken, granted = await _take_in_turn(session, event_id=event_id, requests=requests, waiting=waiting,
                                                 results=results, holds=holds, now=now)
    if granted:
        assert taken is not None
        state = taken
        holders = [(requests[i].user_id, requests[i].quantity or 0) for i in granted]
        over = await over_cap(session, event_id=event_id, holders=holders, cap=taken.max_tickets_per_user,
                              capacity=taken.capacity, now=now)
        if any(over):
            for i, is_over in zip(granted, over, strict=True):
                if is_over:
                    results[i] = _over_cap(taken.max_tickets_per_user)
            state = await inventory.return_places(session, event_id=event_id, quantity=sum(
                quantity for (_, quantity), is_over in zip(holders, over, strict=True) if is_over))
            granted = [i for i, is_over in zip(granted, over, strict=True) if not is_over]
        written = await write_holds(
            session, event_id=event_id, price_cents=taken.price_cents, currency=taken.currency,
            holders=[(requests[i].user_id, requests[i].quantity or 0) for i in granted],
            expires_at=now + timedelta(seconds=holds.reservation_seconds), now=now,
            external_references=[requests[i].external_reference for i in granted])
        for i, booking in zip(granted, written, strict=True):
            results[i] = booking
            await _remember(session, claims[i], booking.id)
        inventory.record_availability(session, state, since=taken.version - 1)  # the take, and any give-back
    # A refused buyer leaves nothing behind, not even its key: it may try again with it.
    await _withdraw_keys(session, [claims[i] for i, result in enumerate(results) if isinstance(result, DomainError)])
    for i, earlier in repeats.items():
        first = results[earlier]
        same = requests[i].quantity == requests[earlier].quantity
        results[i] = first if same else DomainError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED, "This idempotency key was already used for a different request",
            field="idempotencyKey")
    return [result for result in results if result is not None]


async def _take_in_turn(
    session: AsyncSession, *, event_id: int, requests: Sequence[HoldRequest], waiting: list[int],
    results: list[Booking | DomainError | None], holds: HoldTimes, now: datetime,
) -> tuple[Any, list[int]]:
    """Not everyone fits (or not everyone was checked): look at the event, refuse those it
    refuses, clear lapsed holds when places are short, and take for those that fit, in turn.
    The first look is unlocked, so the refused buyers of a sold-out event queue on nothing;
    should another buyer take places between the look and the take, look again holding the row."""
    cleared = False
    for lock in (False, True):
        event = await _read_event(session, event_id, lock=lock)
        if event is None or event.status == EventStatus.DRAFT:
            for i in waiting:
                results[i] = not_found("Event")
            return None, []
        admitted = None
        if event.waiting_room:
            admitted = await queue.admitted_users(session, event_id=event_id, now=now,
                                                  user_ids=[requests[i].user_id for i in waiting])
        fitting = []
        for i in waiting:
            try:
                _check_quantity(event, requests[i].quantity)
                _check_event(event, requests[i].expected_version)
                if admitted is not None and requests[i].user_id not in admitted:
                    raise queue.queue_required()
            except DomainError as error:
                results[i] = error
                continue
            fitting.append(i)
        wanted = sum(requests[i].quantity or 0 for i in fitting)
        if wanted > event.available and not cleared:
            # Only holds that have lapsed can stand between a buyer and places the counter does
            # not show; expiring them returns those places (to the waitlist first).
            cleared = bool(await expire_lapsed(session, holds=holds, now=now, event_id=event_id))
            if cleared:
                event = await _read_event(session, event_id, lock=lock)
                assert event is not None
        free, granted = event.available, []
        for i in fitting:
            quantity = requests[i].quantity or 0
            if quantity <= free and event.status == EventStatus.ON_SALE:
                granted.append(i)
                free -= quantity
            else:
                results[i] = _refusal(free if event.status == EventStatus.ON_SALE else 0, None)
        if not granted:
            return None, []
        state = await inventory.take_places(session, event_id=event_id,
                                            quantity=sum(requests[i].quantity or 0 for i in granted))
        if state is not None:
            return state, granted
        for i in fitting:  # someone took places since the look: decide again, holding the row
            results[i] = None
        waiting = fitting
    raise AssertionError("a take holding the event row cannot miss")


async def _withdraw_keys(session: AsyncSession, claims: Sequence[KeyClaim | None]) -> None:
    ids = [claim.key_id for claim in claims if claim is not None and claim.key_id is not None]
    if ids:
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids)))


async def reserve(
    session: AsyncSession,
    *,
    user_id: int,
    event_id: int,
    quantity: int | None,
    seat_ids: list[int] | None,
    idempotency_key: str | None,
    expected_version: int | None,
    holds: HoldTimes,
    now: datetime | None = None,
    external_reference: str | None = None,
) -> Booking:
    """Hold places for `user_id`: all of them or none, as one PENDING booking."""
    now = now or utcnow()
    if seat_ids is not None and len(seat_ids) > MAX_SEATS_PER_REQUEST:
        raise invalid_input("seatIds", f"At most {MAX_SEATS_PER_REQUEST} seats per request")
    if seat_ids is None:
        answers = await reserve_general(session, event_id=event_id, holds=holds, now=now, requests=[
            HoldRequest(user_id, quantity, idempotency_key, expected_version, external_reference)])
        if answers is not None:
            [answer] = answers
            if isinstance(answer, DomainError):
                # What it did on the way (lapsed holds cleared and offered) stands; its own
                # writes are already undone.
                answer.keep_changes = True
                raise answer
            return answer
    return await _reserve_seats(session, user_id=user_id, event_id=event_id, quantity=quantity, seat_ids=seat_ids,
                                idempotency_key=idempotency_key, expected_version=expected_version, holds=holds,
                                now=now, external_reference=external_reference)


async def _reserve_seats(
    session: AsyncSession, *, user_id: int, event_id: int, quantity: int | None, seat_ids: list[int] | None,
    idempotency_key: str | None, expected_version: int | None, holds: HoldTimes, now: datetime,
    external_reference: str | None = None,
) -> Booking:
    """Reserved seating: these seats, or the best free ones. The event row is taken first (see
    `holds`), then the booking written, then its seats held; seats that turn out to be gone
    undo all of it."""
    claim = await _claim_key(session, user_id=user_id, key=idempotency_key, operation="reserve",
                             request={"eventId": event_id, "quantity": quantity, "seatIds": seat_ids})
    if replay := await _replayed(session, claim):
        return replay
    event = await _read_event(session, event_id)
    if event is None or event.status == EventStatus.DRAFT:
        raise not_found("Event")
    quantity = _check_request(event, quantity, seat_ids)
    _check_event(event, expected_version)
    if event.waiting_room:
        await queue.require_admission(session, event_id=event.id, user_id=user_id, now=now)
    cleared_lapsed = False
    if event.available < quantity:
        # Short already: decide before writing anything.
        cleared_lapsed = bool(await expire_lapsed(session, holds=holds, now=now, event_id=event.id))
        if not cleared_lapsed:
            raise _refusal(event.available, seat_ids)
        expected_version = None  # checked above; clearing the lapsed holds moved it on
    state = await inventory.take_places(session, event_id=event.id, quantity=quantity)
    if state is None and not cleared_lapsed:
        cleared_lapsed = bool(await expire_lapsed(session, holds=holds, now=now, event_id=event.id))
        if cleared_lapsed:
            expected_version = None
            state = await inventory.take_places(session, event_id=event.id, quantity=quantity)
    if state is None:
        refusal = await _why_not_taken(session, event.id, seat_ids, now)
        refusal.keep_changes = cleared_lapsed  # see `_give_back`
        await _withdraw_keys(session, [claim])
        raise refusal
    if expected_version is not None and state.version != expected_version + 1:
        # The caller's optimistic check, made atomically against the version we replaced.
        raise DomainError(ErrorCode.VERSION_CONFLICT, "Availability changed since you looked",
                          current_version=state.version - 1)
    if (await over_cap(session, event_id=event.id, holders=[(user_id, quantity)], cap=state.max_tickets_per_user,
                       capacity=state.capacity, now=now))[0]:
        refusal = _over_cap(state.max_tickets_per_user)
        if cleared_lapsed:
            returned = await inventory.return_places(session, event_id=event.id, quantity=quantity)
            inventory.record_availability(session, returned, since=state.version - 1)
            await _withdraw_keys(session, [claim])
            refusal.keep_changes = True
        raise refusal
    [booking] = await write_holds(session, event_id=event.id, price_cents=0, currency=event.currency,
                                   holders=[(user_id, quantity)], now=now, external_references=[external_reference],
                                   expires_at=now + timedelta(seconds=holds.reservation_seconds))
    seats = await _hold_seats(session, booking, seat_ids)
    if len(seats) < quantity and not cleared_lapsed:
        # Seats of lapsed holds are still marked HELD until they are expired.
        cleared_lapsed = bool(await expire_lapsed(session, holds=holds, now=now, event_id=event.id))
        if cleared_lapsed:
            seats = await _hold_seats(session, booking, seat_ids)
    if len(seats) < quantity:
        refusal = _refusal(state.available + quantity, seat_ids)
        if cleared_lapsed:
            # The lapsed holds expired on the way stay expired, their places returned and
            # offered to the waitlist: rolled back with this refusal, they would have been
            # skipped (SKIP LOCKED) by every sweep meanwhile, and the waitlist kept waiting.
            await _give_back(session, booking, claim)
            refusal.keep_changes = True
        raise refusal
    booking.seat_ids = sorted(seat_id for seat_id, _ in seats)
    booking.total_cents = sum(price for _, price in seats)
    inventory.record_availability(session, state, [(seat_id, SeatStatus.HELD) for seat_id, _ in seats])
    await _remember(session, claim, booking.id)
    await session.flush()
    return booking


async def _hold_seats(session: AsyncSession, booking: Booking, seat_ids: list[int] | None) -> list[tuple[int, int]]:
    """Hold the booking's seats, all or none: (seat id, price) of each, or [] with none held."""
    if seat_ids is not None:
        seats = await inventory.hold_seats(session, event_id=booking.event_id, seat_ids=seat_ids,
                                           booking_id=booking.id)
    else:
        seats = await inventory.hold_best_seats(session, event_id=booking.event_id, quantity=booking.quantity,
                                                booking_id=booking.id)
    if 0 < len(seats) < booking.quantity:
        await inventory.set_seats_status(session, booking_id=booking.id, status=SeatStatus.AVAILABLE)
        return []
    return seats


async def _give_back(session: AsyncSession, booking: Booking, claim: KeyClaim | None) -> None:
    """Undo a refused seated reserve's own writes (its places, hold and key), keeping the rest
    of the unit of work."""
    returned = await inventory.return_places(session, event_id=booking.event_id, quantity=booking.quantity)
    inventory.record_availability(session, returned, since=returned.version - 2)  # the take and this
    await session.delete(booking)
    await _withdraw_keys(session, [claim])
    await session.flush()


# --- confirm and cancel -------------------------------------------------------------------

async def _booking_for_update(session: AsyncSession, booking_id: int, caller: Identity, *,
                              owner_only: bool) -> Booking:
    booking = await session.scalar(
        select(Booking).where(Booking.id == booking_id).with_for_update()
        .execution_options(populate_existing=True))
    allowed = booking is not None and (
        booking.user_id == caller.user_id or (caller.is_admin and not owner_only))
    if not allowed:
        raise not_found("Booking")  # not FORBIDDEN: do not reveal that it exists
    assert booking is not None
    return booking


async def payment_of(session: AsyncSession, booking_id: int, kind: str) -> Payment | None:
    return await session.scalar(select(Payment).where(Payment.booking_id == booking_id,
                                                      Payment.kind == kind))


async def confirm(
    session: AsyncSession,
    *,
    caller: Identity,
    booking_id: int,
    payment_token: str,
    payment_method: str,
    idempotency_key: str | None,
    gateway: PaymentGateway,
    ticket_key_secret: str = "",
    now: datetime | None = None,
) -> tuple[Booking, Payment]:
    """Pay for a hold and turn it into tickets, each with a signed code (`ticket_key_secret`:
    the deployment's TICKET_KEY_SECRET). A declined payment leaves the hold as it is."""
    now = now or utcnow()
    if not payment_token.strip() or len(payment_token) > 200:
        raise invalid_input("paymentToken", "paymentToken is required (at most 200 characters)")
    if not payment_method.strip() or len(payment_method) > 32:
        raise invalid_input("paymentMethod", "paymentMethod must be 1 to 32 characters")
    claim = await _claim_key(session, user_id=caller.user_id, key=idempotency_key, operation="confirm",
                             request={"bookingId": booking_id})
    if replay := await _replayed(session, claim):
        charge = await payment_of(session, replay.id, PaymentKind.CHARGE)
        assert charge is not None
        return replay, charge

    booking = await _booking_for_update(session, booking_id, caller, owner_only=True)
    if booking.status == BookingStatus.EXPIRED or (
        booking.status == BookingStatus.PENDING and booking.expires_at is not None
        and booking.expires_at <= now
    ):
        raise DomainError(ErrorCode.RESERVATION_EXPIRED, "This hold has expired: reserve again")
    if booking.status != BookingStatus.PENDING:
        raise DomainError(ErrorCode.INVALID_STATE, f"This booking is {booking.status.lower()}")

    try:
        charged = await gateway.charge(amount_cents=booking.total_cents, currency=booking.currency,
                                       token=payment_token, reference=booking.reference)
    except PaymentDeclined as declined:
        raise DomainError(ErrorCode.PAYMENT_DECLINED, str(declined), field="paymentToken") from None
    payment = Payment(booking_id=booking.id, kind=PaymentKind.CHARGE,
                      transaction_id=charged.transaction_id, status=PaymentStatus.CAPTURED,
                      amount_cents=charged.amount_cents, method=payment_method, created_at=now)
    session.add(payment)
    booking.status = BookingStatus.CONFIRMED
    booking.confirmed_at = now
    booking.expires_at = None
    booking.ticket_code = secrets.token_urlsafe(32)
    booking.version += 1
    seat_ids: list[int | None] = list(booking.seat_ids) if booking.seat_ids else [None] * booking.quantity
    # A code signs the ticket's id, known only once the row is written: a random stand-in first.
    tickets = [Ticket(booking_id=booking.id, code=secrets.token_urlsafe(32), seat_id=seat_id,
                      status=TicketStatus.VALID) for seat_id in seat_ids]
    session.add_all(tickets)
    await session.flush()
    for ticket in tickets:
        ticket.code = await sign_ticket(session, ticket_id=ticket.id, event_id=booking.event_id,
                                        secret=ticket_key_secret)
    if booking.seat_ids:
        changed = await inventory.set_seats_status(session, booking_id=booking.id, status=SeatStatus.BOOKED)
        inventory.record_availability(session, await inventory.bump_version(session, event_id=booking.event_id),
                                      changed)
    await _close_offer(session, booking, WaitlistStatus.CONVERTED)
    await _remember(session, claim, booking.id)
    await session.flush()
    await record_booking_update(session, booking, BookingStatus.CONFIRMED)
    return booking, payment


async def _void(session: AsyncSession, booking: Booking, gateway: PaymentGateway,
                now: datetime) -> Payment | None:
    """Cancel a PENDING or CONFIRMED booking: refund what was paid, void its tickets."""
    refund = None
    if booking.status == BookingStatus.CONFIRMED:
        charge = await payment_of(session, booking.id, PaymentKind.CHARGE)
        assert charge is not None
        refunded = await gateway.refund(transaction_id=charge.transaction_id,
                                        amount_cents=charge.amount_cents, currency=booking.currency)
        refund = Payment(booking_id=booking.id, kind=PaymentKind.REFUND,
                         transaction_id=refunded.transaction_id, status=PaymentStatus.REFUNDED,
                         amount_cents=refunded.amount_cents, method=charge.method, created_at=now)
        session.add(refund)
        await session.execute(update(Ticket).where(Ticket.booking_id == booking.id)
                              .values(status=TicketStatus.VOID, voided_at=now))
    booking.status = BookingStatus.CANCELLED
    booking.cancelled_at = now
    booking.expires_at = None
    booking.version += 1
    await record_booking_update(session, booking, BookingStatus.CANCELLED)
    return refund


async def cancel(
    session: AsyncSession,
    *,
    caller: Identity,
    booking_id: int,
    idempotency_key: str | None,
    gateway: PaymentGateway,
    holds: HoldTimes,
    now: datetime | None = None,
) -> tuple[Booking, Payment | None]:
    """Cancel a hold or a confirmed booking (refunded); its places go back on sale."""
    now = now or utcnow()
    claim = await _claim_key(session, user_id=caller.user_id, key=idempotency_key, operation="cancel",
                             request={"bookingId": booking_id})
    if replay := await _replayed(session, claim):
        return replay, await payment_of(session, replay.id, PaymentKind.REFUND)
    booking = await _booking_for_update(session, booking_id, caller, owner_only=False)
    if booking.status not in (BookingStatus.PENDING, BookingStatus.CONFIRMED):
        raise DomainError(ErrorCode.INVALID_STATE, f"This booking is already {booking.status.lower()}")
    refund = await _void(session, booking, gateway, now)
    await _close_offer(session, booking, WaitlistStatus.LEFT)
    await inventory.release(session, booking)
    await _offer_to_waitlist(session, event_id=booking.event_id, holds=holds, now=now)
    await _remember(session, claim, booking.id)
    await session.flush()
    return booking, refund


async def cancel_event(session: AsyncSession, *, event_id: int, gateway: PaymentGateway,
                       now: datetime | None = None) -> Event:
    """Cancel an event: every hold and booking is voided (paid ones refunded), sales stop."""
    now = now or utcnow()
    event = await session.scalar(select(Event).where(Event.id == event_id).with_for_update()
                                 .execution_options(populate_existing=True))
    if event is None:
        raise not_found("Event")
    if event.status == EventStatus.CANCELLED:
        raise DomainError(ErrorCode.INVALID_STATE, "This event is already cancelled")
    active = (await session.scalars(
        select(Booking).where(Booking.event_id == event_id,
                              Booking.status.in_([BookingStatus.PENDING, BookingStatus.CONFIRMED]))
        .order_by(Booking.id).with_for_update())).all()
    for booking in active:
        await _void(session, booking, gateway, now)
    changed = []
    if event.is_seated:
        for booking in active:
            changed += await inventory.set_seats_status(session, booking_id=booking.id,
                                                        status=SeatStatus.AVAILABLE)
    await session.execute(
        update(WaitlistEntry)
        .where(WaitlistEntry.event_id == event_id,
               WaitlistEntry.status.in_([WaitlistStatus.WAITING, WaitlistStatus.OFFERED]))
        .values(status=WaitlistStatus.EXPIRED))
    event.status = EventStatus.CANCELLED
    event.available = event.capacity
    event.version += 1
    await webhooks.enqueue(session, webhooks.WebhookEvent.EVENT_CANCELLED,
                           webhooks.event_data(event.id, event.status, event.available), now=now)
    await session.flush()
    inventory.record_availability(session, event, changed)
    return event


# --- the waitlist's claim on returned places ---------------------------------------------

async def _close_offer(session: AsyncSession, booking: Booking, outcome: str) -> None:
    """A waitlist offer was confirmed, cancelled or lapsed: its entry moves on."""
    if booking.waitlist_offer:
        await session.execute(
            update(WaitlistEntry)
            .where(WaitlistEntry.offer_booking_id == booking.id,
                   WaitlistEntry.status == WaitlistStatus.OFFERED)
            .values(status=outcome))


async def _offer_to_waitlist(session: AsyncSession, *, event_id: int, holds: HoldTimes,
                             now: datetime) -> None:
    """Hand places that just came back to the oldest waiting entries they fit, as PENDING
    bookings held for them, in the transaction that returned them: nobody else can take
    them in between. Entries too big for what is free keep their place in the queue."""
    event = await session.scalar(select(Event).where(Event.id == event_id)
                                 .execution_options(populate_existing=True))
    assert event is not None
    available = event.available
    if event.status != EventStatus.ON_SALE or available == 0:
        return
    waiting = (await session.scalars(
        select(WaitlistEntry)
        .where(WaitlistEntry.event_id == event_id, WaitlistEntry.status == WaitlistStatus.WAITING,
               WaitlistEntry.quantity <= available)
        .order_by(WaitlistEntry.id).with_for_update())).all()
    chosen = [waiting[position] for position in inventory.waitlist_takes(available, [e.quantity for e in waiting])]
    if not chosen:
        return
    # The places came back in this transaction, which holds the event row: they are there.
    state = await inventory.take_places(session, event_id=event_id, quantity=sum(e.quantity for e in chosen))
    assert state is not None
    offers = await write_holds(session, event_id=event_id, price_cents=event.price_cents, currency=event.currency,
                               holders=[(entry.user_id, entry.quantity) for entry in chosen], now=now,
                               expires_at=now + timedelta(seconds=holds.offer_seconds), waitlist_offer=True)
    changed: list[tuple[int, str]] = []
    for entry, offer in zip(chosen, offers, strict=True):
        if event.is_seated:
            seats = await inventory.hold_best_seats(session, event_id=event_id, quantity=entry.quantity,
                                                    booking_id=offer.id)
            assert len(seats) == entry.quantity  # seats are taken holding the event row, like us
            offer.seat_ids = sorted(seat_id for seat_id, _ in seats)
            offer.total_cents = sum(price for _, price in seats)
            changed += [(seat_id, SeatStatus.HELD) for seat_id, _ in seats]
        entry.status = WaitlistStatus.OFFERED
        entry.offer_booking_id = offer.id
        await record_booking_update(session, offer, WaitlistStatus.OFFERED)
    inventory.record_availability(session, state, changed)
    await session.flush()


# --- expiry -------------------------------------------------------------------------------

async def expire_lapsed(session: AsyncSession, *, holds: HoldTimes, now: datetime | None = None,
                        event_id: int | None = None, limit: int = EXPIRY_BATCH) -> int:
    """Mark lapsed holds EXPIRED and return their places, to the waitlist first. Claims them
    with SKIP LOCKED, so any number of sweepers (and reserves clearing the way) can run at once."""
    now = now or utcnow()
    query = select(Booking).where(inventory.lapsed_hold(now))
    if event_id is not None:
        query = query.where(Booking.event_id == event_id)
    lapsed = (await session.scalars(
        query.order_by(Booking.id).limit(limit).with_for_update(skip_locked=True)
        .execution_options(populate_existing=True))).all()
    places_by_event: dict[int, int] = defaultdict(int)
    seats_by_event: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for booking in lapsed:
        booking.status = BookingStatus.EXPIRED
        booking.version += 1
        places_by_event[booking.event_id] += booking.quantity
        if booking.seat_ids is not None:
            seats_by_event[booking.event_id] += await inventory.set_seats_status(
                session, booking_id=booking.id, status=SeatStatus.AVAILABLE)
        await _close_offer(session, booking, WaitlistStatus.EXPIRED)
        await record_booking_update(session, booking, BookingStatus.EXPIRED)
    for lapsed_event_id in sorted(places_by_event):
        state = await inventory.return_places(session, event_id=lapsed_event_id,
                                              quantity=places_by_event[lapsed_event_id])
        inventory.record_availability(session, state, seats_by_event[lapsed_event_id])
        await _offer_to_waitlist(session, event_id=lapsed_event_id, holds=holds, now=now)
    await session.flush()
    return len(lapsed)


# --- reads --------------------------------------------------------------------------------

async def active_holds(session: AsyncSession, now: datetime | None = None) -> tuple[int, int]:
    """(holds, places) of PENDING bookings that have not lapsed."""
    holds, places = (await session.execute(
        select(func.count(), func.coalesce(func.sum(Booking.quantity), 0))
        .where(Booking.status == BookingStatus.PENDING, Booking.expires_at > (now or utcnow())))).one()
    return int(holds), int(places)


async def get_booking(session: AsyncSession, *, caller: Identity, booking_id: int) -> Booking | None:
    booking = await session.get(Booking, booking_id)
    if booking is None or (booking.user_id != caller.user_id and not caller.is_admin):
        return None
    return booking


@dataclass(frozen=True)
class BookingPage:
    items: list[Booking]
    total_count: int
    has_next_page: bool


def encode_booking_cursor(booking: Booking) -> str:
    return str(booking.id)


async def list_bookings(session: AsyncSession, *, user_id: int, status: str | None, first: int,
                        after: str | None) -> BookingPage:
    """A user's bookings, newest first."""
    if not 0 <= first <= 100:
        raise invalid_input("first", "first must be between 0 and 100")
    query = select(Booking).where(Booking.user_id == user_id)
    if status is not None:
        query = query.where(Booking.status == status)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    if after is not None:
        try:  # in range too: a number past BIGINT would reach the database as an error
            query = query.where(Booking.id < parse_id(after, "after"))
        except DomainError:
            raise invalid_input("after", "Not a cursor from this list") from None
    rows = list((await session.scalars(query.order_by(Booking.id.desc()).limit(first + 1))).all())
    return BookingPage(items=rows[:first], total_count=total or 0, has_next_page=len(rows) > first)


async def tickets_of(session: AsyncSession, booking_ids: list[int]) -> dict[int, list[Ticket]]:
    rows = await session.scalars(select(Ticket).where(Ticket.booking_id.in_(booking_ids)).order_by(Ticket.id))
    grouped: dict[int, list[Ticket]] = defaultdict(list)
    for ticket in rows:
        grouped[ticket.booking_id].append(ticket)
    return grouped


async def find_tickets(session: AsyncSession, code: str) -> dict[str, Any] | None:
    """What a ticket code admits: by the booking's code all its tickets, by one ticket's code
    that ticket. None for unknown codes and for bookings that are not CONFIRMED."""
    if not TICKET_CODE.fullmatch(code):  # not one of ours: no need to ask the database
        return None
    booking = await session.scalar(select(Booking).where(Booking.ticket_code == code))
    if booking is not None:
        tickets = (await tickets_of(session, [booking.id])).get(booking.id, [])
    else:
        ticket = await session.scalar(select(Ticket).where(Ticket.code == code))
        booking = await session.get(Booking, ticket.booking_id) if ticket else None
        tickets = [ticket] if ticket else []
    if booking is None or booking.status != BookingStatus.CONFIRMED:
        return None
    event = await session.get(Event, booking.event_id)
    assert event is not None
    venue = await session.get(Venue, event.venue_id)
    holder = await session.get(User, booking.user_id)
    seat_ids = [t.seat_id for t in tickets if t.seat_id is not None]
    seats = {seat.id: seat for seat in await session.scalars(select(Seat).where(Seat.id.in_(seat_ids)))}
    timezone = _zone(venue.timezone if venue else "UTC")
    return {
        "reference": booking.reference,
        "eventId": str(event.id),
        "event": event.name,
        "venue": venue.name if venue else None,
        "address": f"{venue.address}, {venue.city}" if venue else None,
        "startsAt": event.starts_at.isoformat(),
        # The venue's own clock, as the people going there read it.
        "startsAtLocal": event.starts_at.astimezone(timezone).isoformat(),
        "timezone": timezone.key,
        "holder": holder.name if holder else None,
        "currency": booking.currency,
        "status": booking.status,
        "tickets": [{"code": t.code, "status": t.status,
                     "seat": seats[t.seat_id].label if t.seat_id in seats else None,
                     "priceCents": seats[t.seat_id].price_cents if t.seat_id in seats
                     else booking.total_cents // booking.quantity,
                     "checkedInAt": t.checked_in_at.isoformat() if t.checked_in_at else None} for t in tickets],
    }


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # a name this machine's tz database lacks
        return ZoneInfo("UTC")
