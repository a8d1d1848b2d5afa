from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigId, Money, UTCDateTime, utcnow


class EventStatus:
    DRAFT = "DRAFT"
    SCHEDULED = "SCHEDULED"  # published, on sale from sales_start_at
    ON_SALE = "ON_SALE"
    SOLD_OUT = "SOLD_OUT"
    CANCELLED = "CANCELLED"


class SeatStatus:
    AVAILABLE = "AVAILABLE"
    HELD = "HELD"
    BOOKED = "BOOKED"


class Venue(Base):
    __tablename__ = "venues"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(500))
    city: Mapped[str] = mapped_column(String(100), index=True)
    country: Mapped[str] = mapped_column(String(100))
    capacity: Mapped[int] = mapped_column(Integer)
    # IANA name: tickets show the event's time as the venue's clocks do.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """An event and its inventory counter.

    `available` is the number of places free for sale right now; every reserve, release and
    expiry moves it in the same statement that bumps `version`, so the row is the single
    point of truth for general admission and a consistent summary for seated events.
    """

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("available >= 0 AND available <= capacity", name="available_in_range"),
        CheckConstraint("capacity > 0", name="capacity_positive"),
        Index("ix_events_status_starts_at", "status", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    venue_id: Mapped[int] = mapped_column(ForeignKey("venues.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(50), index=True)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    currency: Mapped[str] = mapped_column(String(3))
    max_tickets_per_booking: Mapped[int] = mapped_column(Integer)
    # What one buyer may hold and have bought of this event at once, across bookings.
    max_tickets_per_user: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)
    available: Mapped[int] = mapped_column(Integer)
    # General admission price; for seated events the cheapest section's price.
    price_cents: Mapped[int] = mapped_column(Money)
    # Seated events: [{"name", "priceCents", "rows": [{"label", "seats"}]}]; None for GA.
    seat_map: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.DRAFT)
    sales_start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set while the event has a waiting room (app/models/queue.py): only admitted buyers
    # reserve, so the reserve path's unchecked fast path must not serve it.
    waiting_room: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def is_seated(self) -> bool:
        return self.seat_map is not None


class Seat(Base):
    """One reservable seat. `booking_id` is the one booking holding it (HELD or BOOKED):
    a single column, so a seat can never be in two active bookings."""

    __tablename__ = "seats"
    __table_args__ = (
        UniqueConstraint("event_id", "section", "row", "number", name="uq_seats_position"),
        CheckConstraint(
            "(status = 'AVAILABLE') = (booking_id IS NULL)", name="holder_matches_status"
        ),
        Index("ix_seats_event_status", "event_id", "status", "id"),
        Index("ix_seats_booking", "booking_id"),
    )

    # Seats are inserted in preference order (section, row, number), so ordering by id
    # is both the best-available order and the fixed lock order.
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    section: Mapped[str] = mapped_column(String(100))
    row: Mapped[str] = mapped_column(String(20))
    number: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default=SeatStatus.AVAILABLE)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"))

    @property
    def label(self) -> str:
        return f"{self.section} {self.row}{self.number}"
