from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigId, UTCDateTime, utcnow


class WaitlistStatus:
    WAITING = "WAITING"
    OFFERED = "OFFERED"
    CONVERTED = "CONVERTED"
    EXPIRED = "EXPIRED"
    LEFT = "LEFT"


ACTIVE_ENTRY = text("status IN ('WAITING', 'OFFERED')")


class WaitlistEntry(Base):
    """A user waiting for places of a sold-out event. Returned places become a PENDING booking
    held for the oldest entry they fit (`offer_booking_id`, status OFFERED)."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # The allocation order: oldest waiting entry of an event first.
        Index("ix_waitlist_entries_event_status", "event_id", "status", "id"),
        # One active entry per user and event.
        Index("uq_waitlist_entries_active", "user_id", "event_id", unique=True,
              postgresql_where=ACTIVE_ENTRY, sqlite_where=ACTIVE_ENTRY),
        Index("ix_waitlist_entries_offer", "offer_booking_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=WaitlistStatus.WAITING)
    offer_booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
