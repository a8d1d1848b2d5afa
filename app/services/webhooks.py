"""Webhooks for partners, on the Standard Webhooks specification (standardwebhooks.com).

Every change a partner may hear about writes its deliveries into `webhook_deliveries` in the
transaction of the change (`enqueue`): they exist exactly when the change does, survive a
crash or a Redis loss, and vanish with a rollback. The delivery job (app/jobs/webhooks.py)
claims due rows with SKIP LOCKED on every instance, sends outside any transaction, and
records the outcome here (`record_attempt`). The subscribed endpoints are read once per
transaction, and only when something happens that a webhook reports, so the reserve path
pays nothing unless an event sells out in it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, chosen_from, invalid_input, not_found, parse_id
from app.models import Booking, DeliveryStatus, Role, User, WebhookDelivery, WebhookEndpoint, utcnow
from app.services.accounts import Identity

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2000
MAX_DESCRIPTION_LENGTH = 500
MAX_ENDPOINTS_PER_OWNER = 20
RESOLVE_TIMEOUT = 5.0  # seconds
MAX_ROTATION_OVERLAP = timedelta(days=7)  # how long a rotated-out secret may keep signing


class WebhookEvent:
    """The event types, as they travel (`type` in the body)."""

    BOOKING_CONFIRMED = "booking.confirmed"
    BOOKING_CANCELLED = "booking.cancelled"
    BOOKING_EXPIRED = "booking.expired"
    WAITLIST_OFFERED = "waitlist.offered"
    EVENT_SOLD_OUT = "event.sold_out"
    EVENT_ON_SALE = "event.on_sale"
    EVENT_CANCELLED = "event.cancelled"
    ALL = (BOOKING_CONFIRMED, BOOKING_CANCELLED, BOOKING_EXPIRED, WAITLIST_OFFERED, EVENT_SOLD_OUT,
           EVENT_ON_SALE, EVENT_CANCELLED)


# --- signing ------------------------------------------------------------------------------

def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The webhook-signature header: `v1,` and the base64 HMAC-SHA256 of "id.timestamp.body",
    keyed with the base64-decoded part of the secret after `whsec_`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: int, body: str) -> str:
    """One `v1,` signature per secret, space-separated (Standard Webhooks): a receiver accepts
    the message if any of them verifies with its secret."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_)


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> tuple[str, ...]:
    """The current secret, then the previous one while its overlap lasts."""
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret is not None and expires is not None and now < expires:
        return endpoint.secret, endpoint.previous_secret
    return (endpoint.secret,)


# --- targets ------------------------------------------------------------------------------

class TargetRefused(Exception):
    """The URL names (or resolves to) an address we do not send to."""


async def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse anything but http(s) URLs whose host resolves only to public addresses (unless
    `allow_private`): no requests into the operator's own network. Checked after DNS
    resolution, at registration and again before every attempt, since DNS may change."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed IPv6 literal or port
        raise TargetRefused("Not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise TargetRefused("Give an http:// or https:// URL")
    if allow_private:
        return
    try:
        resolved = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port), RESOLVE_TIMEOUT)
    except (OSError, ValueError, TimeoutError) as error:
        raise TargetRefused(f"Cannot resolve {host}: {error or 'timed out'}") from None
    for *_, sockaddr in resolved:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            raise TargetRefused(f"{host} resolves to a private or reserved address ({address})")


# --- endpoints ----------------------------------------------------------------------------

async def create_endpoint(session: AsyncSession, *, owner_id: int, url: str, events: Sequence[str],
                          description: str | None, allow_private: bool) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (shown this once)."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise invalid_input("url", f"url must be at most {MAX_URL_LENGTH} characters")
    try:
        await check_target(url, allow_private=allow_private)
    except TargetRefused as refused:
        raise invalid_input("url", str(refused)) from None
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        raise invalid_input("description", f"description must be at most {MAX_DESCRIPTION_LENGTH} characters")
    checked = chosen_from("events", events, WebhookEvent.ALL, "event types")
    owned = await session.scalar(select(func.count()).select_from(WebhookEndpoint)
                                 .where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.deleted_at.is_(None)))
    if (owned or 0) >= MAX_ENDPOINTS_PER_OWNER:
        raise DomainError(ErrorCode.LIMIT_EXCEEDED, f"At most {MAX_ENDPOINTS_PER_OWNER} webhooks per owner")
    secret = new_secret()
    endpoint = WebhookEndpoint(owner_id=owner_id, url=url, events=checked, description=description,
                               secret=secret, active=True, created_at=utcnow())
    session.add(endpoint)
    await session.flush()
    return endpoint, secret


def _visible(caller: Identity) -> Any:
    """Admins (people, never keys) see every endpoint; others their own. Deleted ones: nobody."""
    alive = WebhookEndpoint.deleted_at.is_(None)
    return alive if caller.is_admin else alive & (WebhookEndpoint.owner_id == caller.user_id)


async def list_endpoints(session: AsyncSession, *, caller: Identity) -> list[WebhookEndpoint]:
    return list((await session.scalars(select(WebhookEndpoint).where(_visible(caller))
                                       .order_by(WebhookEndpoint.id))).all())


async def _endpoint_of(session: AsyncSession, caller: Identity, endpoint_id: int) -> WebhookEndpoint:
    # FOR NO KEY UPDATE: booking transactions writing deliveries hold KEY SHARE on the row
    # (the foreign key), and must neither wait for this nor make it wait.
    endpoint = await session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                                  _visible(caller)).with_for_update(key_share=True))
    if endpoint is None:
        raise not_found("Webhook")
    return endpoint


async def delete_endpoint(session: AsyncSession, *, caller: Identity, endpoint_id: int,
                          now: datetime | None = None) -> WebhookEndpoint:
    """Stop an endpoint for good and hide it; what it still had to send is dropped."""
    endpoint = await _endpoint_of(session, caller, endpoint_id)
    endpoint.deleted_at = now or utcnow()
    await _disable(session, endpoint, "Deleted")
    await session.flush()
    return endpoint


async def resend(session: AsyncSession, *, caller: Identity, delivery_id: int,
                 now: datetime | None = None) -> WebhookEndpoint:
    """Send one delivery again, soon, with its original webhook-id and body."""
    delivery = await session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise not_found("Webhook delivery")
    endpoint = await _endpoint_of(session, caller, delivery.endpoint_id)
    if not endpoint.active:
        raise DomainError(ErrorCode.INVALID_STATE, "This webhook is disabled")
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = now or utcnow()
    await session.flush()
    return endpoint


async def rotate_secret(session: AsyncSession, *, caller: Identity, endpoint_id: int, overlap_seconds: int,
                        now: datetime | None = None) -> tuple[WebhookEndpoint, str]:
    """A new signing secret (shown this once). The current one keeps signing too for
    `overlap_seconds`, so receivers can switch without losing a delivery; a secret rotated
    out earlier stops now (only the last one overlaps)."""
    if not 0 <= overlap_seconds <= MAX_ROTATION_OVERLAP.total_seconds():
        raise invalid_input("overlapSeconds", f"overlapSeconds must be between 0 and "
                                              f"{int(MAX_ROTATION_OVERLAP.total_seconds())}")
    endpoint = await _endpoint_of(session, caller, endpoint_id)
    secret = new_secret()
    if overlap_seconds:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = (now or utcnow()) + timedelta(seconds=overlap_seconds)
    else:
        endpoint.previous_secret = endpoint.previous_secret_expires_at = None
    endpoint.secret = secret
    await session.flush()
    return endpoint, secret


@dataclass(frozen=True)
class DeliveryPage:
    items: list[WebhookDelivery]
    total_count: int
    has_next_page: bool


async def list_deliveries(session: AsyncSession, *, endpoint_id: int, first: int, after: str | None) -> DeliveryPage:
    """An endpoint's deliveries, newest first."""
    if not 0 <= first <= 100:
        raise invalid_input("first", "first must be between 0 and 100")
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    if after is not None:
        try:
            query = query.where(WebhookDelivery.id < parse_id(after, "after"))
        except DomainError:
            raise invalid_input("after", "Not a cursor from this list") from None
    rows = list((await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(first + 1))).all())
    return DeliveryPage(items=rows[:first], total_count=total or 0, has_next_page=len(rows) > first)


# --- the outbox ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Subscriber:
    endpoint_id: int
    owner_id: int
    owner_is_admin: bool
    events: frozenset[str]


async def _subscribers(session: AsyncSession) -> list[_Subscriber]:
    """The active endpoints, read once per transaction (and only if it reports something)."""
    transaction = session.sync_session.get_transaction()
    cached: tuple[Any, list[_Subscriber]] | None = session.info.get("webhook_subscribers")
    if cached is None or cached[0] is not transaction:
        rows = await session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.owner_id, User.role, WebhookEndpoint.events)
            .join(User, User.id == WebhookEndpoint.owner_id).where(WebhookEndpoint.active))
        cached = session.info["webhook_subscribers"] = (transaction, [
            _Subscriber(endpoint_id, owner_id, role == Role.ADMIN, frozenset(events))
            for endpoint_id, owner_id, role, events in rows])
    return cached[1]


async def enqueue(session: AsyncSession, event_type: str, data: dict[str, Any], *, owner_id: int | None = None,
                  now: datetime | None = None) -> None:
    """Write a delivery for each active endpoint subscribed to `event_type`, in the caller's
    transaction. `owner_id` set (a booking's owner): only that owner's endpoints and admins'
    hear of it, so a partner never learns of others' bookings."""
    now = now or utcnow()
    targets = [s for s in await _subscribers(session) if event_type in s.events
               and (owner_id is None or s.owner_is_admin or s.owner_id == owner_id)]
    if not targets:
        return
    body = json.dumps({"type": event_type, "timestamp": now.isoformat(), "data": data}, separators=(",", ":"))
    session.add_all(WebhookDelivery(endpoint_id=target.endpoint_id, message_id=f"msg_{secrets.token_urlsafe(18)}",
                                    event_type=event_type, body=body, status=DeliveryStatus.PENDING, attempts=0,
                                    next_attempt_at=now, created_at=now) for target in targets)


def booking_data(booking: Booking) -> dict[str, Any]:
    return {"id": str(booking.id), "reference": booking.reference, "status": booking.status,
            "eventId": str(booking.event_id), "quantity": booking.quantity, "totalCents": booking.total_cents,
            "currency": booking.currency, "externalReference": booking.external_reference}


def event_data(event_id: int, status: str, available: int) -> dict[str, Any]:
    return {"id": str(event_id), "status": status, "availableSeats": available}


# --- delivery -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """A claimed delivery, with what sending it needs (read before the claim commits)."""

    delivery_id: int
    endpoint_id: int
    message_id: str
    body: str
    url: str
    secrets: tuple[str, ...]  # to sign with, newest first
    attempt: int


async def claim_due(session: AsyncSession, *, now: datetime, lease: timedelta, limit: int) -> list[Attempt]:
    """Claim up to `limit` due deliveries of active endpoints for one attempt each: SKIP LOCKED
    so instances take different ones, and leased (`next_attempt_at` moved past the send's
    timeout) so that, should this process die mid-send, another instance retries after it."""
    if limit <= 0:
        return []
    rows = (await session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now,
               WebhookEndpoint.active)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
        .with_for_update(of=WebhookDelivery, skip_locked=True))).all()
    attempts = []
    for delivery, endpoint in rows:
        delivery.attempts += 1
        delivery.next_attempt_at = now + lease
        attempts.append(Attempt(delivery.id, delivery.endpoint_id, delivery.message_id, delivery.body, endpoint.url,
                                signing_secrets(endpoint, now), delivery.attempts))
    await session.flush()
    return attempts


@dataclass(frozen=True)
class RetryPolicy:
    delays: tuple[float, ...]  # seconds after each failed attempt; past the last, FAILED
    disable_after: timedelta  # an endpoint failing this long is disabled


def next_delay(policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds until the attempt after `attempt` (1-based), jittered by up to ±20% so that
    an endpoint's backlog does not come back all at once; None when there is none."""
    if attempt > len(policy.delays):
        return None
    return policy.delays[attempt - 1] * random.uniform(0.8, 1.2)


async def record_attempt(session: AsyncSession, attempt: Attempt, *, response_status: int | None,
                         error: str | None, policy: RetryPolicy, now: datetime | None = None) -> str:
    """Record one attempt's outcome: 2xx delivered; 410 disables the endpoint; anything else
    (another status, a timeout, a refused target) is retried, until the schedule ends."""
    now = now or utcnow()
    delivery = await session.get(WebhookDelivery, attempt.delivery_id, with_for_update=True)
    endpoint = await session.get(WebhookEndpoint, attempt.endpoint_id, with_for_update={"key_share": True})
    if delivery is None or endpoint is None or endpoint.deleted_at is not None:  # deleted meanwhile
        return "dropped"
    delivery.last_response_status = response_status
    delivery.last_error = error[:500] if error else None
    if response_status is not None and 200 <= response_status < 300:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        endpoint.failing_since = None
        outcome = "delivered"
    elif response_status == 410:
        await _disable(session, endpoint, "The endpoint answered 410 Gone")
        outcome = "gone"
    else:
        endpoint.failing_since = endpoint.failing_since or now
        delay = next_delay(policy, attempt.attempt)
        if now - endpoint.failing_since >= policy.disable_after:
            await _disable(session, endpoint, f"Failing since {endpoint.failing_since.isoformat()}: "
                                              f"{error or f'HTTP {response_status}'}"[:500])
        elif delay is None:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        outcome = "failed"
    await session.flush()
    return outcome


async def _disable(session: AsyncSession, endpoint: WebhookEndpoint, reason: str) -> None:
    """Stop sending to an endpoint; its owner sees why (`disabledReason`) in its list."""
    endpoint.active = False
    endpoint.disabled_reason = reason
    await session.execute(update(WebhookDelivery)
                          .where(WebhookDelivery.endpoint_id == endpoint.id,
                                 WebhookDelivery.status == DeliveryStatus.PENDING)
                          .values(status=DeliveryStatus.FAILED, next_attempt_at=None))
