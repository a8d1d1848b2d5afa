"""Partners' API keys: issued once, used as bearer keys, scoped, rotated, revoked on every
instance at once, rate-limited per key; partner bookings belong to the partner alone."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.models import Role
from app.settings import Settings
from tests.conftest import GraphQLClient, running_app
from tests.factories import make_event, make_user, token_for

CREATE = """mutation($input: ApiKeyInput!) { createApiKey(input: $input) {
  apiKey { id name prefix scopes createdAt lastUsedAt expiresAt revokedAt } secret errors { code field } } }"""
ROTATE = "mutation($id: ID!) { rotateApiKey(id: $id) { apiKey { id prefix } secret errors { code } } }"
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id revokedAt } secret errors { code } } }"
KEYS = "{ apiKeys { id prefix scopes lastUsedAt revokedAt } }"
EVENTS = "{ events { totalCount } }"
RESERVE = """mutation($input: ReserveInput!) { reserveSeats(input: $input) {
  booking { id status externalReference } errors { code field } } }"""
CONFIRM = """mutation($id: ID!, $key: String) { confirmBooking(input: {bookingId: $id, paymentToken: "tok_visa",
  idempotencyKey: $key}) { booking { id status externalReference } errors { code } } }"""
BOOKING = "query($id: ID!) { booking(id: $id) { id externalReference } }"
MY_BOOKINGS = "{ myBookings { totalCount edges { node { id externalReference } } } }"


async def admin_token(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> str:
    return token_for(await make_user(sessionmaker, Role.ADMIN), settings)


async def new_key(gql: GraphQLClient, admin: str, *scopes: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    answer = (await gql(CREATE, {"input": {"name": "Reseller", "scopes": list(scopes), **fields}}, admin))
    created = answer["createApiKey"]
    assert created["errors"] == [], created
    return created["secret"], created["apiKey"]


async def test_a_key_is_shown_once_stored_hashed_and_works_as_a_bearer_key(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
        engine: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = await admin_token(sessionmaker, settings)
    secret, key = await new_key(gql, admin, "CATALOGUE_READ")
    assert secret.startswith(f"bme_{key['prefix']}_") and len(secret) >= 4 + 12 + 1 + 43
    assert key["scopes"] == ["CATALOGUE_READ"] and key["lastUsedAt"] is None and key["revokedAt"] is None
    assert await gql(EVENTS, token=secret) == {"events": {"totalCount": 0}}
    listed = (await gql(KEYS, token=admin))["apiKeys"]
    assert [k["prefix"] for k in listed] == [key["prefix"]] and listed[0]["lastUsedAt"] is not None
    # The secret is nowhere but in the creator's hands: not listed, not in a table, not in a log.
    rotated = (await gql(ROTATE, {"id": key["id"]}, admin))["rotateApiKey"]
    assert rotated["secret"] not in (None, secret) and rotated["apiKey"]["id"] == key["id"]
    async with engine.connect() as connection:
        dump = str([list(row) for row in await connection.execute(text("SELECT * FROM api_keys"))])
    for shown in (secret, rotated["secret"]):
        assert shown not in dump and shown.split("_", 2)[2] not in dump
        assert not [record for record in caplog.records if shown in record.getMessage()]
        assert shown not in str(await gql(KEYS, token=admin))
    # Rotation ends the old secret at once; the new one works.
    refused = await gql.http.post("/graphql", json={"query": EVENTS}, headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401 and refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await gql(EVENTS, token=rotated["secret"]) == {"events": {"totalCount": 0}}


@pytest.mark.parametrize("token", ["bme_", "bme_abc", "bme_000000000000_x", "bme_" + "0" * 12 + "_" + "a" * 43])
async def test_unknown_keys_are_refused(gql: GraphQLClient, token: str) -> None:
    response = await gql.http.post("/graphql", json={"query": EVENTS}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_a_forged_secret_with_a_real_prefix_is_refused(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    secret, _ = await new_key(gql, await admin_token(sessionmaker, settings), "CATALOGUE_READ")
    forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    response = await gql.http.post("/graphql", json={"query": EVENTS}, headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


async def test_revocation_is_seen_at_once_by_another_instance(
        settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    admin = await admin_token(sessionmaker, settings)
    async with running_app(settings) as (_, first), running_app(settings) as (_, second):
        secret, key = await new_key(first, admin, "CATALOGUE_READ")
        assert await second(EVENTS, token=secret) == {"events": {"totalCount": 0}}
        revoked = (await first(REVOKE, {"id": key["id"]}, admin))["revokeApiKey"]
        assert revoked["errors"] == [] and revoked["apiKey"]["revokedAt"] is not None and revoked["secret"] is None
        for gql in (second, first):
            response = await gql.http.post("/graphql", json={"query": EVENTS},
                                           headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 401, response.text
        # A revoked key cannot be brought back by rotating it.
        assert (await first(ROTATE, {"id": key["id"]}, admin))["rotateApiKey"]["errors"] == [{"code": "INVALID_STATE"}]


async def test_an_expired_key_is_refused(gql: GraphQLClient, engine: AsyncEngine,
                                         sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    admin = await admin_token(sessionmaker, settings)
    secret, key = await new_key(gql, admin, "CATALOGUE_READ", expiresAt="2100-01-01T00:00:00Z")
    assert await gql(EVENTS, token=secret) == {"events": {"totalCount": 0}}
    async with engine.begin() as connection:  # time passes
        await connection.execute(text("UPDATE api_keys SET expires_at = created_at WHERE id = :id"),
                                 {"id": int(key["id"])})
    response = await gql.http.post("/graphql", json={"query": EVENTS}, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    past = await gql(CREATE, {"input": {"name": "x", "scopes": ["CATALOGUE_READ"],
                                        "expiresAt": "2001-01-01T00:00:00Z"}}, admin)
    assert past["createApiKey"]["errors"] == [{"code": "INVALID_INPUT", "field": "expiresAt"}]


async def test_a_key_is_held_to_its_own_rate_limit(gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession],
                                                   settings: Settings) -> None:
    admin = await admin_token(sessionmaker, settings)
    slow, _ = await new_key(gql, admin, "CATALOGUE_READ", rateLimitPerMinute=2)
    fast, _ = await new_key(gql, admin, "CATALOGUE_READ")
    statuses = []
    for _ in range(3):
        response = await gql.http.post("/graphql", json={"query": EVENTS}, headers={"Authorization": f"Bearer {slow}"})
        statuses.append(response.status_code)
    assert statuses[:2] == [200, 200] and statuses[2] == 429
    assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert await gql(EVENTS, token=fast) == {"events": {"totalCount": 0}}  # another key is not held back
    metrics = (await gql.http.get("/metrics")).text
    assert f'bookmyevent_api_key_requests_total{{prefix="{slow.split("_")[1]}"}} 3.0' in metrics


async def test_partner_bookings_belong_to_the_partner_alone(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    admin = await admin_token(sessionmaker, settings)
    event = await make_event(sessionmaker, capacity=10)
    partner, _ = await new_key(gql, admin, "BOOKINGS_READ", "BOOKINGS_WRITE")
    rival, _ = await new_key(gql, admin, "BOOKINGS_READ", "BOOKINGS_WRITE")
    person = token_for(await make_user(sessionmaker), settings)
    reserve = {"eventId": str(event.id), "quantity": 2, "externalReference": "order-17"}
    # Partner writes need an idempotency key.
    missing = (await gql(RESERVE, {"input": reserve}, partner))["reserveSeats"]
    assert missing == {"booking": None, "errors": [{"code": "INVALID_INPUT", "field": "idempotencyKey"}]}
    held = (await gql(RESERVE, {"input": {**reserve, "idempotencyKey": "r-1"}}, partner))["reserveSeats"]
    assert held["errors"] == [] and held["booking"]["externalReference"] == "order-17"
    again = (await gql(RESERVE, {"input": {**reserve, "idempotencyKey": "r-1"}}, partner))["reserveSeats"]
    assert again["booking"]["id"] == held["booking"]["id"]  # a retry buys nothing more
    booking_id = held["booking"]["id"]
    # Nobody else sees or confirms it.
    for other in (rival, person):
        assert (await gql(BOOKING, {"id": booking_id}, other)) == {"booking": None}
        assert (await gql(MY_BOOKINGS, token=other))["myBookings"]["totalCount"] == 0
        refused = (await gql(CONFIRM, {"id": booking_id, "key": "c-1"}, other))["confirmBooking"]
        assert refused == {"booking": None, "errors": [{"code": "NOT_FOUND"}]}
    mine = (await gql(MY_BOOKINGS, token=partner))["myBookings"]
    assert mine["edges"] == [{"node": {"id": booking_id, "externalReference": "order-17"}}]
    confirmed = (await gql(CONFIRM, {"id": booking_id, "key": "c-1"}, partner))["confirmBooking"]
    assert confirmed["errors"] == [] and confirmed["booking"]["status"] == "CONFIRMED"
    # A key never signs in as its service account.
    login = """mutation($e: String!) { login(input: {email: $e, password: "!"}) { errors { code } } }"""
    email = (await gql("{ me { email } }", token=partner))["me"]["email"]
    assert (await gql(login, {"e": email}))["login"]["errors"] == [{"code": "INVALID_CREDENTIALS"}]
