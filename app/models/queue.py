"""The waiting room of a high-demand event: its settings and admission clock, and one queue
ticket per buyer. PostgreSQL holds the order, so it survives any restart."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigId, UTCDateTime


class QueueStatus:
    WAITING = "WAITING"
    ADMITTED = "ADMITTED"
    LAPSED = "LAPSED"
    LEFT = "LEFT"
    SOLD_OUT = "SOLD_OUT"


class WaitingRoom(Base):
    """One per event with a waiting room (`events.waiting_room` marks the event). The
    admission job locks this row, not the event's, so admitting never waits on buyers."""

    __tablename__ = "waiting_rooms"
    __table_args__ = (
        CheckConstraint("admit_per_minute > 0", name="rate_positive"),
        CheckConstraint("admission_seconds > 0", name="admission_positive"),
    )

    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    admit_per_minute: Mapped[int] = mapped_column(Integer)
    admission_seconds: Mapped[int] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # How far admissions have been granted: each admission moves it on by 60/admit_per_minute
    # seconds, so any number of admitters together admit at the rate, never faster.
    admitted_through: Mapped[datetime] = mapped_column(UTCDateTime)


class QueueTicket(Base):
    """A buyer's place in an event's queue. Order: `rank`, then id. Buyers who join before the
    sales start get a random rank; later joiners `LATE_RANK` + their join time in µs, so they
    come after all early ones, in join order."""

    __tablename__ = "queue_tickets"
    __table_args__ = (
        UniqueConstraint("event_id", "user_id", name="uq_queue_tickets_event_user"),
        Index("ix_queue_tickets_order", "event_id", "status", "rank", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default=QueueStatus.WAITING)
    rank: Mapped[int] = mapped_column(BigInteger)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    admitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    admitted_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
