from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigId, UTCDateTime, utcnow


class TicketKeyStatus:
    ACTIVE = "ACTIVE"  # signs new tickets
    ROTATED = "ROTATED"  # signs nothing new; its tickets stay valid
    RETIRED = "RETIRED"  # its tickets are refused


ACTIVE_KEY = text("status = 'ACTIVE'")


class TicketKey(Base):
    """An Ed25519 key that signs ticket codes. The private key is PKCS#8 PEM, encrypted with
    TICKET_KEY_SECRET when that is set (see docs/reliability.md, "Ticket keys")."""

    __tablename__ = "ticket_keys"
    __table_args__ = (
        # At most one signing key: two first confirms creating one lazily meet here.
        Index("uq_ticket_keys_active", "status", unique=True, postgresql_where=ACTIVE_KEY, sqlite_where=ACTIVE_KEY),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kid: Mapped[str] = mapped_column(String(32), unique=True)
    private_key: Mapped[str] = mapped_column(Text)
    public_key: Mapped[str] = mapped_column(String(64))  # raw 32 bytes, base64url: the JWK's `x`
    status: Mapped[str] = mapped_column(String(16), default=TicketKeyStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CheckInScan(Base):
    """One scan that carried a nonce, and the answer it got: the same scan uploaded again
    (a scanner retrying after a network drop) gets that answer again."""

    __tablename__ = "checkin_scans"
    __table_args__ = (UniqueConstraint("ticket_id", "nonce", name="uq_checkin_scans_ticket_nonce"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    nonce: Mapped[str] = mapped_column(String(100))
    result: Mapped[str | None] = mapped_column(String(32))
    checked_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gate: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
