"""Webhooks end to end: a real receiver under uvicorn verifies every delivery with the
`standardwebhooks` package; the outbox is transactional (a rollback sends nothing, a crash
loses nothing); failures are retried with the same webhook-id; 410 disables; a slow endpoint
holds up nobody; private targets are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.errors import DomainError, ErrorCode
from app.models import DeliveryStatus, Role, WebhookDelivery, WebhookEndpoint, utcnow
from app.services import bookings, catalogue, webhooks
from app.services.payments import MockGateway
from app.settings import Settings
from tests.conftest import GraphQLClient, base_settings, running_app
from tests.factories import identity_of, make_event, make_user, token_for
from tests.servers import MESSAGE_TIMEOUT, serve_in_process

CREATE = """mutation($input: WebhookInput!) { createWebhook(input: $input) {
  webhook { id url events active } secret errors { code field message } } }"""
HOOKS = """{ webhooks { id active disabledReason deliveries { totalCount edges { node {
  id eventType status attempts lastResponseStatus nextAttemptAt createdAt messageId } } } } }"""
RESERVE = """mutation($id: ID!) { reserveSeats(input: {eventId: $id, quantity: 1}) {
  booking { id reference } errors { code } } }"""
CONFIRM = """mutation($id: ID!) { confirmBooking(input: {bookingId: $id, paymentToken: "tok_visa"}) {
  booking { id } errors { code } } }"""
HOLDS = bookings.HoldTimes(reservation_seconds=300, offer_seconds=600)


@pytest.fixture
def backend() -> str:
    return "postgres"  # SKIP LOCKED and concurrent instances; one test also runs on SQLite


@pytest.fixture
def settings(database_url: str) -> Settings:
    return base_settings(database_url=database_url, webhook_allow_private_targets=True,
                         webhook_retry_seconds="0.05,0.05,0.05,0.05,0.05", webhook_poll_interval_seconds=0.05,
                         webhook_timeout_seconds=2.0)


@dataclass
class Receiver:
    """An HTTP endpoint that answers `statuses` in turn (then 200) and keeps what arrived."""

    statuses: list[int] = field(default_factory=list)
    hold: asyncio.Event | None = None  # set: requests wait for it before answering
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        async with self.arrived:
            self.received.append((dict(request.headers), body))
            self.arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(MESSAGE_TIMEOUT * 2), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every body, checked with the reference implementation partners use."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serve_in_process(Starlette(routes=[Route("/hook", found.handle, methods=["POST"])])) as address:
        found.url = f"http://{address}/hook"
        yield found
        if found.hold is not None:
            found.hold.set()


async def create_hook(gql: GraphQLClient, token: str, url: str, *events: str) -> tuple[str, str]:
    created = (await gql(CREATE, {"input": {"url": url, "events": list(events)}}, token))["createWebhook"]
    assert created["errors"] == [], created
    return created["webhook"]["id"], created["secret"]


async def deliveries(sessionmaker: async_sessionmaker[AsyncSession]) -> list[WebhookDelivery]:
    async with sessionmaker() as session:
        return list((await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_failed_deliveries_are_retried_with_the_same_id_until_they_arrive(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    admin = token_for(await make_user(sessionmaker, Role.ADMIN), settings)
    buyer = token_for(await make_user(sessionmaker), settings)
    event = await make_event(sessionmaker, capacity=5)
    async with running_app(settings) as (_, gql):
        hook_id, secret = await create_hook(gql, admin, receiver.url, "BOOKING_CONFIRMED")
        assert secret.startswith("whsec_")
        booking = (await gql(RESERVE, {"id": str(event.id)}, buyer))["reserveSeats"]["booking"]
        assert (await gql(CONFIRM, {"id": booking["id"]}, buyer))["confirmBooking"]["errors"] == []
        await receiver.wait_for(3)
        bodies = receiver.verified(secret)
        assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 1
        assert [body["type"] for body in bodies] == ["booking.confirmed"] * 3
        assert bodies[0]["data"] == {
            "id": booking["id"], "reference": booking["reference"], "status": "CONFIRMED", "eventId": str(event.id),
            "quantity": 1, "totalCents": 2500, "currency": "USD", "externalReference": None}
        for _ in range(200):  # the third attempt's outcome is recorded just after it answers
            [hook] = (await gql(HOOKS, token=admin))["webhooks"]
            [log] = [edge["node"] for edge in hook["deliveries"]["edges"]]
            if log["status"] == "DELIVERED":
                break
            await asyncio.sleep(0.05)
        assert hook["id"] == hook_id and hook["active"] is True
        assert log["status"] == "DELIVERED" and log["attempts"] == 3 and log["lastResponseStatus"] == 200
        assert log["messageId"] == receiver.received[0][0]["webhook-id"] and log["nextAttemptAt"] is None
        # Resend: once more, same id and body.
        resend = "mutation($id: ID!) { resendWebhookDelivery(id: $id) { webhook { id } errors { code } } }"
        assert (await gql(resend, {"id": log["id"]}, admin))["resendWebhookDelivery"]["errors"] == []
        await receiver.wait_for(4)
        assert receiver.received[3][0]["webhook-id"] == log["messageId"]
        assert receiver.received[3][1] == receiver.received[0][1]


async def test_a_rollback_writes_and_sends_nothing(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    owner = await make_user(sessionmaker, Role.ADMIN)
    event = await make_event(sessionmaker, capacity=5, publish=False)
    async with sessionmaker() as session:
        await webhooks.create_endpoint(session, owner_id=owner.id, url="http://127.0.0.1:9/x",
                                       events=[webhooks.WebhookEvent.EVENT_ON_SALE], description=None,
                                       allow_private=True)
        await session.commit()
    async with sessionmaker() as session:
        await catalogue.publish_event(session, event_id=event.id)
        # Written with the change, in its transaction...
        assert await session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
        await session.rollback()
    assert await deliveries(sessionmaker) == []  # ...and gone with it
    async with sessionmaker() as session:
        await catalogue.publish_event(session, event_id=event.id)
        await session.commit()
    [delivery] = await deliveries(sessionmaker)
    assert delivery.event_type == "event.on_sale" and json.loads(delivery.body)["data"] == {
        "id": str(event.id), "status": "ON_SALE", "availableSeats": 5}


async def test_a_delivery_survives_the_instance_that_claimed_it(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    """Committed, then claimed by an instance that dies before sending: another instance,
    started afterwards, delivers it once the claim's lease has run out."""
    settings = replace(settings, webhook_timeout_seconds=0.5)  # a lease of 6 s
    owner = await make_user(sessionmaker, Role.ADMIN)
    async with sessionmaker() as session:
        _, secret = await webhooks.create_endpoint(session, owner_id=owner.id, url=receiver.url,
                                                   events=[webhooks.WebhookEvent.EVENT_ON_SALE], description=None,
                                                   allow_private=True)
        await session.commit()
    event = await make_event(sessionmaker, capacity=5)  # publishing writes the delivery, durably
    async with sessionmaker() as session:  # the instance that claims it and dies
        [claimed] = await webhooks.claim_due(session, now=utcnow(), lease=timedelta(seconds=6), limit=10)
        await session.commit()
    async with running_app(settings):
        await receiver.wait_for(1)
    [body] = receiver.verified(secret)
    assert body["type"] == "event.on_sale" and body["data"]["id"] == str(event.id)
    assert receiver.received[0][0]["webhook-id"] == claimed.message_id


async def test_410_disables_the_endpoint(settings: Settings, engine: Any,
                                         sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    receiver.statuses = [410]
    admin_user = await make_user(sessionmaker, Role.ADMIN)
    admin = token_for(admin_user, settings)
    async with running_app(settings) as (_, gql):
        await create_hook(gql, admin, receiver.url, "EVENT_ON_SALE")
        await make_event(sessionmaker, capacity=5)
        await receiver.wait_for(1)
        for _ in range(200):
            [hook] = (await gql(HOOKS, token=admin))["webhooks"]
            if not hook["active"]:
                break
            await asyncio.sleep(0.05)
        assert hook["active"] is False and "410" in hook["disabledReason"]
        assert hook["deliveries"]["edges"][0]["node"]["status"] == "FAILED"
        await make_event(sessionmaker, capacity=5)  # a disabled endpoint gets nothing more
    assert len(await deliveries(sessionmaker)) == 1 and len(receiver.received) == 1


async def test_a_slow_endpoint_does_not_delay_a_reserve(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    receiver.hold = asyncio.Event()
    settings = replace(settings, webhook_timeout_seconds=60.0)
    admin = token_for(await make_user(sessionmaker, Role.ADMIN), settings)
    buyer = token_for(await make_user(sessionmaker), settings)
    last_place = await make_event(sessionmaker, capacity=1)
    other = await make_event(sessionmaker, capacity=5)
    async with running_app(settings) as (_, gql):
        await create_hook(gql, admin, receiver.url, "EVENT_SOLD_OUT")
        sold = (await gql(RESERVE, {"id": str(last_place.id)}, buyer))["reserveSeats"]
        assert sold["errors"] == []
        await receiver.wait_for(1)  # the sold-out delivery is being sent, and its endpoint hangs
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            answer = (await gql(RESERVE, {"id": str(other.id)}, buyer))["reserveSeats"]
        assert answer["errors"] == [] and not receiver.hold.is_set()
        receiver.hold.set()
    assert json.loads(receiver.received[0][1])["data"] == {"id": str(last_place.id), "status": "SOLD_OUT",
                                                          "availableSeats": 0}


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x", "http://10.1.2.3/x",
                                 "http://[::1]/x", "http://169.254.169.254/latest", "ftp://93.184.216.34/x",
                                 "http://192.168.0.1/x", "http://[::ffff:127.0.0.1]/x", "not a url", "http://[",
                                 "http://93.184.216.34:99999/"])
async def test_private_targets_are_refused(settings: Settings, engine: Any,
                                           sessionmaker: async_sessionmaker[AsyncSession], url: str) -> None:
    settings = replace(settings, webhook_allow_private_targets=False)
    admin = token_for(await make_user(sessionmaker, Role.ADMIN), settings)
    async with running_app(settings) as (_, gql):
        refused = (await gql.raw(CREATE, {"input": {"url": url, "events": ["EVENT_ON_SALE"]}}, admin))
        assert refused["data"]["createWebhook"]["errors"][0]["field"] == "url", refused


async def test_a_target_is_checked_again_at_every_attempt(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    owner = await make_user(sessionmaker, Role.ADMIN)
    async with sessionmaker() as session:  # registered while allowed (its DNS pointed elsewhere, say)
        await webhooks.create_endpoint(session, owner_id=owner.id, url=receiver.url,
                                       events=[webhooks.WebhookEvent.EVENT_ON_SALE], description=None,
                                       allow_private=True)
        await session.commit()
    await make_event(sessionmaker, capacity=5)
    async with running_app(replace(settings, webhook_allow_private_targets=False)):
        for _ in range(200):
            [delivery] = await deliveries(sessionmaker)
            if delivery.status == DeliveryStatus.FAILED:
                break
            await asyncio.sleep(0.05)
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 6  # the schedule ran out
    assert "private" in (delivery.last_error or "") and receiver.received == []


async def test_a_partner_hears_only_of_its_own_bookings(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    admin = token_for(await make_user(sessionmaker, Role.ADMIN), settings)
    person = await make_user(sessionmaker)
    event = await make_event(sessionmaker, capacity=5)
    create_key = """mutation { createApiKey(input: {name: "P", scopes: [WEBHOOKS_MANAGE, BOOKINGS_WRITE]}) {
      secret errors { code } } }"""
    async with running_app(replace(settings, webhook_poll_interval_seconds=3600)) as (_, gql):
        partner = (await gql(create_key, token=admin))["createApiKey"]["secret"]
        await create_hook(gql, partner, receiver.url, "BOOKING_CONFIRMED", "BOOKING_CANCELLED")
        async with sessionmaker() as session:  # somebody else's booking
            held = await bookings.reserve(session, user_id=person.id, event_id=event.id, quantity=1, seat_ids=None,
                                          idempotency_key=None, expected_version=None, holds=HOLDS)
            await bookings.confirm(session, caller=identity_of(person), booking_id=held.id, payment_token="tok",
                                   payment_method="card", idempotency_key=None, gateway=MockGateway())
            await session.commit()
        assert await deliveries(sessionmaker) == []
        reserve = """mutation($id: ID!) { reserveSeats(input: {eventId: $id, quantity: 1, idempotencyKey: "k1",
          externalReference: "ext-1"}) { booking { id } errors { code } } }"""
        mine = (await gql(reserve, {"id": str(event.id)}, partner))["reserveSeats"]["booking"]
        cancel = """mutation($id: ID!) { cancelBooking(input: {bookingId: $id, idempotencyKey: "k2"}) {
          errors { code } } }"""
        assert (await gql(cancel, {"id": mine["id"]}, partner))["cancelBooking"]["errors"] == []
    [delivery] = await deliveries(sessionmaker)
    data = json.loads(delivery.body)
    assert data["type"] == "booking.cancelled" and data["data"]["externalReference"] == "ext-1"
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 1



async def test_deleting_a_webhook_never_fails_a_change_in_flight(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """A transaction that saw the endpoint active still writes its deliveries after a
    concurrent delete commits: the endpoint is only marked deleted, never gone from under it."""
    owner = await make_user(sessionmaker, Role.ADMIN)
    first, second, third = [await make_event(sessionmaker, capacity=5, publish=False) for _ in range(3)]
    async with sessionmaker() as session:
        endpoint, _ = await webhooks.create_endpoint(session, owner_id=owner.id, url="http://127.0.0.1:9/x",
                                                     events=[webhooks.WebhookEvent.EVENT_ON_SALE], description=None,
                                                     allow_private=True)
        await session.commit()
    async with asyncio.timeout(MESSAGE_TIMEOUT), sessionmaker() as change:
        await catalogue.publish_event(change, event_id=first.id)  # reads the endpoints: active
        async with sessionmaker() as deleting:
            await webhooks.delete_endpoint(deleting, caller=identity_of(owner), endpoint_id=endpoint.id)
            await deleting.commit()
        await catalogue.publish_event(change, event_id=second.id)
        await change.commit()
    async with sessionmaker() as session:
        await catalogue.publish_event(session, event_id=third.id)  # a new transaction: nobody subscribed
        await session.commit()
        assert await webhooks.list_endpoints(session, caller=identity_of(owner)) == []
    assert [json.loads(d.body)["data"]["id"] for d in await deliveries(sessionmaker)] == [str(first.id),
                                                                                          str(second.id)]


async def test_an_endpoint_failing_for_a_day_is_disabled_and_says_why(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    owner = await make_user(sessionmaker, Role.ADMIN)
    async with sessionmaker() as session:
        await webhooks.create_endpoint(session, owner_id=owner.id, url="http://127.0.0.1:9/x",
                                       events=[webhooks.WebhookEvent.EVENT_ON_SALE], description=None,
                                       allow_private=True)
        await session.commit()
    await make_event(sessionmaker, capacity=5)
    policy = webhooks.RetryPolicy(delays=(3600.0,) * 100, disable_after=timedelta(days=1))
    start = utcnow()
    for hours in (0, 12, 24):  # an injected clock: attempts at these times all fail
        now = start + timedelta(hours=hours, seconds=1)
        async with sessionmaker() as session:
            [attempt] = await webhooks.claim_due(session, now=now, lease=timedelta(seconds=30), limit=10)
            await webhooks.record_attempt(session, attempt, response_status=500, error=None, policy=policy, now=now)
            await session.commit()
        async with sessionmaker() as session:
            [endpoint] = await webhooks.list_endpoints(session, caller=identity_of(owner))
        assert endpoint.active is (hours < 24)
    assert endpoint.disabled_reason is not None and "HTTP 500" in endpoint.disabled_reason
    [delivery] = await deliveries(sessionmaker)
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3


ROTATE = """mutation($id: ID!, $overlap: Int) { rotateWebhookSecret(id: $id, overlapSeconds: $overlap) {
  webhook { id previousSecretExpiresAt } secret errors { code field } } }"""


async def test_a_rotated_secret_signs_alongside_the_new_one_until_the_overlap_ends(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver) -> None:
    admin = token_for(await make_user(sessionmaker, Role.ADMIN), settings)
    buyer = token_for(await make_user(sessionmaker), settings)
    event = await make_event(sessionmaker, capacity=5)

    async def book_and_receive(count: int) -> tuple[dict[str, str], bytes]:
        booking = (await gql(RESERVE, {"id": str(event.id)}, buyer))["reserveSeats"]["booking"]
        assert (await gql(CONFIRM, {"id": booking["id"]}, buyer))["confirmBooking"]["errors"] == []
        await receiver.wait_for(count)
        return receiver.received[count - 1]

    def verifies(secret: str, message: tuple[dict[str, str], bytes]) -> bool:
        try:
            Webhook(secret).verify(message[1], message[0])
        except WebhookVerificationError:
            return False
        return True

    async with running_app(settings) as (_, gql):
        hook_id, old = await create_hook(gql, admin, receiver.url, "BOOKING_CONFIRMED")
        before = await book_and_receive(1)
        rotated = (await gql(ROTATE, {"id": hook_id}, admin))["rotateWebhookSecret"]  # the default overlap: a day
        assert rotated["errors"] == [] and rotated["secret"].startswith("whsec_") and rotated["secret"] != old
        assert rotated["webhook"]["previousSecretExpiresAt"] is not None
        new = rotated["secret"]
        assert verifies(old, before) and not verifies(new, before)
        during = await book_and_receive(2)
        assert verifies(old, during) and verifies(new, during)  # receivers on either secret accept it
        headers, body = during
        assert headers["webhook-signature"] == " ".join(  # both, the new one first
            webhooks.sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body.decode())
            for secret in (new, old))
        # No overlap: only the newest secret signs, and the ones before it stop at once.
        rotated = (await gql(ROTATE, {"id": hook_id, "overlap": 0}, admin))["rotateWebhookSecret"]
        assert rotated["errors"] == [] and rotated["webhook"]["previousSecretExpiresAt"] is None
        after = await book_and_receive(3)
        assert verifies(rotated["secret"], after) and not verifies(new, after) and not verifies(old, after)
        assert " " not in after[0]["webhook-signature"]
        too_long = (await gql(ROTATE, {"id": hook_id, "overlap": 7 * 86400 + 1}, admin))["rotateWebhookSecret"]
        assert too_long["errors"] == [{"code": "INVALID_INPUT", "field": "overlapSeconds"}]


async def test_the_previous_secret_stops_signing_when_its_overlap_ends(
        settings: Settings, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    owner = await make_user(sessionmaker, Role.ADMIN)
    start = utcnow()
    async with sessionmaker() as session:
        endpoint, old = await webhooks.create_endpoint(session, owner_id=owner.id, url="http://127.0.0.1:9/x",
                                                       events=[webhooks.WebhookEvent.EVENT_ON_SALE],
                                                       description=None, allow_private=True)
        _, new = await webhooks.rotate_secret(session, caller=identity_of(owner), endpoint_id=endpoint.id,
                                              overlap_seconds=3600, now=start)
        await session.commit()
    await make_event(sessionmaker, capacity=5)  # on sale: one delivery
    lease = timedelta(seconds=30)
    async with sessionmaker() as session:  # an injected clock: within the hour, then past it
        [within] = await webhooks.claim_due(session, now=start + timedelta(minutes=59), lease=lease, limit=10)
        [past] = await webhooks.claim_due(session, now=start + timedelta(minutes=61), lease=lease, limit=10)
    assert within.secrets == (new, old) and past.secrets == (new,)
    async with sessionmaker() as session:  # somebody else's webhook is not theirs to rotate
        stranger = await make_user(sessionmaker)
        with pytest.raises(DomainError) as refused:
            await webhooks.rotate_secret(session, caller=identity_of(stranger), endpoint_id=endpoint.id,
                                         overlap_seconds=0)
    assert refused.value.code == ErrorCode.NOT_FOUND
