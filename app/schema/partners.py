"""Partner types: API keys and webhooks (contract: API.md, "Partners")."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from app import models
from app.schema.common import Connection, UserError
from app.services import webhooks
from app.services.webhooks import WebhookEvent


@strawberry.enum
class ApiScope(Enum):
    CATALOGUE_READ = models.ApiScope.CATALOGUE_READ
    BOOKINGS_READ = models.ApiScope.BOOKINGS_READ
    BOOKINGS_WRITE = models.ApiScope.BOOKINGS_WRITE
    WEBHOOKS_MANAGE = models.ApiScope.WEBHOOKS_MANAGE
    CHECKIN = models.ApiScope.CHECKIN


@strawberry.enum(description="On the wire (a delivery's `type`): booking.confirmed, event.sold_out, ...")
class WebhookEventType(Enum):
    BOOKING_CONFIRMED = WebhookEvent.BOOKING_CONFIRMED
    BOOKING_CANCELLED = WebhookEvent.BOOKING_CANCELLED
    BOOKING_EXPIRED = WebhookEvent.BOOKING_EXPIRED
    WAITLIST_OFFERED = WebhookEvent.WAITLIST_OFFERED
    EVENT_SOLD_OUT = WebhookEvent.EVENT_SOLD_OUT
    EVENT_ON_SALE = WebhookEvent.EVENT_ON_SALE
    EVENT_CANCELLED = WebhookEvent.EVENT_CANCELLED


@strawberry.enum
class DeliveryStatus(Enum):
    PENDING = models.DeliveryStatus.PENDING
    DELIVERED = models.DeliveryStatus.DELIVERED
    FAILED = models.DeliveryStatus.FAILED


@strawberry.input
class ApiKeyInput:
    name: str
    scopes: list[ApiScope]
    expires_at: datetime | None = None
    rate_limit_per_minute: int | None = strawberry.field(
        default=None, description="Operations per minute; the server's default when not given")


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="Identifies the key (bme_<prefix>_...); not secret")
    scopes: list[ApiScope]
    created_at: datetime
    last_used_at: datetime | None = strawberry.field(description="To the minute")
    expires_at: datetime | None
    revoked_at: datetime | None
    rate_limit_per_minute: int

    @classmethod
    def from_model(cls, key: models.ApiKey) -> ApiKey:
        return cls(id=strawberry.ID(str(key.id)), name=key.name, prefix=key.prefix,
                   scopes=[ApiScope(scope) for scope in key.scopes], created_at=key.created_at,
                   last_used_at=key.last_used_at, expires_at=key.expires_at, revoked_at=key.revoked_at,
                   rate_limit_per_minute=key.rate_limit_per_minute)


@strawberry.type
class ApiKeyPayload:
    api_key: ApiKey | None = None
    secret: str | None = strawberry.field(
        default=None, description="The whole key (bme_...), given only by createApiKey and rotateApiKey")
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class WebhookInput:
    url: str
    events: list[WebhookEventType]
    description: str | None = None


@strawberry.type
class WebhookDelivery:
    id: strawberry.ID
    event_type: WebhookEventType
    status: DeliveryStatus
    attempts: int
    last_response_status: int | None
    next_attempt_at: datetime | None
    created_at: datetime
    message_id: str = strawberry.field(description="The webhook-id header of every attempt")

    @classmethod
    def from_model(cls, delivery: models.WebhookDelivery) -> WebhookDelivery:
        return cls(id=strawberry.ID(str(delivery.id)), event_type=WebhookEventType(delivery.event_type),
                   status=DeliveryStatus(delivery.status), attempts=delivery.attempts,
                   last_response_status=delivery.last_response_status, next_attempt_at=delivery.next_attempt_at,
                   created_at=delivery.created_at, message_id=delivery.message_id)


@strawberry.type
class Webhook:
    id: strawberry.ID
    url: str
    events: list[WebhookEventType]
    description: str | None
    active: bool
    disabled_reason: str | None = strawberry.field(description="Why it stopped (410 Gone, or failing for a day)")
    created_at: datetime
    previous_secret_expires_at: datetime | None = strawberry.field(
        description="Set after rotateWebhookSecret: until then deliveries carry the previous secret's signature too")

    @classmethod
    def from_model(cls, endpoint: models.WebhookEndpoint) -> Webhook:
        return cls(id=strawberry.ID(str(endpoint.id)), url=endpoint.url,
                   events=[WebhookEventType(event) for event in endpoint.events], description=endpoint.description,
                   active=endpoint.active, disabled_reason=endpoint.disabled_reason, created_at=endpoint.created_at,
                   previous_secret_expires_at=endpoint.previous_secret_expires_at)

    @strawberry.field(description="Its delivery log, newest first.")
    async def deliveries(self, info: strawberry.Info, first: int = 20,
                         after: str | None = None) -> Connection[WebhookDelivery]:
        async with info.context.read_session() as session:
            page = await webhooks.list_deliveries(session, endpoint_id=int(self.id), first=first, after=after)
        return Connection.of([(str(d.id), WebhookDelivery.from_model(d)) for d in page.items],
                             total_count=page.total_count, has_next_page=page.has_next_page)


@strawberry.type
class WebhookPayload:
    webhook: Webhook | None = None
    secret: str | None = strawberry.field(
        default=None, description="The signing secret (whsec_...), given only by createWebhook and rotateWebhookSecret")
    errors: list[UserError] = strawberry.field(default_factory=list)
