from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false

from app.models.base import Base, BigId, Money, UTCDateTime, utcnow


class BookingStatus:
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class PaymentKind:
    CHARGE = "CHARGE"
    REFUND = "REFUND"


class PaymentStatus:
    CAPTURED = "CAPTURED"
    REFUNDED = "REFUNDED"


class TicketStatus:
    VALID = "VALID"
    VOID = "VOID"
    CHECKED_IN = "CHECKED_IN"


class Booking(Base):
    """A hold (PENDING, until `expires_at`) or a purchase (CONFIRMED) of places."""

    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # The sweeper's and the reserve path's look-up of expired holds.
        Index("ix_bookings_event_status_expires", "event_id", "status", "expires_at"),
        Index("ix_bookings_status_expires", "status", "expires_at"),
        Index("ix_bookings_user_created", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reference: Mapped[str] = mapped_column(String(16), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    status: Mapped[str] = mapped_column(String(16), default=BookingStatus.PENDING)
    quantity: Mapped[int] = mapped_column(Integer)
    # The seats this booking holds or held (history survives release); None for GA.
    seat_ids: Mapped[list[int] | None] = mapped_column(JSON)
    total_cents: Mapped[int] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ticket_code: Mapped[str | None] = mapped_column(String(43), unique=True)
    # Held for a waitlist entry: its outcome moves the entry on (only then is it looked up).
    waitlist_offer: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    version: Mapped[int] = mapped_column(Integer, default=1)
    external_reference: Mapped[str | None] = mapped_column(String(200))  # a partner's own order id


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        # Backstop for "never charges twice": one charge and one refund per booking.
        UniqueConstraint("booking_id", "kind", name="uq_payments_booking_kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"))
    kind: Mapped[str] = mapped_column(String(16))
    transaction_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    amount_cents: Mapped[int] = mapped_column(Money)
    method: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Ticket(Base):
    """One admission. `code` is a JWS signed by a ticket key (app/services/tickets.py): a
    scanner verifies it offline; the row says whether it is still valid or already used."""

    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_voided_at", "voided_at"),)  # revokedTickets(since)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    code: Mapped[str] = mapped_column(String(512), unique=True)
    seat_id: Mapped[int | None] = mapped_column(ForeignKey("seats.id"))
    status: Mapped[str] = mapped_column(String(16), default=TicketStatus.VALID)
    # The first scan (earliest scannedAt): set from NULL by exactly one scan (app/services/checkin.py).
    checked_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    checked_in_gate: Mapped[str | None] = mapped_column(String(100))
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """A caller's idempotency key, claimed before the operation runs in the same
    transaction, so two concurrent requests with one key have one effect."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(200))
    operation: Mapped[str] = mapped_column(String(32))
    request_hash: Mapped[str] = mapped_column(String(64))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
