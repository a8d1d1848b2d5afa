"""The catalogue through the GraphQL API: admin writes, public reads, search, pagination."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.models import Role
from app.settings import Settings
from tests.conftest import GraphQLClient, running_app
from tests.factories import make_event, make_user, token_for

CREATE_VENUE = """mutation($input: VenueInput!) { createVenue(input: $input) {
  venue { id name city } errors { code message field } } }"""
CREATE_EVENT = """mutation($input: EventInput!) { createEvent(input: $input) {
  event { id name status capacity availableSeats priceCents currency version
          seatMap { name priceCents rows { label seats } } seats { id label status priceCents } }
  errors { code message field } } }"""
PUBLISH = "mutation($id: ID!) { publishEvent(id: $id) { event { id status version } errors { code } } }"
UPDATE = """mutation($id: ID!, $input: EventUpdateInput!, $v: Int) {
  updateEvent(id: $id, input: $input, expectedVersion: $v) {
    event { name version } errors { code currentVersion field } } }"""
EVENTS = """query($filter: EventFilter, $first: Int, $after: String) {
  events(filter: $filter, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id name venue { city } } } } }"""


@pytest.fixture
async def admin(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> str:
    return token_for(await make_user(sessionmaker, role=Role.ADMIN), settings)


@pytest.fixture
async def user(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> str:
    return token_for(await make_user(sessionmaker), settings)


async def create_venue(gql: GraphQLClient, token: str, **overrides: Any) -> dict:
    venue = {"name": "Arena", "address": "1 Road", "city": "Lisbon", "country": "PT", "capacity": 5000}
    return (await gql(CREATE_VENUE, {"input": {**venue, **overrides}}, token))["createVenue"]


def event_input(venue_id: str, **overrides: Any) -> dict:
    return {"venueId": venue_id, "name": "Gig", "category": "concert",
            "startsAt": "2030-05-01T20:00:00+00:00", "endsAt": "2030-05-01T23:00:00+00:00",
            "capacity": 100, "priceCents": 2500, **overrides}


async def test_admin_creates_and_publishes_general_admission(gql: GraphQLClient, admin: str) -> None:
    venue = (await create_venue(gql, admin))["venue"]
    created = (await gql(CREATE_EVENT, {"input": event_input(venue["id"])}, admin))["createEvent"]
    assert created["errors"] == []
    event = created["event"]
    assert (event["status"], event["capacity"], event["availableSeats"], event["seatMap"], event["seats"]) == \
        ("DRAFT", 100, 100, None, [])
    # Drafts are invisible to the public.
    assert (await gql("query($id: ID!) { event(id: $id) { id } }", {"id": event["id"]}))["event"] is None
    published = (await gql(PUBLISH, {"id": event["id"]}, admin))["publishEvent"]
    assert published["event"]["status"] == "ON_SALE"
    assert published["event"]["version"] == event["version"] + 1
    again = (await gql(PUBLISH, {"id": event["id"]}, admin))["publishEvent"]
    assert [e["code"] for e in again["errors"]] == ["INVALID_STATE"]
    assert (await gql("query($id: ID!) { event(id: $id) { status } }", {"id": event["id"]}))["event"] == \
        {"status": "ON_SALE"}


async def test_seat_map_creates_one_seat_per_seat(gql: GraphQLClient, admin: str) -> None:
    venue = (await create_venue(gql, admin))["venue"]
    seat_map = {"sections": [
        {"name": "Stalls", "priceCents": 5000, "rows": [{"label": "A", "seats": 3}, {"label": "B", "seats": 2}]},
        {"name": "Balcony", "priceCents": 3000, "rows": [{"label": "C", "seats": 4}]},
    ]}
    created = (await gql(CREATE_EVENT, {"input": event_input(venue["id"], capacity=None, priceCents=None,
                                                            seatMap=seat_map)}, admin))["createEvent"]
    assert created["errors"] == []
    event = created["event"]
    assert event["capacity"] == 9 and event["priceCents"] == 3000
    assert [s["name"] for s in event["seatMap"]] == ["Stalls", "Balcony"]
    assert [s["label"] for s in event["seats"]] == ["Stalls A1", "Stalls A2", "Stalls A3", "Stalls B1",
                                                    "Stalls B2", "Balcony C1", "Balcony C2", "Balcony C3",
                                                    "Balcony C4"]
    assert {s["status"] for s in event["seats"]} == {"AVAILABLE"}
    assert [s["priceCents"] for s in event["seats"]][-1] == 3000


@pytest.mark.parametrize(("overrides", "field"), [
    ({"endsAt": "2030-05-01T19:00:00+00:00"}, "endsAt"),
    ({"capacity": 0}, "capacity"),
    ({"capacity": None, "priceCents": None}, "capacity"),
    ({"seatMap": {"sections": [{"name": "S", "priceCents": 1, "rows": [{"label": "A", "seats": 1}]}]}},
     "capacity"),
    ({"capacity": None, "priceCents": None,
      "seatMap": {"sections": [{"name": "S", "priceCents": 1, "rows": [{"label": "A", "seats": 60_000},
                                                                       {"label": "B", "seats": 60_000}]}]}},
     "seatMap"),
    ({"name": "x" * 201}, "name"),
    ({"category": ""}, "category"),
    ({"currency": "dollars"}, "currency"),
    ({"maxTicketsPerBooking": 0}, "maxTicketsPerBooking"),
    ({"priceCents": -1}, "priceCents"),
    ({"venueId": "nope"}, "venueId"),
])
async def test_bad_event_input_is_a_user_error(gql: GraphQLClient, admin: str, overrides: dict,
                                               field: str) -> None:
    venue = (await create_venue(gql, admin))["venue"]
    result = (await gql(CREATE_EVENT, {"input": event_input(venue["id"], **overrides)}, admin))["createEvent"]
    assert result["event"] is None
    assert [(e["code"], e["field"]) for e in result["errors"]] == [("INVALID_INPUT", field)]


async def test_bad_venue_input_and_unknown_venue(gql: GraphQLClient, admin: str) -> None:
    bad = await create_venue(gql, admin, name="n" * 201)
    assert [(e["code"], e["field"]) for e in bad["errors"]] == [("INVALID_INPUT", "name")]
    missing = (await gql(CREATE_EVENT, {"input": event_input("999999")}, admin))["createEvent"]
    assert [(e["code"], e["field"]) for e in missing["errors"]] == [("NOT_FOUND", "venueId")]


async def test_users_and_anonymous_cannot_write_the_catalogue(gql: GraphQLClient, user: str) -> None:
    assert [e["code"] for e in (await create_venue(gql, user))["errors"]] == ["FORBIDDEN"]
    anonymous = await gql(CREATE_VENUE, {"input": {"name": "A", "address": "B", "city": "C", "country": "D",
                                                   "capacity": 1}})
    assert [e["code"] for e in anonymous["createVenue"]["errors"]] == ["UNAUTHENTICATED"]
    publish = (await gql(PUBLISH, {"id": "1"}, user))["publishEvent"]
    assert [e["code"] for e in publish["errors"]] == ["FORBIDDEN"]


async def test_update_event_checks_the_expected_version(gql: GraphQLClient, admin: str) -> None:
    venue = (await create_venue(gql, admin))["venue"]
    event = (await gql(CREATE_EVENT, {"input": event_input(venue["id"])}, admin))["createEvent"]["event"]
    updated = (await gql(UPDATE, {"id": event["id"], "input": {"name": "Renamed"}, "v": event["version"]},
                         admin))["updateEvent"]
    assert updated == {"event": {"name": "Renamed", "version": event["version"] + 1}, "errors": []}
    stale = (await gql(UPDATE, {"id": event["id"], "input": {"name": "Again"}, "v": event["version"]},
                       admin))["updateEvent"]
    assert stale["errors"] == [{"code": "VERSION_CONFLICT", "currentVersion": event["version"] + 1,
                                "field": None}]
    bad = (await gql(UPDATE, {"id": event["id"], "input": {"endsAt": "2000-01-01T00:00:00+00:00"}}, admin))
    assert bad["updateEvent"]["errors"][0]["field"] == "endsAt"


async def test_search_filters_and_cursor_pagination(gql: GraphQLClient,
                                                    sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    for name, description, category in [("Jazz Night", "smooth saxophone", "concert"),
                                        ("Rock Festival", "loud guitars", "concert"),
                                        ("Chess Open", "a quiet tournament", "sport")]:
        await make_event(sessionmaker, name=name, description=description, category=category)
    await make_event(sessionmaker, name="Secret Draft", publish=False)

    everything = (await gql(EVENTS, {"first": 2}))["events"]
    assert everything["totalCount"] == 3  # the draft is not listed
    assert len(everything["edges"]) == 2 and everything["pageInfo"]["hasNextPage"] is True
    rest = (await gql(EVENTS, {"first": 2, "after": everything["pageInfo"]["endCursor"]}))["events"]
    assert len(rest["edges"]) == 1 and rest["pageInfo"]["hasNextPage"] is False
    names = {e["node"]["name"] for e in everything["edges"] + rest["edges"]}
    assert names == {"Jazz Night", "Rock Festival", "Chess Open"}

    async def search(**flt: Any) -> list[str]:
        return sorted(e["node"]["name"] for e in (await gql(EVENTS, {"filter": flt}))["events"]["edges"])

    assert await search(search="saxophone") == ["Jazz Night"]
    assert await search(search="guitars") == ["Rock Festival"]
    assert await search(search="hall") == ["Chess Open", "Jazz Night", "Rock Festival"]  # the venue's name
    assert await search(category="sport") == ["Chess Open"]
    assert await search(city="lisbon", onSaleOnly=True) == ["Chess Open", "Jazz Night", "Rock Festival"]
    assert await search(city="Porto") == []
    assert await search(startsAfter="2100-01-01T00:00:00+00:00") == []

    bad_cursor = await gql.raw(EVENTS, {"after": "???"})
    assert bad_cursor["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
    too_many = await gql.raw(EVENTS, {"first": 1000})
    assert too_many["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_a_page_of_events_costs_a_constant_number_of_queries(
        gql: GraphQLClient, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async def statements_for(count: int) -> int:
        executed: list[str] = []

        def count_statement(*args: Any) -> None:
            executed.append(args[2])

        sa_event.listen(engine.sync_engine, "before_cursor_execute", count_statement)
        try:
            result = await gql("""{ events(first: 50) { edges { node {
                id name availableSeats status venue { name city } } } } }""")
        finally:
            sa_event.remove(engine.sync_engine, "before_cursor_execute", count_statement)
        assert len(result["events"]["edges"]) == count
        return len(executed)

    await make_event(sessionmaker)
    one = await statements_for(1)
    for _ in range(49):
        await make_event(sessionmaker)
    assert await statements_for(50) == one


async def test_document_limits_refuse_deep_and_aliased_queries(settings: Settings, engine: AsyncEngine) -> None:
    async with running_app(replace(settings, max_query_depth=3, max_aliases=5)) as (_, gql):
        assert "errors" not in await gql.raw("{ events { edges { node { name } } } }")
        too_deep = await gql.raw("{ events { edges { node { venue { name } } } } }")
        assert "exceeds maximum operation depth" in too_deep["errors"][0]["message"]
        aliases = await gql.raw("{ " + " ".join(f"a{i}: __typename" for i in range(6)) + " }")
        assert "aliases" in aliases["errors"][0]["message"].lower()
