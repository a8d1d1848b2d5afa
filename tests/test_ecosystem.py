"""Fitting the GraphQL ecosystem: GraphQL over HTTP status codes and media types, CORS,
Relay ids, persisted queries, subscriptions over Server-Sent Events."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.settings import Settings
from app.web import create_app
from tests.conftest import REDIS_PREFIX, GraphQLClient, running_app
from tests.factories import SMALL_SEAT_MAP, make_event, make_user, token_for
from tests.servers import MESSAGE_TIMEOUT, http_client, serve_in_process, subscribe

GRJ = "application/graphql-response+json"


@pytest.fixture
def backend() -> str:
    """Transport behaviour: the embedded database is enough (tests needing more say so)."""
    return "sqlite"


# --- errors clients can act on ---------------------------------------------------------------

@pytest.mark.parametrize(("document", "variables", "code"), [
    ("{ events { totalCount ", {}, "GRAPHQL_PARSE_FAILED"),
    ("{ nope }", {}, "GRAPHQL_VALIDATION_FAILED"),
    ("query($id: ID!) { event(id: $id) { id } }", {}, None),  # a variable missing: a request error too
])
async def test_graphql_response_media_type_gives_4xx_for_request_errors(
        gql: GraphQLClient, document: str, variables: dict[str, object], code: str | None) -> None:
    response = await gql.http.post("/graphql", json={"query": document, "variables": variables},
                                   headers={"Accept": f"{GRJ}, application/json;q=0.9"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(GRJ)
    body = response.json()
    assert "data" not in body  # nothing ran
    assert body["errors"][0]["message"]
    if code:
        assert body["errors"][0]["extensions"]["code"] == code

    # Plain application/json keeps the long-standing answer: 200 with data null.
    legacy = await gql.http.post("/graphql", json={"query": document, "variables": variables})
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].startswith("application/json")
    assert legacy.json()["data"] is None


async def test_graphql_response_media_type_gives_200_when_executed(gql: GraphQLClient) -> None:
    response = await gql.http.post("/graphql", json={"query": "{ events { totalCount } event(id: \"x\") { id } }"},
                                   headers={"Accept": GRJ})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(GRJ)
    assert response.json()["data"] == {"events": {"totalCount": 0}, "event": None}


@pytest.mark.parametrize(("method", "kwargs", "status"), [
    ("POST", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", {"content": b"query", "headers": {"Content-Type": "text/plain"}}, 400),
    ("PUT", {"json": {"query": "{ me { id } }"}}, 405),
    ("POST", {"json": {"query": "{ me { id } }"}, "headers": {"Authorization": "Bearer forged"}}, 401),
])
async def test_transport_errors_are_graphql_json(gql: GraphQLClient, method: str, kwargs: dict[str, object],
                                                 status: int) -> None:
    headers = {"Accept": GRJ, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    response = await gql.http.request(method, "/graphql", headers=headers, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(GRJ)
    assert response.json()["errors"][0]["extensions"]["code"]


# --- CORS ------------------------------------------------------------------------------------

SPA = "https://shop.example.com"
STRANGER = "https://evil.example.net"


@pytest.fixture
def cors_settings(settings: Settings) -> Settings:
    return replace(settings, cors_origins=f"{SPA}, https://other.example.org")


async def test_cors_preflight_and_simple_requests(cors_settings: Settings, engine: AsyncEngine) -> None:
    async with running_app(cors_settings) as (_, gql):
        preflight = await gql.http.options("/graphql", headers={
            "Origin": SPA, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == SPA
        allowed_headers = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
        assert "access-control-allow-credentials" not in preflight.headers

        refused = await gql.http.options("/graphql", headers={
            "Origin": STRANGER, "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers

        simple = await gql.http.post("/graphql", json={"query": "{ events { totalCount } }"},
                                     headers={"Origin": SPA})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == SPA
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        stranger = await gql.http.post("/graphql", json={"query": "{ events { totalCount } }"},
                                       headers={"Origin": STRANGER})
        assert "access-control-allow-origin" not in stranger.headers


async def test_no_cors_by_default(gql: GraphQLClient) -> None:
    preflight = await gql.http.options("/graphql", headers={"Origin": SPA, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


async def _websocket_accepted(url: str, origin: str | None) -> bool:
    try:
        ws = await connect(url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                           origin=origin, open_timeout=MESSAGE_TIMEOUT)  # type: ignore[arg-type]
    except InvalidStatus as refused:
        assert refused.response.status_code == 403
        return False
    await ws.close()
    return True


async def test_websocket_origin_follows_cors_origins(cors_settings: Settings, engine: AsyncEngine) -> None:
    async with serve_in_process(create_app(cors_settings)) as address:
        url = f"ws://{address}/graphql"
        assert await _websocket_accepted(url, SPA)
        assert not await _websocket_accepted(url, STRANGER)
        assert await _websocket_accepted(url, f"http://{address}")  # the app's own pages
        assert await _websocket_accepted(url, None)  # not a browser: a server, a CLI


# --- Relay -----------------------------------------------------------------------------------

NODE = """query($id: ID!) { node(id: $id) { __typename id globalId
  ... on Event { name } ... on Venue { city } ... on Seat { label } ... on Booking { reference } } }"""


def global_id(type_name: str, local_id: object) -> str:
    return base64.b64encode(f"{type_name}:{local_id}".encode()).decode()


async def test_node_fetches_every_type_by_its_global_id(gql: GraphQLClient, settings: Settings,
                                                        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP, name="Relay Night")
    draft = await make_event(sessionmaker, publish=False)
    owner, stranger = await make_user(sessionmaker), await make_user(sessionmaker)
    read = await gql("""query($id: ID!) { event(id: $id) { id globalId venue { id globalId }
                                          seats(first: 1) { id globalId } } }""", {"id": str(event.id)})
    seat = read["event"]["seats"][0]
    assert read["event"]["id"] == str(event.id)  # the contract's ids are as they were
    assert read["event"]["globalId"] == global_id("Event", event.id)
    assert seat["globalId"] == global_id("Seat", seat["id"])
    reserved = await gql("""mutation($input: ReserveInput!) { reserveSeats(input: $input) {
                              booking { id globalId reference } errors { code } } }""",
                         {"input": {"eventId": str(event.id), "seatIds": [seat["id"]]}}, token_for(owner, settings))
    booking = reserved["reserveSeats"]["booking"]
    assert booking["globalId"] == global_id("Booking", booking["id"])

    async def node(id: str, token: str | None = None) -> dict[str, Any] | None:
        return (await gql(NODE, {"id": id}, token))["node"]

    assert await node(read["event"]["globalId"]) == {
        "__typename": "Event", "id": str(event.id), "globalId": read["event"]["globalId"], "name": "Relay Night"}
    assert (await node(read["event"]["venue"]["globalId"]) or {})["city"] == "Lisbon"
    assert (await node(seat["globalId"]) or {})["label"] == "Stalls A1"
    assert (await node(booking["globalId"], token_for(owner, settings)) or {})["reference"] == booking["reference"]
    # A booking is its owner's (and admins'); a draft is the admins'; junk finds nothing.
    assert await node(booking["globalId"], token_for(stranger, settings)) is None
    assert await node(booking["globalId"]) is None
    assert await node(global_id("Event", draft.id)) is None
    for junk in ("12", "not base64!", global_id("User", owner.id), global_id("Event", "x"), global_id("Event", "")):
        assert await node(junk) is None


async def test_page_info_has_both_ends(gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    for _ in range(3):
        await make_event(sessionmaker)
    query = """query($after: String) { events(first: 2, after: $after) {
      edges { cursor } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
    first = (await gql(query, {"after": None}))["events"]
    assert first["pageInfo"] == {"hasNextPage": True, "hasPreviousPage": False,
                                 "startCursor": first["edges"][0]["cursor"], "endCursor": first["edges"][1]["cursor"]}
    second = (await gql(query, {"after": first["pageInfo"]["endCursor"]}))["events"]
    last = second["edges"][0]["cursor"]
    assert second["pageInfo"] == {"hasNextPage": False, "hasPreviousPage": True, "startCursor": last, "endCursor": last}


# --- persisted queries -----------------------------------------------------------------------

EVENTS = "query Events($first: Int) { events(first: $first) { totalCount } }"


def apq(document: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(document.encode()).hexdigest()}}


def get_params(document: str, variables: dict[str, Any]) -> dict[str, str]:
    return {"extensions": json.dumps(apq(document)), "variables": json.dumps(variables)}


async def _apq_round_trip(register: GraphQLClient, later: GraphQLClient) -> None:
    """Unknown hash, then hash and text (registered on `register`), then hash alone (on `later`)."""
    unknown = await register.http.post("/graphql", json={"extensions": apq(EVENTS), "variables": {"first": 1}})
    assert unknown.status_code == 200
    assert unknown.json()["errors"] == [{"message": "PersistedQueryNotFound",
                                         "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]
    # Not found in a GET either, and never GraphiQL (a browser asks for HTML).
    missing = await later.http.get("/graphql", params=get_params(EVENTS, {"first": 1}),
                                   headers={"Accept": "text/html,*/*"})
    assert missing.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert missing.headers["cache-control"] == "no-store"  # a CDN must ask again once it is known

    sent = await register.http.post("/graphql", json={"query": EVENTS, "extensions": apq(EVENTS),
                                                      "variables": {"first": 1}})
    assert sent.json()["data"] == {"events": {"totalCount": 0}}
    by_hash = await later.http.post("/graphql", json={"extensions": apq(EVENTS), "variables": {"first": 2}})
    assert by_hash.json()["data"] == {"events": {"totalCount": 0}}
    cacheable = await later.http.get("/graphql", params=get_params(EVENTS, {"first": 2}),
                                     headers={"Accept": "text/html,*/*"})
    assert cacheable.status_code == 200 and cacheable.json()["data"] == {"events": {"totalCount": 0}}


async def test_automatic_persisted_queries_in_process(gql: GraphQLClient) -> None:
    await _apq_round_trip(gql, gql)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_automatic_persisted_queries_are_shared_through_redis(settings: Settings, engine: AsyncEngine,
                                                                   redis_url: str) -> None:
    shared = replace(settings, redis_url=redis_url, redis_prefix=f"{REDIS_PREFIX}{uuid.uuid4().hex}:")
    async with running_app(shared) as (_, first), running_app(shared) as (_, second):
        await _apq_round_trip(first, second)
    with redis.Redis.from_url(redis_url) as client:  # kept for a while, not forever
        key_ttl = client.ttl(f"{shared.redis_prefix}apq:{apq(EVENTS)['persistedQuery']['sha256Hash']}")
    assert 0 < key_ttl <= shared.persisted_query_ttl_seconds


async def test_persisted_queries_are_checked(gql: GraphQLClient) -> None:
    mutation = 'mutation { login(input: {email: "a@b.c", password: "x"}) { errors { code } } }'
    assert (await gql.http.post("/graphql", json={"query": mutation, "extensions": apq(mutation)})).status_code == 200
    over_get = await gql.http.get("/graphql", params={"extensions": json.dumps(apq(mutation))})
    assert over_get.status_code == 400  # never a mutation over GET, even by hash
    forged = await gql.http.post("/graphql", json={"query": "{ me { id } }", "extensions": apq(EVENTS)})
    assert forged.status_code == 400 and "does not match" in forged.json()["errors"][0]["message"]
    bad_version = await gql.http.post("/graphql", json={
        "extensions": {"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}}})
    assert bad_version.status_code == 400
    spec = await gql.http.post("/graphql", json={"extensions": apq("{ nothing }")}, headers={"Accept": GRJ})
    assert spec.status_code == 400 and spec.headers["content-type"].startswith(GRJ)


async def test_allow_list_runs_the_manifest_only(settings: Settings, engine: AsyncEngine, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": "apollo-persisted-query-manifest", "version": 1, "operations": [
        {"id": apq(EVENTS)["persistedQuery"]["sha256Hash"], "name": "Events", "type": "query", "body": EVENTS}]}))
    only = replace(settings, persisted_queries="only", persisted_queries_manifest=str(manifest))
    async with serve_in_process(create_app(only)) as address, http_client(f"http://{address}") as gql:
        assert (await gql.http.post("/graphql", json={"extensions": apq(EVENTS)})).json()["data"]
        assert (await gql.http.post("/graphql", json={"query": EVENTS})).json()["data"]
        for body in ({"query": "{ events { totalCount } }"},
                     {"query": "{ me { id } }", "extensions": apq("{ me { id } }")},
                     {"extensions": apq("{ me { id } }")}):
            refused = (await gql.http.post("/graphql", json=body)).json()
            assert refused["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST", body
        async with subscribe(f"ws://{address}/graphql", "subscription { myBookingUpdates { reason } }") as sub:
            refused = json.loads(await asyncio.wait_for(sub.ws.recv(), MESSAGE_TIMEOUT))
            assert refused["type"] == "error", refused
            assert refused["payload"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"


async def test_persisted_queries_off(settings: Settings, engine: AsyncEngine) -> None:
    async with running_app(replace(settings, persisted_queries="off")) as (_, gql):
        body = (await gql.http.post("/graphql", json={"query": EVENTS, "extensions": apq(EVENTS)})).json()
        assert body["errors"] == [{"message": "PersistedQueryNotSupported",
                                   "extensions": {"code": "PERSISTED_QUERY_NOT_SUPPORTED"}}]


# --- subscriptions over Server-Sent Events ---------------------------------------------------

AVAILABILITY = """subscription($id: ID!) { eventAvailability(eventId: $id) {
  availableSeats version sinceVersion snapshot } }"""


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """(event, data) of a graphql-sse stream; comments (heartbeats) skipped."""
    event, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
        elif not line and event:
            yield event, json.loads(data) if data else None
            event, data = "", ""


async def test_subscriptions_over_sse(settings: Settings, engine: AsyncEngine,
                                      sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    buyer = await make_user(sessionmaker)
    token = token_for(buyer, settings)
    sse = {"Accept": "text/event-stream"}
    async with serve_in_process(create_app(settings)) as address, http_client(f"http://{address}") as gql:
        async with gql.http.stream("POST", "/graphql", headers=sse, json={
                "query": AVAILABILITY, "variables": {"id": str(event.id)}}) as availability, \
                gql.http.stream("POST", "/graphql", headers={**sse, "Authorization": f"Bearer {token}"},
                                json={"query": "subscription { myBookingUpdates { reason booking { status } } }"}
                                ) as mine:
            assert availability.status_code == 200
            assert availability.headers["content-type"].startswith("text/event-stream")
            updates = sse_events(availability)
            first = await asyncio.wait_for(anext(updates), MESSAGE_TIMEOUT)
            assert first == ("next", {"data": {"eventAvailability": {
                "availableSeats": 10, "version": event.version, "sinceVersion": event.version, "snapshot": True}}})
            reserved = await gql("""mutation($input: ReserveInput!) { reserveSeats(input: $input) {
                                      booking { id } errors { code } } }""",
                                 {"input": {"eventId": str(event.id), "quantity": 2}}, token)
            change = await asyncio.wait_for(anext(updates), MESSAGE_TIMEOUT)
            assert change[0] == "next"
            assert change[1] is not None and change[1]["data"]["eventAvailability"]["availableSeats"] == 8
            booking_id = reserved["reserveSeats"]["booking"]["id"]
            await gql("""mutation($input: CancelInput!) { cancelBooking(input: $input) { errors { code } } }""",
                      {"input": {"bookingId": booking_id}}, token)
            own = await asyncio.wait_for(anext(sse_events(mine)), MESSAGE_TIMEOUT)
            assert own == ("next", {"data": {"myBookingUpdates": {"reason": "CANCELLED",
                                                                  "booking": {"status": "CANCELLED"}}}})

        # A query streams too: one result, then complete. Errors come as GraphQL errors.
        async with gql.http.stream("POST", "/graphql", headers=sse,
                                   json={"query": "{ events { totalCount } }"}) as query:
            answer = [item async for item in sse_events(query)]
            assert [event for event, _ in answer] == ["next", "complete"]
            assert answer[0][1] is not None and answer[0][1]["data"] == {"events": {"totalCount": 1}}
        async with gql.http.stream("POST", "/graphql", headers=sse,
                                   json={"query": "subscription { myBookingUpdates { reason } }"}) as anonymous:
            refused = [item async for item in sse_events(anonymous)]
            assert refused[0][0] == "next" and refused[0][1] is not None
            assert refused[0][1]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
            assert refused[-1] == ("complete", None)
        # Without that Accept, a subscription over HTTP stays a clear 400.
        plain = await gql.http.post("/graphql", json={"query": AVAILABILITY, "variables": {"id": str(event.id)}})
        assert plain.status_code == 400 and "subscription" in plain.json()["errors"][0]["message"]


async def test_event_streams_count_with_websockets_per_address(settings: Settings, engine: AsyncEngine,
                                                               sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    body = {"query": AVAILABILITY, "variables": {"id": str(event.id)}}
    sse = {"Accept": "text/event-stream"}
    async with serve_in_process(create_app(replace(settings, websockets_per_address=2))) as address, \
            http_client(f"http://{address}") as gql:
        async with gql.http.stream("POST", "/graphql", headers=sse, json=body) as held, \
                subscribe(f"ws://{address}/graphql", AVAILABILITY, {"id": str(event.id)}) as sub:
            events = sse_events(held)  # kept: reading ends with the generator, and so would the stream
            assert (await asyncio.wait_for(anext(events), MESSAGE_TIMEOUT))[0] == "next"
            assert (await sub.next())["eventAvailability"]["snapshot"] is True
            refused = await gql.http.post("/graphql", headers=sse, json=body)
            assert refused.status_code == 429
            assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
            assert not await _websocket_accepted(f"ws://{address}/graphql", None)
            # Plain requests are not streams: they still run.
            assert (await gql.http.post("/graphql", json={"query": "{ events { totalCount } }"})).status_code == 200
        async with gql.http.stream("POST", "/graphql", headers=sse, json=body) as again:  # both closed: room again
            assert again.status_code == 200
