"""Partners: API keys (a hash of the secret, found by its prefix) and webhooks (endpoints and
the durable outbox of their deliveries)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import true

from app.models.base import Base, BigId, UTCDateTime, utcnow


class ApiScope:
    CATALOGUE_READ = "CATALOGUE_READ"
    BOOKINGS_READ = "BOOKINGS_READ"
    BOOKINGS_WRITE = "BOOKINGS_WRITE"
    WEBHOOKS_MANAGE = "WEBHOOKS_MANAGE"
    CHECKIN = "CHECKIN"
    ALL = (CATALOGUE_READ, BOOKINGS_READ, BOOKINGS_WRITE, WEBHOOKS_MANAGE, CHECKIN)


class ApiKey(Base):
    """A partner's key. `user_id` is the key's own service account (role USER, no password):
    what it books belongs to that account, so every per-user rule (ownership, caps,
    idempotency keys) applies to a partner unchanged."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of the whole key
    scopes: Mapped[list[str]] = mapped_column(JSON)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryStatus:
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)  # wire names: booking.confirmed, ...
    description: Mapped[str | None] = mapped_column(String(500))
    # Kept as given: signing needs the secret itself, not a hash of it.
    secret: Mapped[str] = mapped_column(String(100))
    # The secret before the last rotation: deliveries are signed with it too until it expires,
    # so receivers can switch secrets without dropping a message.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Deleting only marks the row: a booking transaction that read the endpoint as active may
    # still insert a delivery for it, and must not fail on the foreign key for that.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One message to one endpoint: written in the transaction of the change it reports, so it
    exists exactly when the change does. `message_id` is the webhook-id of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The delivery job's claim: due PENDING rows, oldest first.
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    event_type: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)  # the JSON sent, fixed at the change
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
