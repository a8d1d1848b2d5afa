"""What one request may cost: the document cost limit, seat pages, the query rate limit, and
validation messages that do not map the schema when it is hidden."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DomainError
from app.services import catalogue
from app.settings import Settings
from app.web import create_app
from tests.conftest import GraphQLClient, running_app
from tests.factories import SMALL_SEAT_MAP, make_event, make_users, token_for
from tests.servers import MESSAGE_TIMEOUT, init_connection, serve_in_process

SEAT_FIELDS = "id section row number label status priceCents"


def codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


def seated_map(sections: int, rows: int, seats: int) -> list[catalogue.Section]:
    return [catalogue.Section(name=f"S{s}", price_cents=1000,
                              rows=[catalogue.SeatRow(label=f"R{r}", seats=seats) for r in range(rows)])
            for s in range(sections)]


# --- the cost limit -------------------------------------------------------------------------

async def test_aliases_of_a_big_seat_list_are_refused_before_anything_runs(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    aliases = " ".join(f'a{i}: event(id: "{event.id}") {{ seats {{ {SEAT_FIELDS} }} }}' for i in range(10))
    body = await gql.raw(f"{{ {aliases} }}")
    assert body.get("data") is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "QUERY_TOO_COSTLY"
    # Ten times (the event, and a page of seats of seven fields each).
    assert error["extensions"]["cost"] == 10 * (1 + 1 + catalogue.SEATS_PAGE_SIZE * 7)
    assert error["extensions"]["limit"] == settings.max_query_cost
    # One of them, the seat-map page's read, is fine.
    one = await gql.raw(f'{{ event(id: "{event.id}") {{ seats {{ {SEAT_FIELDS} }} }} }}')
    assert "errors" not in one and len(one["data"]["event"]["seats"]) == 30


async def test_accepted_documents_report_their_cost(gql: GraphQLClient) -> None:
    # event 1 + id 1 + seats (1 + 10 x 2); events (1 + 5 x (edges 1 + node 1 + id 1, totalCount 1));
    # seatMap (1 + 100 sections x (name 1 + rows (1 + 50 x label 1))); __typename 1.
    body = await gql.raw("""{ __typename event(id: "1") { id seats(first: 10) { id label } }
      events(first: 5) { edges { node { id } } totalCount }
      other: event(id: "1") { seatMap { name rows { label } } } }""")
    expected = 1 + (1 + 1 + 1 + 10 * 2) + (1 + 5 * 4) + (1 + 1 + 100 * (1 + 1 + 50))
    assert body["extensions"]["cost"] == {"requested": expected, "limit": 50_000}


async def test_variables_fragments_and_defaults_are_counted(settings: Settings, engine: Any) -> None:
    query = """query($n: Int!) { event(id: "1") { ...s } }
      fragment s on Event { seats(first: $n) { ...f } }  fragment f on Seat { id label }"""
    async with running_app(replace(settings, max_query_cost=1000)) as (_, gql):
        assert (await gql.raw(query, {"n": 400}))["extensions"]["cost"]["requested"] == 1 + 1 + 400 * 2
        refused = await gql.raw(query, {"n": 500})
        assert codes(refused) == ["QUERY_TOO_COSTLY"] and refused["errors"][0]["extensions"]["cost"] == 1002
        # No `first`: the default page, the largest there is.
        assert codes(await gql.raw('{ event(id: "1") { seats { id } } }')) == ["QUERY_TOO_COSTLY"]
        # A variable's own default counts too.
        assert codes(await gql.raw('query($n: Int! = 999) { event(id: "1") { seats(first: $n) { id } } }')) \
            == ["QUERY_TOO_COSTLY"]


async def test_a_document_first_sent_with_bad_variables_is_still_costed(settings: Settings, engine: Any) -> None:
    """Costs are remembered per document and page size; a failed costing is not."""
    query = 'query($n: Int!, $e: ID!) { event(id: $e) { seats(first: $n) { id label } } }'
    async with running_app(replace(settings, max_query_cost=1000)) as (_, gql):
        assert (await gql.raw(query, {"n": 500, "e": None}))["data"] is None  # does not coerce
        assert codes(await gql.raw(query, {"n": 500, "e": "1"})) == ["QUERY_TOO_COSTLY"]
        assert (await gql.raw(query, {"n": 10, "e": "1"}))["extensions"]["cost"]["requested"] == 1 + 1 + 10 * 2


async def test_a_fragment_bomb_is_costed_quickly_and_refused(gql: GraphQLClient) -> None:
    levels = 16  # 65,536 spreads of seats if expanded
    fragments = [f"fragment f{i} on Event {{ ...f{i + 1} ...f{i + 1} }}" for i in range(levels)]
    fragments.append(f"fragment f{levels} on Event {{ seats(first: 10) {{ id }} }}")
    body = await asyncio.wait_for(gql.raw('{ event(id: "1") { ...f0 } } ' + " ".join(fragments)), 30)
    assert codes(body) == ["QUERY_TOO_COSTLY"]


async def test_subscriptions_are_costed_too(settings: Settings, engine: Any,
                                            sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    app = create_app(replace(settings, max_query_cost=100))
    cheap = "subscription($id: ID!) { eventAvailability(eventId: $id) { version } }"
    costly = "subscription($id: ID!) { eventAvailability(eventId: $id) { version changedSeats { seatId status } } }"
    async with serve_in_process(app) as address:
        ws = await init_connection(f"ws://{address}/graphql")
        try:
            assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
            for operation_id, query in (("costly", costly), ("cheap", cheap)):
                await ws.send(json.dumps({"id": operation_id, "type": "subscribe",
                                          "payload": {"query": query, "variables": {"id": str(event.id)}}}))
            refused = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
            assert (refused["type"], refused["id"]) == ("error", "costly"), refused
            assert refused["payload"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
            served = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
            assert (served["type"], served["id"]) == ("next", "cheap"), served
            assert served["payload"]["data"]["eventAvailability"]["version"] == event.version
        finally:
            await ws.close()


async def test_seat_maps_are_bounded_where_they_are_written(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    for shape in (seated_map(catalogue.MAX_SECTIONS + 1, 1, 1), seated_map(1, catalogue.MAX_ROWS_PER_SECTION + 1, 1)):
        with pytest.raises(DomainError) as refused:
            await make_event(sessionmaker, seat_map=shape)
        assert refused.value.field in ("seatMap", "seatMap.rows")


# --- seat pages -------------------------------------------------------------------------------

PAGE = """query($id: ID!, $first: Int!, $after: ID, $section: String) { event(id: $id) {
  seats(first: $first, after: $after, section: $section) { id label status } } }"""


async def test_seats_come_in_pages_that_add_up_to_the_whole_map(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    whole = (await gql(PAGE, {"id": str(event.id), "first": 100}))["event"]["seats"]
    assert len(whole) == 30
    pages, after = [], None
    while True:
        page = (await gql(PAGE, {"id": str(event.id), "first": 7, "after": after}))["event"]["seats"]
        pages.append(page)
        if len(page) < 7:
            break
        after = page[-1]["id"]
    assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
    assert [seat for page in pages for seat in page] == whole
    balcony = (await gql(PAGE, {"id": str(event.id), "first": 5, "after": whole[22]["id"],
                                "section": "Balcony"}))["event"]["seats"]
    assert [seat["label"] for seat in balcony] == ["Balcony C4", "Balcony C5", "Balcony C6", "Balcony C7",
                                                   "Balcony C8"]
    for first, after in ((catalogue.SEATS_PAGE_SIZE + 1, None), (-1, None), (5, "not-an-id")):
        body = await gql.raw(PAGE, {"id": str(event.id), "first": first, "after": after})
        assert codes(body) == ["INVALID_INPUT"], body


async def test_an_unpaged_read_of_a_big_event_gets_one_page(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=seated_map(1, 50, 110))  # 5,500 seats
    seats = (await gql(f'{{ event(id: "{event.id}") {{ seats {{ id }} }} }}'))["event"]["seats"]
    assert len(seats) == catalogue.SEATS_PAGE_SIZE
    rest = (await gql(PAGE, {"id": str(event.id), "first": catalogue.SEATS_PAGE_SIZE,
                             "after": seats[-1]["id"]}))["event"]["seats"]
    assert len(rest) == 5500 - catalogue.SEATS_PAGE_SIZE


# --- the query rate limit ---------------------------------------------------------------------

async def test_queries_are_rate_limited_per_caller(settings: Settings, engine: Any,
                                                   sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    [user] = await make_users(sessionmaker, 1)
    async with running_app(replace(settings, query_rate_limit_per_minute=3)) as (_, gql):
        for _ in range(3):
            assert (await gql.http.post("/graphql", json={"query": "{ __typename }"})).status_code == 200
        refused = await gql.http.post("/graphql", json={"query": "{ events { totalCount } }"})
        assert refused.status_code == 429
        [error] = refused.json()["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert 1 <= error["extensions"]["retryAfterSeconds"] <= 60
        assert refused.headers["retry-after"] == str(error["extensions"]["retryAfterSeconds"])
        # A signed-in caller is counted on its own, not with everyone behind the same address.
        token = token_for(user, settings)
        assert (await gql("{ me { id } }", token=token))["me"]["id"] == str(user.id)
        # Mutations have their own limit.
        logout = await gql("mutation { logout(refreshToken: \"x\") { ok } }")
        assert "logout" in logout


# --- suggestions ------------------------------------------------------------------------------

MISSPELT = [
    '{ evnt(id: "1") { id } }',                                 # a field
    '{ event(idd: "1") { id } }',                               # an argument
    'query($f: EventFiltr) { events(filter: $f) { totalCount } }',  # a type
    '{ myBookings(status: PENDIN) { totalCount } }',            # an enum value
]


@pytest.mark.parametrize("introspection", [True, False])
async def test_did_you_mean_is_only_said_when_the_schema_is_public(
        settings: Settings, engine: Any, introspection: bool) -> None:
    async with running_app(replace(settings, graphql_introspection=introspection)) as (_, gql):
        for query in MISSPELT:
            messages = " ".join(error["message"] for error in (await gql.raw(query))["errors"])
            assert ("Did you mean" in messages) is introspection, messages
        body = await gql.raw('query($f: EventFilter) { events(filter: $f) { totalCount } }',
                             {"f": {"cityy": "Lisbon"}})
        assert ("Did you mean" in body["errors"][0]["message"]) is introspection, body


# --- the seat-map page reads every page -------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite"])  # about the page, not the storage
async def test_the_seat_map_page_shows_every_seat_of_a_big_event(
        sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    from playwright.async_api import async_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, open_page, require_chromium

    require_chromium()
    event = await make_event(sessionmaker, seat_map=seated_map(1, 50, 110))  # 5,500 seats: two pages
    problems: list[str] = []
    async with serve_in_process(create_app(settings)) as address, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            _, page = await open_page(browser, problems)
            await page.goto(f"http://{address}/#event/{event.id}")
            await page.wait_for_selector('#live-state[data-state="live"]')
            await page.wait_for_selector("#seat-map .seat >> nth=5499")
            assert await page.locator("#seat-map .seat").count() == 5500
        finally:
            await browser.close()
    assert problems == []
