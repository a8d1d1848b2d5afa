"""Who may do what: every root field of the schema x {anonymous, owner, other user, admin,
a partner's API key with each scope}, checked against one table of expected outcomes.

The table is checked against the schema itself, so a new query, mutation or subscription
without a row fails here. Besides the outcome, every cell checks that a refusal changed
nothing in the database, and that an anonymous caller or another user never sees the
owner's secrets (booking references, ticket codes, payment transaction ids, email).
SQLite only: authorization does not depend on the database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.models import ApiScope, Base, Booking, Payment, Role, Ticket, WebhookDelivery, utcnow
from app.schema.relay import to_global_id
from app.schema.schema import create_schema
from app.services import accounts, apikeys, bookings, catalogue, queue, waitlist, webhooks
from app.services.payments import MockGateway
from app.settings import Settings
from app.web import create_app
from tests.conftest import GraphQLClient, base_settings
from tests.factories import identity_of, token_for
from tests.servers import MESSAGE_TIMEOUT, http_client, init_connection, serve_in_process

HOLDS = bookings.HoldTimes(reservation_seconds=300, offer_seconds=600)
ROLES = ("anonymous", "owner", "other", "admin")
KEY_ROLES = tuple(f"key:{scope}" for scope in ApiScope.ALL)  # a partner's key holding just that scope
OWNER_PASSWORD = "owner password 123"

# Outcomes: "ok", "null" (a query answered null), "empty" (an empty list or connection), or an
# error code (a mutation's `errors`, or a query's top-level error code).
OK, NULL, EMPTY = "ok", "null", "empty"
UNAUTHENTICATED, FORBIDDEN, NOT_FOUND = "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@dataclass
class World:
    """One owner with a hold, a paid booking, a waitlist entry and a queue ticket; another user; an admin."""

    tokens: dict[str, str | None]
    owner_email: str
    owner_refresh: str
    venue_id: int
    event_id: int  # on sale, the owner's bookings are here
    draft_id: int
    waitlisted_id: int  # sold out; the owner waits for it
    full_id: int  # sold out; nobody waits for it yet
    queued_id: int  # on sale with a waiting room; the owner is in its queue
    pending_id: int
    confirmed_id: int
    entry_id: int
    secrets: list[str]  # what only the owner (and admins) may ever see
    spare_key_id: int  # an API key for the admin to rotate and revoke
    webhook_id: int  # owned by the WEBHOOKS_MANAGE key
    delivery_id: int  # of that webhook
    owner_id: int = 0


_worlds = itertools.count(1)


async def build_world(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> World:
    """Everything in one transaction (SQLite commits are what a test here costs)."""
    number = next(_worlds)
    gateway = MockGateway()
    starts_at = utcnow() + timedelta(days=30)
    async with sessionmaker() as session:
        admin, other, filler = [
            await accounts.create_user(session, email=f"{name}{number}@example.com", password="x" * 8, name=name,
                                       role=Role.ADMIN if name == "admin" else Role.USER, settings=settings)
            for name in ("admin", "other", "filler")]
        signed_in = await accounts.register(session, email=f"owner{number}@example.com", password=OWNER_PASSWORD,
                                            name="Owner", settings=settings)
        owner = signed_in.user
        venue = await catalogue.create_venue(session, name="Hall", address="1 Street", city="Lisbon",
                                             country="Portugal", capacity=1000)
        event, draft, waitlisted, full = [
            await catalogue.create_event(
                session, venue_id=venue.id, name="Concert", description=None, category="concert",
                starts_at=starts_at, ends_at=starts_at + timedelta(hours=3), currency="USD",
                max_tickets_per_booking=10, capacity=capacity, price_cents=2500, seat_map=None)
            for capacity in (10, 10, 1, 1)]
        keys = {}
        for scope in (*ApiScope.ALL, None):
            key, secret = await apikeys.create_key(session, name=f"partner {scope}", scopes=[scope or "CHECKIN"],
                                                   expires_at=None, rate_limit_per_minute=None, default_rate_limit=600,
                                                   created_by=admin.id)
            key.last_used_at = utcnow()  # so that using it in the next minute writes nothing
            keys[f"key:{scope}" if scope else "spare"] = (key, secret)
        manager = keys[f"key:{ApiScope.WEBHOOKS_MANAGE}"][0]
        hook, _ = await webhooks.create_endpoint(session, owner_id=manager.user_id, url="https://93.184.216.34/hook",
                                                 events=[webhooks.WebhookEvent.EVENT_ON_SALE], description=None,
                                                 allow_private=False)
        for published in (event, waitlisted, full):
            await catalogue.publish_event(session, event_id=published.id)
        await session.flush()

        async def reserve(user_id: int, event_id: int, quantity: int) -> Booking:
            return await bookings.reserve(session, user_id=user_id, event_id=event_id, quantity=quantity,
                                          seat_ids=None, idempotency_key=None, expected_version=None,
                                          holds=HOLDS)

        for sold_out in (waitlisted, full):
            await reserve(filler.id, sold_out.id, 1)
        pending = await reserve(owner.id, event.id, 1)
        paid = await reserve(owner.id, event.id, 2)
        paid, _ = await bookings.confirm(session, caller=identity_of(owner), booking_id=paid.id,
                                         payment_token="tok_visa", payment_method="card", idempotency_key=None,
                                         gateway=gateway)
        entry = await waitlist.join(session, user_id=owner.id, event_id=waitlisted.id, quantity=1)
        queued = await catalogue.create_event(
            session, venue_id=venue.id, name="Big night", description=None, category="concert",
            starts_at=starts_at, ends_at=starts_at + timedelta(hours=3), currency="USD",
            max_tickets_per_booking=10, capacity=10, price_cents=2500, seat_map=None)
        await queue.set_waiting_room(session, event_id=queued.id, config=queue.RoomConfig(admit_per_minute=10))
        await catalogue.publish_event(session, event_id=queued.id)
        await queue.join(session, user_id=owner.id, event_id=queued.id)
        secrets = [pending.reference, paid.reference, owner.email, str(paid.ticket_code)]
        secrets += list((await session.scalars(select(Ticket.code).where(Ticket.booking_id == paid.id))).all())
        secrets += list((await session.scalars(
            select(Payment.transaction_id).where(Payment.booking_id == paid.id))).all())
        delivery_id = await session.scalar(select(WebhookDelivery.id).limit(1))
        await session.commit()
    return World(
        tokens={"anonymous": None, "owner": signed_in.access_token, "other": token_for(other, settings),
                "admin": token_for(admin, settings),
                **{role: secret for role, (_, secret) in keys.items() if role != "spare"}},
        owner_email=owner.email, owner_refresh=signed_in.refresh_token, venue_id=venue.id,
        event_id=event.id, draft_id=draft.id, waitlisted_id=waitlisted.id, full_id=full.id, queued_id=queued.id,
        pending_id=pending.id, confirmed_id=paid.id, entry_id=entry.id, secrets=secrets,
        spare_key_id=keys["spare"][0].id, webhook_id=hook.id, delivery_id=delivery_id or 0, owner_id=owner.id)


BOOKING = "id reference status user { email } ticketUrl tickets { code url } event { id }"
WAITLIST_ENTRY = "id status quantity position offer { id reference } event { id }"
ERRORS = "errors { code message }"
STARTS, ENDS = ((utcnow() + timedelta(days=days)).isoformat() for days in (60, 61))


@dataclass(frozen=True)
class Case:
    name: str
    field: str  # the root field this case exercises
    document: str
    variables: Callable[[World, str], dict[str, Any]]
    expected: tuple[str, str, str, str]  # anonymous, owner, other, admin


def no_variables(world: World, role: str) -> dict[str, Any]:
    return {}


ADMIN_ONLY = (UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, OK)
SIGNED_IN = (UNAUTHENTICATED, OK, OK, OK)
OWNER_ONLY = (UNAUTHENTICATED, OK, NOT_FOUND, NOT_FOUND)

CASES = [
    # --- queries ---
    Case("me", "me", "{ me { id email role } }", no_variables, (NULL, OK, OK, OK)),
    Case("event on sale", "event", "query($id: ID!) { event(id: $id) { id name availableSeats } }",
         lambda w, r: {"id": str(w.event_id)}, (OK, OK, OK, OK)),
    Case("event draft", "event", "query($id: ID!) { event(id: $id) { id name } }",
         lambda w, r: {"id": str(w.draft_id)}, (NULL, NULL, NULL, OK)),
    Case("events", "events", "{ events(first: 50) { totalCount edges { node { id } } } }", no_variables,
         (OK, OK, OK, OK)),
    Case("eventSales", "eventSales",
         "query($id: ID!) { eventSales(eventId: $id) { placesSold placesHeld revenueCents } }",
         lambda w, r: {"id": str(w.event_id)}, ADMIN_ONLY),
    Case("venue", "venue", "query($id: ID!) { venue(id: $id) { id name } }",
         lambda w, r: {"id": str(w.venue_id)}, (OK, OK, OK, OK)),
    Case("booking pending", "booking", f"query($id: ID!) {{ booking(id: $id) {{ {BOOKING} }} }}",
         lambda w, r: {"id": str(w.pending_id)}, (NULL, OK, NULL, OK)),
    Case("booking confirmed", "booking", f"query($id: ID!) {{ booking(id: $id) {{ {BOOKING} }} }}",
         lambda w, r: {"id": str(w.confirmed_id)}, (NULL, OK, NULL, OK)),
    Case("node: booking", "node", f"query($id: ID!) {{ node(id: $id) {{ ... on Booking {{ {BOOKING} }} }} }}",
         lambda w, r: {"id": to_global_id("Booking", str(w.confirmed_id))}, (NULL, OK, NULL, OK)),
    Case("node: event draft", "node", "query($id: ID!) { node(id: $id) { ... on Event { id name } } }",
         lambda w, r: {"id": to_global_id("Event", str(w.draft_id))}, (NULL, NULL, NULL, OK)),
    Case("node: event on sale", "node", "query($id: ID!) { node(id: $id) { ... on Event { id name } } }",
         lambda w, r: {"id": to_global_id("Event", str(w.event_id))}, (OK, OK, OK, OK)),
    Case("myBookings", "myBookings",
         f"{{ myBookings(first: 100) {{ totalCount edges {{ cursor node {{ {BOOKING} }} }} }} }}",
         no_variables, (EMPTY, OK, EMPTY, EMPTY)),
    Case("myWaitlist", "myWaitlist", f"{{ myWaitlist {{ {WAITLIST_ENTRY} }} }}", no_variables,
         (EMPTY, OK, EMPTY, EMPTY)),
    # --- accounts: credentials are bearer secrets, whoever presents them ---
    Case("register", "register",
         f"""mutation($input: RegisterInput!) {{ register(input: $input) {{
           accessToken user {{ id role }} {ERRORS} }} }}""",
         lambda w, r: {"input": {"email": f"new-{r}@example.com", "password": "long enough", "name": "N"}},
         (OK, OK, OK, OK)),
    Case("login", "login",
         f"""mutation($input: LoginInput!) {{ login(input: $input) {{ accessToken user {{ id }} {ERRORS} }} }}""",
         lambda w, r: {"input": {"email": w.owner_email, "password": OWNER_PASSWORD}}, (OK, OK, OK, OK)),
    Case("refreshToken", "refreshToken",
         f"mutation($t: String!) {{ refreshToken(refreshToken: $t) {{ accessToken user {{ id }} {ERRORS} }} }}",
         lambda w, r: {"t": w.owner_refresh}, (OK, OK, OK, OK)),
    Case("logout", "logout", f"mutation($t: String!) {{ logout(refreshToken: $t) {{ ok {ERRORS} }} }}",
         lambda w, r: {"t": w.owner_refresh}, (OK, OK, OK, OK)),
    # --- catalogue writes: admins only ---
    Case("createVenue", "createVenue",
         f"""mutation($input: VenueInput!) {{ createVenue(input: $input) {{ venue {{ id }} {ERRORS} }} }}""",
         lambda w, r: {"input": {"name": "V", "address": "A", "city": "C", "country": "X", "capacity": 10}},
         ADMIN_ONLY),
    Case("createEvent", "createEvent",
         f"""mutation($input: EventInput!) {{ createEvent(input: $input) {{ event {{ id }} {ERRORS} }} }}""",
         lambda w, r: {"input": {"venueId": str(w.venue_id), "name": "E", "category": "c", "startsAt": STARTS,
                                 "endsAt": ENDS, "capacity": 5, "priceCents": 100}},
         ADMIN_ONLY),
    Case("updateEvent", "updateEvent",
         f"""mutation($id: ID!) {{ updateEvent(id: $id, input: {{name: "Renamed"}}) {{
           event {{ id name }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.event_id)}, ADMIN_ONLY),
    Case("publishEvent", "publishEvent",
         f"mutation($id: ID!) {{ publishEvent(id: $id) {{ event {{ id status }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.draft_id)}, ADMIN_ONLY),
    Case("cancelEvent", "cancelEvent",
         f"mutation($id: ID!) {{ cancelEvent(id: $id) {{ event {{ id status }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.event_id)}, ADMIN_ONLY),
    Case("expireReservations", "expireReservations",
         f"mutation {{ expireReservations {{ expired {ERRORS} }} }}", no_variables, ADMIN_ONLY),
    # --- bookings: nobody touches another user's ---
    Case("reserveSeats", "reserveSeats",
         f"""mutation($id: ID!) {{ reserveSeats(input: {{eventId: $id, quantity: 1}}) {{
           booking {{ id status event {{ id }} }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.event_id)}, SIGNED_IN),
    Case("confirmBooking", "confirmBooking",
         f"""mutation($id: ID!) {{ confirmBooking(input: {{bookingId: $id, paymentToken: "tok_visa"}}) {{
           booking {{ {BOOKING} }} payment {{ id transactionId }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.pending_id)}, OWNER_ONLY),
    Case("cancelBooking pending", "cancelBooking",
         f"""mutation($id: ID!) {{ cancelBooking(input: {{bookingId: $id}}) {{
           booking {{ {BOOKING} }} refund {{ id transactionId }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.pending_id)}, (UNAUTHENTICATED, OK, NOT_FOUND, OK)),
    Case("cancelBooking confirmed", "cancelBooking",
         f"""mutation($id: ID!) {{ cancelBooking(input: {{bookingId: $id}}) {{
           booking {{ {BOOKING} }} refund {{ id transactionId }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.confirmed_id)}, (UNAUTHENTICATED, OK, NOT_FOUND, OK)),
    # --- waitlist ---
    Case("joinWaitlist", "joinWaitlist",
         f"""mutation($id: ID!) {{ joinWaitlist(input: {{eventId: $id, quantity: 1}}) {{
           entry {{ {WAITLIST_ENTRY} }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.full_id)}, SIGNED_IN),
    Case("leaveWaitlist", "leaveWaitlist",
         f"mutation($id: ID!) {{ leaveWaitlist(id: $id) {{ entry {{ {WAITLIST_ENTRY} }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.entry_id)}, OWNER_ONLY),
    # --- waiting room: one's own ticket; admins set the room ---
    Case("myQueueTicket", "myQueueTicket", "query($id: ID!) { myQueueTicket(eventId: $id) { status position } }",
         lambda w, r: {"id": str(w.queued_id)}, (NULL, OK, NULL, NULL)),
    Case("joinQueue", "joinQueue",
         f"mutation($id: ID!) {{ joinQueue(eventId: $id) {{ ticket {{ status position }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.queued_id)}, SIGNED_IN),
    Case("leaveQueue", "leaveQueue",
         f"mutation($id: ID!) {{ leaveQueue(eventId: $id) {{ ticket {{ status }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.queued_id)}, OWNER_ONLY),
    Case("setWaitingRoom", "setWaitingRoom",
         f"""mutation($id: ID!) {{ setWaitingRoom(eventId: $id, input: {{admitPerMinute: 100}}) {{
           event {{ id waitingRoom {{ admitPerMinute queueLength }} }} {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.queued_id)}, ADMIN_ONLY),
    # --- partners: keys are the admins' business; webhooks an admin's or a managing key's ---
    Case("apiKeys", "apiKeys", "{ apiKeys { id prefix scopes lastUsedAt } }", no_variables, ADMIN_ONLY),
    Case("createApiKey", "createApiKey",
         f"""mutation {{ createApiKey(input: {{name: "P", scopes: [BOOKINGS_READ]}}) {{
           apiKey {{ id prefix }} secret {ERRORS} }} }}""", no_variables, ADMIN_ONLY),
    Case("rotateApiKey", "rotateApiKey",
         f"mutation($id: ID!) {{ rotateApiKey(id: $id) {{ apiKey {{ id prefix }} secret {ERRORS} }} }}",
         lambda w, r: {"id": str(w.spare_key_id)}, ADMIN_ONLY),
    Case("revokeApiKey", "revokeApiKey",
         f"mutation($id: ID!) {{ revokeApiKey(id: $id) {{ apiKey {{ id revokedAt }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.spare_key_id)}, ADMIN_ONLY),
    Case("webhooks", "webhooks",
         "{ webhooks { id url events active deliveries { totalCount edges { node { id status } } } } }",
         no_variables, ADMIN_ONLY),
    Case("createWebhook", "createWebhook",
         f"""mutation {{ createWebhook(input: {{url: "https://93.184.216.34/x", events: [BOOKING_CONFIRMED]}}) {{
           webhook {{ id }} secret {ERRORS} }} }}""", no_variables, ADMIN_ONLY),
    Case("deleteWebhook", "deleteWebhook",
         f"mutation($id: ID!) {{ deleteWebhook(id: $id) {{ webhook {{ id }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.webhook_id)}, ADMIN_ONLY),
    Case("rotateWebhookSecret", "rotateWebhookSecret",
         f"""mutation($id: ID!) {{ rotateWebhookSecret(id: $id, overlapSeconds: 60) {{
           webhook {{ id previousSecretExpiresAt }} secret {ERRORS} }} }}""",
         lambda w, r: {"id": str(w.webhook_id)}, ADMIN_ONLY),
    Case("resendWebhookDelivery", "resendWebhookDelivery",
         f"mutation($id: ID!) {{ resendWebhookDelivery(id: $id) {{ webhook {{ id }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.delivery_id)}, ADMIN_ONLY),
    # --- the door: staff (tests/test_checkin.py) and admins ---
    Case("checkIn", "checkIn",
         f"""mutation($code: String!, $id: ID!) {{ checkIn(input: {{code: $code, eventId: $id}}) {{
           result checkedInAt gate {ERRORS} }} }}""",
         lambda w, r: {"code": w.secrets[4], "id": str(w.event_id)}, ADMIN_ONLY),
    Case("revokedTickets", "revokedTickets", "query($id: ID!) { revokedTickets(eventId: $id) }",
         lambda w, r: {"id": str(w.event_id)}, (UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, EMPTY)),
    Case("setUserRole", "setUserRole",
         f"mutation($id: ID!) {{ setUserRole(userId: $id, role: STAFF) {{ user {{ id role }} {ERRORS} }} }}",
         lambda w, r: {"id": str(w.owner_id)}, ADMIN_ONLY),
]

# What a partner's key holding one scope gets, per case, in KEY_ROLES order: CATALOGUE_READ,
# BOOKINGS_READ, BOOKINGS_WRITE, WEBHOOKS_MANAGE, CHECKIN. A key has exactly its scopes (the
# catalogue too: without CATALOGUE_READ it reads nothing, though anonymous callers may), its
# bookings are its own account's (so the owner's are null or not found to it), its booking
# changes need an idempotency key (none here: INVALID_INPUT), and it is never an admin.
INVALID_INPUT = "INVALID_INPUT"
NO_KEY = (FORBIDDEN,) * 5
CATALOGUE = (OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN)
BOOKING_WRITE = (FORBIDDEN, FORBIDDEN, INVALID_INPUT, FORBIDDEN, FORBIDDEN)
WEBHOOKS = (FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN)
ANY_KEY = (OK,) * 5
KEY_CASES = {
    "me": ANY_KEY,  # the key's own service account
    "event on sale": CATALOGUE, "event draft": (NULL, *NO_KEY[1:]), "events": CATALOGUE, "eventSales": NO_KEY,
    "venue": CATALOGUE,
    "booking pending": (FORBIDDEN, NULL, FORBIDDEN, FORBIDDEN, FORBIDDEN),
    "booking confirmed": (FORBIDDEN, NULL, FORBIDDEN, FORBIDDEN, FORBIDDEN),
    "myBookings": (FORBIDDEN, EMPTY, FORBIDDEN, FORBIDDEN, FORBIDDEN),
    "myWaitlist": NO_KEY,
    "register": ANY_KEY, "login": ANY_KEY, "refreshToken": ANY_KEY, "logout": ANY_KEY,
    "createVenue": NO_KEY, "createEvent": NO_KEY, "updateEvent": NO_KEY, "publishEvent": NO_KEY,
    "cancelEvent": NO_KEY, "expireReservations": NO_KEY,
    "reserveSeats": BOOKING_WRITE, "confirmBooking": BOOKING_WRITE, "cancelBooking pending": BOOKING_WRITE,
    "cancelBooking confirmed": BOOKING_WRITE,
    "joinWaitlist": NO_KEY, "leaveWaitlist": NO_KEY,
    "myQueueTicket": NO_KEY, "joinQueue": NO_KEY, "leaveQueue": NO_KEY, "setWaitingRoom": NO_KEY,
    "checkIn": (FORBIDDEN,) * 4 + (OK,), "revokedTickets": (FORBIDDEN,) * 4 + (EMPTY,),  # the door's scanners
    "setUserRole": NO_KEY,
    "node: event on sale": CATALOGUE, "node: event draft": (NULL, *NO_KEY[1:]),
    "node: booking": (FORBIDDEN, NULL, FORBIDDEN, FORBIDDEN, FORBIDDEN),
    "apiKeys": NO_KEY, "createApiKey": NO_KEY, "rotateApiKey": NO_KEY, "revokeApiKey": NO_KEY,
    "webhooks": WEBHOOKS, "createWebhook": WEBHOOKS, "deleteWebhook": WEBHOOKS, "resendWebhookDelivery": WEBHOOKS,
    "rotateWebhookSecret": WEBHOOKS,
}


def expected_outcome(case: Case, role: str) -> str:
    return case.expected[ROLES.index(role)] if role in ROLES else KEY_CASES[case.name][KEY_ROLES.index(role)]

SUBSCRIPTION_CASES = {
    # field: expected per role (anonymous, owner, other, admin); "ok" means the subscription runs.
    "eventAvailability": (OK, OK, OK, OK),
    "myBookingUpdates": (UNAUTHENTICATED, OK, OK, OK),
    "queueStatus": (UNAUTHENTICATED, OK, NOT_FOUND, NOT_FOUND),  # one's own ticket only
    "checkInCounts": (UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, OK),  # tests/test_checkin.py runs it
}


def root_fields(settings: Settings) -> dict[str, set[str]]:
    schema = create_schema(settings)._schema
    roots = {"query": schema.query_type, "mutation": schema.mutation_type,
             "subscription": schema.subscription_type}
    return {kind: set(root.fields) if root else set() for kind, root in roots.items()}


def test_the_table_covers_every_root_field() -> None:
    fields = root_fields(base_settings())
    covered = {case.field for case in CASES}
    missing = (fields["query"] | fields["mutation"]) - covered
    assert not missing, f"root fields without a row in the authorization table: {sorted(missing)}"
    assert not covered - fields["query"] - fields["mutation"], "rows for fields the schema lacks"
    assert set(SUBSCRIPTION_CASES) == fields["subscription"]
    assert set(KEY_CASES) == {case.name for case in CASES}, "every row needs its API key outcomes"


def outcome_of(body: dict[str, Any], field: str) -> str:
    if body.get("errors"):
        codes = {(error.get("extensions") or {}).get("code") for error in body["errors"]}
        assert len(codes) == 1, body
        return str(codes.pop())
    value = body["data"][field]
    if value is None:
        return NULL
    if isinstance(value, list):
        return EMPTY if not value else OK
    if isinstance(value, dict) and "errors" in value:
        return value["errors"][0]["code"] if value["errors"] else OK
    if isinstance(value, dict) and "edges" in value and "totalCount" in value and field.startswith("my"):
        return EMPTY if not value["edges"] and value["totalCount"] == 0 else OK
    return OK


async def database_state(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    state = {}
    async with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = await connection.execute(text(f"SELECT * FROM {table.name} ORDER BY 1"))
            state[table.name] = [tuple(row) for row in rows]
    return state


@pytest.mark.parametrize("role", ROLES + KEY_ROLES)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_authorization_matrix(case: Case, role: str, gql: GraphQLClient, engine: AsyncEngine,
                                    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    world = await build_world(sessionmaker, settings)
    expected = expected_outcome(case, role)
    before = await database_state(engine)
    response = await gql.http.post(
        "/graphql", json={"query": case.document, "variables": case.variables(world, role)},
        headers={"Authorization": f"Bearer {world.tokens[role]}"} if world.tokens[role] else {})
    assert response.status_code == 200, response.text
    body = response.json()
    assert outcome_of(body, case.field) == expected, body
    if expected != OK or case.document.lstrip().startswith(("{", "query")):
        # Refused, or a read: nothing at all changed.
        assert await database_state(engine) == before
    if role in ("anonymous", "other") or role in KEY_ROLES:
        leaked = [secret for secret in world.secrets if secret in response.text]
        assert not leaked, f"{role} saw the owner's {leaked}: {body}"
    if expected == OK and case.field == "booking":
        assert world.owner_email in response.text  # the owner's booking, to its owner or an admin


async def test_admins_see_every_booking_but_only_owners_pay(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    world = await build_world(sessionmaker, settings)
    query = "query($id: ID!) { booking(id: $id) { reference user { email } } }"
    seen = (await gql(query, {"id": str(world.pending_id)}, world.tokens["admin"]))["booking"]
    assert seen["user"]["email"] == world.owner_email and seen["reference"] in world.secrets
    # Unknown and malformed ids look exactly like somebody else's booking: null.
    for booking_id in ("999999", "abc", "-1", "0", "9" * 40):
        assert (await gql(query, {"id": booking_id}, world.tokens["owner"]))["booking"] is None


async def test_another_users_subscription_never_carries_my_bookings(
        settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    world = await build_world(sessionmaker, settings)
    other_token = world.tokens["other"]
    document = "subscription { myBookingUpdates { reason booking { id reference user { email } } } }"
    availability = "subscription($id: ID!) { eventAvailability(eventId: $id) { availableSeats snapshot } }"
    queue_status = "subscription($id: ID!) { queueStatus(eventId: $id) { status position } }"
    cancel = "mutation($id: ID!) { cancelBooking(input: {bookingId: $id}) { errors { code } } }"
    reserve = """mutation($id: ID!) { reserveSeats(input: {eventId: $id, quantity: 1}) {
      booking { id } errors { code } } }"""
    app = create_app(settings)
    async with serve_in_process(app) as address:
        url = f"ws://{address}/graphql"
        connections = {}
        try:
            for role in ROLES:
                token = world.tokens[role]
                ws = await init_connection(url, {"authorization": f"Bearer {token}"} if token else None)
                connections[role] = ws
                assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
                for number, (query, variables) in enumerate(
                        [(document, {}), (availability, {"id": str(world.event_id)}),
                         (queue_status, {"id": str(world.queued_id)})], start=1):
                    await ws.send(json.dumps({"id": str(number), "type": "subscribe",
                                              "payload": {"query": query, "variables": variables}}))
            # Every role gets the availability snapshot; anonymous is refused myBookingUpdates.
            for role, ws in connections.items():
                messages = {}
                expected = {"1": SUBSCRIPTION_CASES["myBookingUpdates"][ROLES.index(role)],
                            "2": SUBSCRIPTION_CASES["eventAvailability"][ROLES.index(role)],
                            "3": SUBSCRIPTION_CASES["queueStatus"][ROLES.index(role)]}
                wanted = {key for key, value in expected.items() if value != OK} | {"2", "3"}
                while not wanted <= set(messages):
                    message = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
                    messages.setdefault(message["id"], message)  # the first message of each
                assert messages["2"]["payload"]["data"]["eventAvailability"]["snapshot"] is True
                for key in ("1", "3"):
                    if expected[key] != OK:
                        assert messages[key]["type"] in ("next", "error"), messages[key]
                        payload = messages[key]["payload"]
                        errors = payload if isinstance(payload, list) else payload["errors"]
                        assert errors[0]["extensions"]["code"] == expected[key], messages[key]
                if expected["3"] == OK:
                    assert messages["3"]["payload"]["data"]["queueStatus"] == {"status": "WAITING", "position": 1}

            async with http_client(f"http://{address}") as gql:
                # The owner's booking changes first, then the other user's own booking.
                assert (await gql(cancel, {"id": str(world.pending_id)}, world.tokens["owner"])) == \
                    {"cancelBooking": {"errors": []}}
                mine = (await gql(reserve, {"id": str(world.event_id)}, other_token))["reserveSeats"]
                assert mine["errors"] == []
                assert (await gql(cancel, {"id": mine["booking"]["id"]}, other_token)) == \
                    {"cancelBooking": {"errors": []}}

            async def next_booking_update(ws: Any) -> dict[str, Any]:
                while True:  # skip availability messages
                    message = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
                    if message["id"] == "1":
                        assert message["type"] == "next", message
                        return dict(message["payload"]["data"]["myBookingUpdates"])

            owner_update = await next_booking_update(connections["owner"])
            assert owner_update["booking"]["id"] == str(world.pending_id)
            other_update = await next_booking_update(connections["other"])
            assert other_update["booking"]["id"] == mine["booking"]["id"], other_update
            assert other_update["booking"]["user"]["email"] != world.owner_email
        finally:
            for ws in connections.values():
                await ws.close()


# --- tokens and ticket codes (what tests/test_accounts.py and test_bookings.py leave out) ----

async def test_ticket_codes_cannot_be_guessed_or_forged(gql: GraphQLClient, settings: Settings,
                                                        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    world = await build_world(sessionmaker, settings)
    query = "query($id: ID!) { booking(id: $id) { reference ticketUrl tickets { code url } } }"
    booking = (await gql(query, {"id": str(world.confirmed_id)}, world.tokens["owner"]))["booking"]
    codes = [booking["ticketUrl"].rsplit("/", 1)[1]] + [t["code"] for t in booking["tickets"]]
    assert len(set(codes)) == len(codes) == 3
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert len(codes[0]) == 43 and set(codes[0]) <= alphabet  # the booking's: 256 random bits
    assert all(code.count(".") == 2 and set(code) <= alphabet | {"."} for code in codes[1:])  # tickets': signed
    for code in codes:
        assert (await gql.http.get(f"/tickets/{code}")).status_code == 200

    pending = (await gql(query, {"id": str(world.pending_id)}, world.tokens["owner"]))["booking"]
    assert pending["ticketUrl"] is None and pending["tickets"] == []  # no codes before payment
    near_misses = [code[:-1] + ("A" if code[-1] != "A" else "B") for code in codes]  # one character off
    forged = [secrets.token_urlsafe(32) for _ in range(5)] + near_misses + [
        booking["reference"], pending["reference"], str(world.confirmed_id), codes[0].lower(), codes[0].upper(),
        codes[0] + codes[1], codes[0][:20], codes[0] + "%25", "%2e%2e%2f" + codes[0], "*", "%25"]
    for code in forged:
        for accept in ("application/json", "text/html"):
            response = await gql.http.get(f"/tickets/{code}", headers={"Accept": accept})
            assert response.status_code == 404, (code, response.text)
            assert booking["reference"] not in response.text


async def test_a_cancelled_bookings_codes_are_all_void(gql: GraphQLClient, settings: Settings,
                                                       sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    world = await build_world(sessionmaker, settings)
    query = "query($id: ID!) { booking(id: $id) { ticketUrl tickets { code status } } }"
    booking = (await gql(query, {"id": str(world.confirmed_id)}, world.tokens["owner"]))["booking"]
    urls = [booking["ticketUrl"]] + [f"/tickets/{t['code']}" for t in booking["tickets"]]
    cancel = "mutation($id: ID!) { cancelBooking(input: {bookingId: $id}) { errors { code } } }"
    assert (await gql(cancel, {"id": str(world.confirmed_id)}, world.tokens["owner"]))["cancelBooking"] == \
        {"errors": []}
    for url in urls:  # the booking's code and every single ticket's code
        assert (await gql.http.get(url)).status_code == 404, url
        assert (await gql.http.get(url, headers={"Accept": "application/json"})).status_code == 404, url
    after = (await gql(query, {"id": str(world.confirmed_id)}, world.tokens["owner"]))["booking"]
    assert after["ticketUrl"] is None and {t["status"] for t in after["tickets"]} == {"VOID"}


async def test_a_cancelled_events_codes_are_void(gql: GraphQLClient, settings: Settings,
                                                 sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    world = await build_world(sessionmaker, settings)
    query = "query($id: ID!) { booking(id: $id) { ticketUrl tickets { url } } }"
    booking = (await gql(query, {"id": str(world.confirmed_id)}, world.tokens["owner"]))["booking"]
    cancel = "mutation($id: ID!) { cancelEvent(id: $id) { errors { code } } }"
    assert (await gql(cancel, {"id": str(world.event_id)}, world.tokens["admin"]))["cancelEvent"] == {"errors": []}
    for url in [booking["ticketUrl"]] + [t["url"] for t in booking["tickets"]]:
        assert (await gql.http.get(url)).status_code == 404, url


async def test_refresh_and_access_tokens_are_not_interchangeable(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    world = await build_world(sessionmaker, settings)
    me = "{ me { id } }"
    reserve = """mutation($id: ID!) { reserveSeats(input: {eventId: $id, quantity: 1}) { errors { code } } }"""
    refresh = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken errors { code } } }"
    # A refresh token is no bearer access token...
    for query in (me, reserve):
        refused = await gql.raw(query, {"id": str(world.event_id)} if query == reserve else None, world.owner_refresh)
        assert [e["extensions"]["code"] for e in refused["errors"]] == ["UNAUTHENTICATED"], refused
    # ...and an access token refreshes nothing.
    for token in (world.tokens["owner"], world.tokens["admin"]):
        answer = (await gql(refresh, {"t": token}))["refreshToken"]
        assert answer == {"accessToken": None, "errors": [{"code": "INVALID_TOKEN"}]}
    # The refresh token still works afterwards: the failed attempts did not count as its use.
    assert (await gql(refresh, {"t": world.owner_refresh}))["refreshToken"]["errors"] == []
    # Malformed Authorization headers are UNAUTHENTICATED (401), for reads as for writes.
    for header in ("Basic abc", "Bearer", "Bearer  ", "token abc", world.tokens["owner"] or ""):
        for query in (reserve, "{ events { totalCount } }"):
            response = await gql.http.post("/graphql", json={"query": query, "variables": {"id": str(world.event_id)}},
                                           headers={"Authorization": header})
            assert response.status_code == 401, header
            assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["UNAUTHENTICATED"], header
    # Without the header, reads stay anonymous.
    assert await gql("{ events { totalCount } }") == {"events": {"totalCount": 4}}  # the published four
