"""Sales reporting for admins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import not_found
from app.models import Booking, BookingStatus, Event, WaitlistEntry, WaitlistStatus, utcnow
from app.services import checkin


@dataclass(frozen=True)
class EventSales:
    event_id: int
    capacity: int
    places_sold: int
    places_held: int
    places_free: int
    revenue_cents: int
    currency: str
    holds_created: int
    holds_confirmed: int
    cancellations: int
    expired_holds: int
    waitlist_length: int
    checked_in: int

    @property
    def conversion_rate(self) -> float:
        """Share of holds that became bookings (confirmed, even if cancelled later)."""
        return self.holds_confirmed / self.holds_created if self.holds_created else 0.0


async def event_sales(session: AsyncSession, *, event_id: int, now: datetime | None = None) -> EventSales:
    now = now or utcnow()
    event = await session.get(Event, event_id)
    if event is None:
        raise not_found("Event")
    live_hold = (Booking.status == BookingStatus.PENDING) & (Booking.expires_at > now)

    def places(condition: object) -> object:
        return func.coalesce(func.sum(case((condition, Booking.quantity), else_=0)), 0)

    def count(condition: object) -> object:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    row = (await session.execute(
        select(
            places(Booking.status == BookingStatus.CONFIRMED),
            places(live_hold),
            func.coalesce(func.sum(case((Booking.status == BookingStatus.CONFIRMED, Booking.total_cents),
                                        else_=0)), 0),
            func.count(),
            count(Booking.confirmed_at.is_not(None)),
            count(Booking.status == BookingStatus.CANCELLED),
            count((Booking.status == BookingStatus.EXPIRED) | (
                (Booking.status == BookingStatus.PENDING) & (Booking.expires_at <= now))),
        ).where(Booking.event_id == event_id))).one()
    sold, held, revenue, created, confirmed, cancelled, expired = (int(value) for value in row)
    waiting = await session.scalar(select(func.count()).select_from(WaitlistEntry).where(
        WaitlistEntry.event_id == event_id, WaitlistEntry.status == WaitlistStatus.WAITING))
    return EventSales(
        event_id=event_id, capacity=event.capacity, places_sold=sold, places_held=held,
        places_free=event.capacity - sold - held, revenue_cents=revenue, currency=event.currency,
        holds_created=created, holds_confirmed=confirmed, cancellations=cancelled, expired_holds=expired,
        waitlist_length=int(waiting or 0),
        checked_in=(await checkin.counts(session, event_id=event_id)).checked_in)
