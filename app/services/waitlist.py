"""The waitlist of sold-out events: joining, leaving, and where one stands.

Handing returned places to waiting entries happens where places come back, in
`bookings` (cancel and expiry), inside the transaction that returns them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, invalid_input, not_found
from app.models import Event, EventStatus, WaitlistEntry, WaitlistStatus, utcnow
from app.services import bookings, inventory, queue
from app.services.accounts import Identity
from app.services.payments import PaymentGateway


async def join(session: AsyncSession, *, user_id: int, event_id: int, quantity: int,
               now: datetime | None = None) -> WaitlistEntry:
    """Queue for places that cannot be had now."""
    now = now or utcnow()
    # The event row lock orders joining against places coming back: either the returned
    # places are visible here (and joining is refused), or this entry is there to get them.
    event = await session.scalar(select(Event).where(Event.id == event_id).with_for_update()
                                 .execution_options(populate_existing=True))
    if event is None or event.status == EventStatus.DRAFT:
        raise not_found("Event")
    if event.status not in (EventStatus.ON_SALE, EventStatus.SOLD_OUT):
        raise DomainError(ErrorCode.EVENT_NOT_ON_SALE, "This event is not on sale")
    if event.waiting_room:
        await queue.require_admission(session, event_id=event_id, user_id=user_id, now=now, sold_out_ok=True)
    if quantity < 1:
        raise invalid_input("quantity", "quantity must be at least 1")
    if quantity > event.max_tickets_per_booking:
        raise DomainError(ErrorCode.LIMIT_EXCEEDED, f"At most {event.max_tickets_per_booking} tickets per booking",
                          field="quantity")
    if quantity > event.capacity:  # no cancellation could ever free that many
        raise DomainError(ErrorCode.LIMIT_EXCEEDED, f"This event has only {event.capacity} places",
                          field="quantity")
    active = await session.scalar(select(WaitlistEntry.id).where(
        WaitlistEntry.user_id == user_id, WaitlistEntry.event_id == event_id,
        WaitlistEntry.status.in_([WaitlistStatus.WAITING, WaitlistStatus.OFFERED])))
    if active is not None:
        raise DomainError(ErrorCode.ALREADY_WAITLISTED, "You are already on the waitlist of this event")
    free = await inventory.free_places(session, event, now)
    if free >= quantity:
        raise DomainError(ErrorCode.WAITLIST_NOT_ALLOWED, f"{free} places are free: reserve them instead",
                          available_seats=free)
    entry = WaitlistEntry(user_id=user_id, event_id=event_id, quantity=quantity,
                          status=WaitlistStatus.WAITING, created_at=now)
    session.add(entry)
    await session.flush()
    return entry


async def leave(session: AsyncSession, *, caller: Identity, entry_id: int, gateway: PaymentGateway,
                holds: bookings.HoldTimes) -> WaitlistEntry:
    """Leave the queue; leaving with an offer open declines it, and its places move on."""
    entry = await session.scalar(select(WaitlistEntry).where(WaitlistEntry.id == entry_id)
                                 .with_for_update().execution_options(populate_existing=True))
    if entry is None or entry.user_id != caller.user_id:
        raise not_found("Waitlist entry")
    if entry.status == WaitlistStatus.OFFERED and entry.offer_booking_id is not None:
        await bookings.cancel(session, caller=caller, booking_id=entry.offer_booking_id,
                              idempotency_key=None, gateway=gateway, holds=holds)
        await session.refresh(entry)
    if entry.status not in (WaitlistStatus.WAITING, WaitlistStatus.LEFT):
        raise DomainError(ErrorCode.INVALID_STATE, f"This entry is already {entry.status.lower()}")
    entry.status = WaitlistStatus.LEFT
    await session.flush()
    return entry


async def entries_of(session: AsyncSession, *, user_id: int) -> list[WaitlistEntry]:
    return list((await session.scalars(
        select(WaitlistEntry).where(WaitlistEntry.user_id == user_id).order_by(WaitlistEntry.id.desc()))).all())


async def positions(session: AsyncSession, entries: list[WaitlistEntry]) -> dict[int, int]:
    """1-based place in the queue of each WAITING entry (entries ahead of it still waiting)."""
    result = {}
    for entry in entries:
        if entry.status == WaitlistStatus.WAITING:
            ahead = await session.scalar(select(func.count()).select_from(WaitlistEntry).where(
                WaitlistEntry.event_id == entry.event_id, WaitlistEntry.status == WaitlistStatus.WAITING,
                WaitlistEntry.id < entry.id))
            result[entry.id] = int(ahead or 0) + 1
    return result
