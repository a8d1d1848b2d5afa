"""Hostile input: generated GraphQL documents over the whole schema, and the limits on what a
request may be (body size, malformed JSON, list sizes, websocket frames).

Whatever comes in, the answer is JSON, never a 500, never a server fault, and never shows
internals (stack traces, SQL, driver names). On SQLite, since the checks are about the HTTP
and GraphQL layers; PostgreSQL only where it differs (NUL characters).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import graphql
import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries
from sqlalchemy import delete, insert, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.cli import MAX_WEBSOCKET_FRAME
from app.errors import DomainError
from app.logs import JsonFormatter, PlainFormatter
from app.models import Booking, Event, Role, User, utcnow
from app.schema.schema import create_schema
from app.services.catalogue import MAX_PRICE_CENTS, MAX_TICKETS_PER_BOOKING
from app.settings import ConfigurationError, Settings, load_settings
from app.web import MAX_BODY_BYTES, create_app
from tests.conftest import GraphQLClient, free_port, running_app
from tests.factories import SMALL_SEAT_MAP, make_event, make_user, token_for
from tests.servers import MESSAGE_TIMEOUT, STARTUP_TIMEOUT, AppProcess, serve_in_process

LEAKS = ("Traceback", 'File "', "sqlalchemy", "asyncpg", "sqlite3", "aiosqlite", "psycopg",
         "IntegrityError", "OperationalError")
EXAMPLES = 120  # per operation type and mode: bounded, about 10-20 s each on a loaded machine
REQUEST_TIMEOUT = 30.0  # turns a hang into a failure; not a timing assertion


@pytest.fixture
def backend() -> str:
    return "sqlite"


def check_clean(response: httpx.Response) -> dict[str, Any]:
    """The response is JSON, not a server fault, and shows nothing of the internals."""
    assert response.status_code < 500, response.text
    leaked = [word for word in LEAKS if word.lower() in response.text.lower()]
    assert not leaked, f"{leaked} in {response.text[:2000]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert code != "INTERNAL_SERVER_ERROR", f"server fault: {error}"
    return body


CLIENT_CODES = {"INVALID_INPUT", "BAD_REQUEST", "UNAUTHENTICATED", "GRAPHQL_PARSE_FAILED",
                "GRAPHQL_VALIDATION_FAILED", "PAYLOAD_TOO_LARGE", "QUERY_TOO_COSTLY", "RATE_LIMITED"}


def client_error_codes(body: dict[str, Any]) -> set[str]:
    """The codes of a refused request's top-level errors, each one a client error (and some)."""
    codes = {(error.get("extensions") or {}).get("code") for error in body.get("errors") or []}
    assert codes and codes <= CLIENT_CODES, body
    return codes  # type: ignore[return-value]


async def post_json(gql: GraphQLClient, payload: Any, token: str | None = None) -> httpx.Response:
    """POST `payload` as JSON the way a client in any language may: lone surrogates as their
    escapes (httpx's own encoding would refuse them)."""
    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return await gql.http.post("/graphql", content=json.dumps(payload), headers=headers)


def datetimes() -> st.SearchStrategy[graphql.ValueNode]:
    """DateTime literals: mostly valid ISO-8601 (some naive), sometimes garbage."""
    valid = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                         timezones=st.none() | st.just(UTC)).map(datetime.isoformat)
    return st.one_of(valid, valid, st.text(max_size=30)).map(lambda text: graphql.StringValueNode(value=text))


@pytest.fixture
async def fuzz_target(settings: Settings, engine: AsyncEngine,
                      sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[dict[str, Any]]:
    """The app with a few events (small ids, which the generators hit), a user and an admin."""
    await make_event(sessionmaker, capacity=5)
    await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    await make_event(sessionmaker, capacity=1, publish=False)
    user = await make_user(sessionmaker)
    admin = await make_user(sessionmaker, role=Role.ADMIN)
    async with running_app(settings) as (_, gql):
        yield {"gql": gql, "loop": asyncio.get_running_loop(),
               "tokens": [None, token_for(user, settings), token_for(admin, settings)]}


def run_from_thread(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(REQUEST_TIMEOUT)


def fuzz(target: dict[str, Any], documents: st.SearchStrategy[str]) -> Callable[[], None]:
    """A Hypothesis test, to run in a worker thread, that POSTs each generated document to the
    app on the test's event loop as a random caller (anonymous, user or admin)."""
    gql: GraphQLClient = target["gql"]

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                         suppress_health_check=list(HealthCheck))
    @given(document=documents, token=st.sampled_from(target["tokens"]))
    def run(document: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = run_from_thread(target["loop"], gql.http.post(
            "/graphql", json={"query": document}, headers=headers))
        check_clean(response)

    return run


def _schema(settings: Settings) -> graphql.GraphQLSchema:
    return create_schema(settings)._schema


SCALARS = {"DateTime": datetimes()}


@pytest.mark.parametrize("mode", [Mode.POSITIVE, Mode.NEGATIVE], ids=["valid", "invalid"])
async def test_generated_queries_never_fail_the_server(fuzz_target: dict[str, Any], settings: Settings,
                                                       mode: Mode) -> None:
    documents = queries(_schema(settings), custom_scalars=SCALARS, mode=mode)
    await asyncio.to_thread(fuzz(fuzz_target, documents))


@pytest.mark.parametrize("mode", [Mode.POSITIVE, Mode.NEGATIVE], ids=["valid", "invalid"])
async def test_generated_mutations_never_fail_the_server(fuzz_target: dict[str, Any], settings: Settings,
                                                         mode: Mode) -> None:
    documents = mutations(_schema(settings), custom_scalars=SCALARS, mode=mode)
    await asyncio.to_thread(fuzz(fuzz_target, documents))


# PostgreSQL refuses NUL in text ("invalid byte sequence for encoding UTF8: 0x00"), SQLite
# stores it: what the generators above find harmless on SQLite is a server fault on PostgreSQL.
NUL_INPUTS = [
    ("mutation($i: RegisterInput!) { register(input: $i) { errors { code } } }",
     {"i": {"email": "a\x00@example.com", "password": "long enough", "name": "N"}}),
    ("mutation($i: RegisterInput!) { register(input: $i) { errors { code } } }",
     {"i": {"email": "b@example.com", "password": "long enough", "name": "N\x00"}}),
    ("mutation($i: LoginInput!) { login(input: $i) { errors { code } } }",
     {"i": {"email": "a\x00@example.com", "password": "long enough"}}),
    ("query($s: String) { events(filter: {search: $s}) { totalCount } }", {"s": "rock\x00"}),
    ("query($s: String) { events(filter: {city: $s}) { totalCount } }", {"s": "Lisbon\x00"}),
    ('{ events(filter: {category: "jazz\\u0000"}) { totalCount } }', {}),
    ('{ events(filter: {category: "jazz\\u{0}"}) { totalCount } }', {}),  # GraphQL's other escape
    ('{ events(filter: {city: """Lis\x00bon"""}) { totalCount } }', {}),  # raw, in a block string
    ("mutation($i: RegisterInput!) { register(input: $i) { errors { code } } }",
     {"i": {"email": "c@example.com", "password": "long enough", "name": "\ud800"}}),  # lone surrogate
    ("query($s: String) { events(filter: {search: $s}) { totalCount } }", {"s": "rock \udfff"}),
    ('{ events(filter: {search: "\\uD800"}) { totalCount } }', {}),  # an escape that is no character
]


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize(("query", "variables"), NUL_INPUTS, ids=[
    "register-email", "register-name", "login", "search", "city", "literal", "literal-braces", "block-string",
    "surrogate-input", "surrogate-variable", "surrogate-escape"])
async def test_nul_characters_are_refused_not_a_server_fault(gql: GraphQLClient, query: str,
                                                             variables: dict[str, Any]) -> None:
    body = check_clean(await post_json(gql, {"query": query, "variables": variables}))
    assert client_error_codes(body) <= {"INVALID_INPUT", "GRAPHQL_PARSE_FAILED"}, body


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_ticket_code_with_nul_is_not_found(gql: GraphQLClient) -> None:
    try:
        response = await gql.http.get("/tickets/abc%00def")
    except Exception as error:  # the in-process transport re-raises what the app let escape
        pytest.fail(f"the app raised {type(error).__name__}")
    assert response.status_code == 404


# --- explicit limits ----------------------------------------------------------------------

async def test_oversized_bodies_are_refused_declared_or_streamed(gql: GraphQLClient) -> None:
    padding = "x" * (MAX_BODY_BYTES + 1)
    declared = await gql.http.post("/graphql", json={"query": "{ __typename }", "variables": {"p": padding}})
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"query": "{ __typename }", "variables": {"p": "'
        for _ in range(MAX_BODY_BYTES // 8192 + 2):
            yield b"x" * 8192
        yield b'"}}'

    streamed = await gql.http.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert "Traceback" not in streamed.text
    # Just under the limit is served.
    fits = await gql.http.post("/graphql", json={"query": "{ __typename }",
                                                 "variables": {"p": "x" * (MAX_BODY_BYTES - 100)}})
    assert fits.status_code == 200 and fits.json()["data"] == {"__typename": "Query"}


MALFORMED_BODIES = [b"{", b"not json", b'{"query": ', b"\xff\xfe", b"[]", b"[1]", b"{}", b'{"query": 42}',
                    b'{"query": "{ me { id } }", "variables": "nope"}',
                    b'{"query": "{ __typename }", "variables": [1]}',
                    b'{"query": "{ __typename }", "extensions": 1}']
# Valid JSON that is not an object, and bytes that are not UTF-8: strawberry alone would
# fail on them with a 500 (app/web.py GraphQLApp.parse_json refuses them).
NOT_AN_OBJECT = [b'"a string"', b"null", b"1", b"true", b'{"query": "\x80"}']


async def _assert_clean_400(gql: GraphQLClient, body: bytes) -> None:
    try:
        response = await gql.http.post("/graphql", content=body, headers={"content-type": "application/json"})
    except Exception as error:  # the in-process transport re-raises what the app let escape
        pytest.fail(f"the app raised {type(error).__name__}: {error}")
    assert response.status_code == 400, response.text
    leaked = [word for word in LEAKS if word.lower() in response.text.lower()]
    assert not leaked, response.text


@pytest.mark.parametrize("body", MALFORMED_BODIES)
async def test_malformed_json_is_a_clean_400(gql: GraphQLClient, body: bytes) -> None:
    await _assert_clean_400(gql, body)


@pytest.mark.parametrize("body", NOT_AN_OBJECT)
async def test_json_that_is_not_an_object_is_a_clean_400(gql: GraphQLClient, body: bytes) -> None:
    await _assert_clean_400(gql, body)


async def test_oversized_lists_are_invalid_input(gql: GraphQLClient, settings: Settings,
                                                 sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    token = token_for(await make_user(sessionmaker), settings)
    reserve = """mutation($input: ReserveInput!) { reserveSeats(input: $input) {
      booking { id } errors { code field } } }"""
    too_many = [str(n) for n in range(1, 102)]
    refused = (await gql(reserve, {"input": {"eventId": str(event.id), "seatIds": too_many}}, token))["reserveSeats"]
    assert refused == {"booking": None, "errors": [{"code": "INVALID_INPUT", "field": "seatIds"}]}

    for query in ("query($n: Int!) { myBookings(first: $n) { totalCount } }",
                  "query($n: Int!) { events(first: $n) { totalCount } }"):
        for first in (101, -1, 2**31 - 1):
            body = await gql.raw(query, {"n": first}, token)
            assert body["data"] is None, body
            # So large a page is refused by the cost limit before the resolver would refuse it.
            expected = "QUERY_TOO_COSTLY" if first == 2**31 - 1 else "INVALID_INPUT"
            assert [e["extensions"]["code"] for e in body["errors"]] == [expected], body
        assert "errors" not in await gql.raw(query, {"n": 100}, token)


async def test_a_websocket_frame_over_the_limit_is_refused(settings: Settings, engine: AsyncEngine) -> None:
    """Served the way `bookmyevent serve` serves (ws_max_size from app/cli.py): a frame over
    the limit closes that connection with 1009 (message too big); the server stays up."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws_max_size=MAX_WEBSOCKET_FRAME,
                                           ws_per_message_deflate=False, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)
        url = f"ws://127.0.0.1:{port}/graphql"
        async with connect(url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                           max_size=None, open_timeout=MESSAGE_TIMEOUT) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
                "query": "{ __typename }", "variables": {"p": "x" * MAX_WEBSOCKET_FRAME}}}))
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(MESSAGE_TIMEOUT):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        # A frame under the limit on a new connection still works.
        async with connect(url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                           open_timeout=MESSAGE_TIMEOUT) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
                "query": "query($p: ID!) { event(id: $p) { id } }", "variables": {"p": "x" * 1000}}}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
            assert answer["type"] == "next" and answer["payload"]["data"] == {"event": None}, answer
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STARTUP_TIMEOUT)


# --- introspection ------------------------------------------------------------------------

INTROSPECTION = "{ __schema { queryType { name } } }"


async def test_introspection_is_on_by_default(gql: GraphQLClient) -> None:
    assert (await gql(INTROSPECTION))["__schema"] == {"queryType": {"name": "Query"}}


async def test_introspection_can_be_switched_off(settings: Settings, engine: AsyncEngine) -> None:
    async with running_app(replace(settings, graphql_introspection=False)) as (_, gql):
        for document in (INTROSPECTION, '{ __type(name: "Query") { name } }'):
            response = await gql.http.post("/graphql", json={"query": document})
            body = check_clean(response)
            assert body.get("data") is None and body["errors"], body
            assert "introspection" in body["errors"][0]["message"].lower()
        # Ordinary queries, and __typename, still work.
        assert await gql("{ __typename events { totalCount } }") == {"__typename": "Query",
                                                                      "events": {"totalCount": 0}}


@pytest.mark.parametrize(("raw", "expected"), [("0", False), ("false", False), ("No", False), ("OFF", False),
                                               ("1", True), ("true", True), ("yes", True), ("", True)])
def test_graphql_introspection_setting_from_the_environment(raw: str, expected: bool) -> None:
    assert load_settings({"GRAPHQL_INTROSPECTION": raw}).graphql_introspection is expected


def test_a_bad_introspection_setting_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="GRAPHQL_INTROSPECTION"):
        load_settings({"GRAPHQL_INTROSPECTION": "maybe"})




async def test_client_errors_are_not_logged_as_server_errors(gql: GraphQLClient,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Anyone can send these as fast as they like: a log line with a stack trace for each
    would bury the real faults (and fill the disk)."""
    with caplog.at_level(logging.ERROR):
        await gql.raw('{ eventSales(eventId: "1") { capacity } }')  # UNAUTHENTICATED
        await gql.raw("{ myBookings(first: 1000) { totalCount } }")  # INVALID_INPUT (anonymous: empty)
        await gql.raw("{ events(first: 1000) { totalCount } }")  # INVALID_INPUT
        await gql.raw("{ noSuchField }")  # validation
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]


# --- inputs that used to reach the database or Python unchecked ---------------------------

def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


BAD_EVENT_CURSORS = [
    _cursor("2030-01-01T00:00:00+00:00|99999999999999999999"),  # id past BIGINT
    _cursor("2030-01-01T00:00:00+00:00|0"), _cursor("2030-01-01T00:00:00+00:00|-5"),
    _cursor("2030-01-01T00:00:00|1"),  # no timezone
    _cursor("0001-01-01T00:00:00+14:00|1"), _cursor("9999-12-31T23:59:59-14:00|1"),  # no UTC for these
    _cursor("not a date|1"), _cursor("\udc80|1".encode("utf-8", "surrogateescape").decode("latin-1")),
    "!!!", "",
]
EXTREME_DATES = ["2030-01-01T00:00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                 "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2030-13-01T00:00:00Z", "+12345-01-01T00:00:00Z"]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_cursors_and_dates_out_of_range_are_invalid_input(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await make_event(sessionmaker)
    token = token_for(await make_user(sessionmaker), settings)
    for cursor in BAD_EVENT_CURSORS:
        body = check_clean(await post_json(gql, {"query": "query($a: String) { events(after: $a) { totalCount } }",
                                                 "variables": {"a": cursor}}))
        if cursor:  # an empty cursor means the first page
            assert client_error_codes(body) == {"INVALID_INPUT"}, (cursor, body)
    for cursor in ("99999999999999999999", "-1", "0", "1e3"):
        body = check_clean(await post_json(gql, {"query": "query($a: String) { myBookings(after: $a) { totalCount } }",
                                                 "variables": {"a": cursor}}, token))
        assert client_error_codes(body) == {"INVALID_INPUT"}, (cursor, body)
    for date in EXTREME_DATES:
        for field in ("startsAfter", "startsBefore"):
            as_variable = check_clean(await post_json(gql, {
                "query": f"query($d: DateTime) {{ events(filter: {{{field}: $d}}) {{ totalCount }} }}",
                "variables": {"d": date}}))
            as_literal = check_clean(await post_json(gql, {
                "query": f'{{ events(filter: {{{field}: "{date}"}}) {{ totalCount }} }}'}))
            for body in (as_variable, as_literal):
                assert client_error_codes(body) <= {"INVALID_INPUT", "GRAPHQL_VALIDATION_FAILED"}, (date, body)
    # What the scalar takes it gives back in UTC, and the first page's cursor leads on.
    page = await gql('{ events(first: 1, filter: {startsAfter: "2000-01-01T05:00:00+05:00"}) '
                     "{ edges { cursor } } }")
    cursor = page["events"]["edges"][0]["cursor"]
    assert await gql("query($a: String) { events(after: $a) { totalCount edges { cursor } } }",
                     {"a": cursor}) == {"events": {"totalCount": 1, "edges": []}}


@pytest.mark.parametrize("nesting", [33, 1000, 100_000])
async def test_deeply_nested_json_is_a_clean_400(gql: GraphQLClient, nesting: int) -> None:
    bodies = ['{"query": "{ __typename }", "variables": {"v": ' + "[" * nesting + "]" * nesting + "}}",
              '{"query": "{ __typename }", "extensions": ' + '{"a": ' * nesting + "1" + "}" * nesting + "}",
              "[" * nesting + "]" * nesting]
    for body in bodies:
        response = await gql.http.post("/graphql", content=body, headers={"content-type": "application/json"})
        too_large = len(body) > MAX_BODY_BYTES
        assert response.status_code == (413 if too_large else 400), response.text
        assert client_error_codes(response.json()) == {"PAYLOAD_TOO_LARGE" if too_large else "BAD_REQUEST"}
    if nesting < 2000:  # (a URL has room for so much)
        nested_get = await gql.http.get("/graphql", params={
            "query": "{ __typename }", "variables": '{"v": ' + "[" * nesting + "]" * nesting + "}"})
        assert nested_get.status_code == 400 and client_error_codes(nested_get.json()) == {"BAD_REQUEST"}
    # What real requests nest (a seat map in an input) is far from the limit.
    fits = '{"query": "{ __typename }", "variables": {"v": ' + "[" * 20 + "]" * 20 + "}}"
    response = await gql.http.post("/graphql", content=fits, headers={"content-type": "application/json"})
    assert response.json()["data"] == {"__typename": "Query"}


async def test_client_errors_over_http_are_graphql_json_and_never_logged(
        gql: GraphQLClient, caplog: pytest.LogCaptureFixture) -> None:
    """A subscription (only websockets serve them), a syntax error, a non-object body: each a
    4xx with a GraphQL error the client can read, and nothing at ERROR in the log."""
    subscription = 'subscription { eventAvailability(eventId: "1") { version } }'
    with caplog.at_level(logging.INFO):
        for response in (await gql.http.post("/graphql", json={"query": subscription}),
                         await gql.http.get("/graphql", params={"query": subscription})):
            assert response.status_code == 400, response.text
            assert client_error_codes(response.json()) == {"BAD_REQUEST"}
            assert "subscriptions" in response.json()["errors"][0]["message"]
        syntax = check_clean(await gql.http.post("/graphql", json={"query": "{ events { "}))
        assert client_error_codes(syntax) == {"GRAPHQL_PARSE_FAILED"}
        assert syntax["errors"][0]["message"].startswith("Syntax Error")
        assert syntax["errors"][0]["locations"] == [{"line": 1, "column": 12}]
        for body in (b"[]", b"1", b"{"):
            response = await gql.http.post("/graphql", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400 and client_error_codes(response.json()) == {"BAD_REQUEST"}
    noisy = [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]
    assert not noisy, [record.getMessage() for record in noisy]


async def test_a_client_hanging_up_mid_body_is_no_error(settings: Settings, engine: AsyncEngine,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        async with serve_in_process(create_app(settings)) as address:
            host, port = address.split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"query\": ")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            async with httpx.AsyncClient(base_url=f"http://{address}", timeout=MESSAGE_TIMEOUT) as http:
                async with asyncio.timeout(MESSAGE_TIMEOUT):  # the server noticed, and still serves
                    while not any("disconnected" in record.getMessage() for record in caplog.records):
                        await asyncio.sleep(0.05)
                assert (await http.post("/graphql", json={"query": "{ __typename }"})).status_code == 200
    noisy = [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]
    assert not noisy, [record.getMessage() for record in noisy]


# --- money is 64-bit end to end -----------------------------------------------------------

MONEY_COLUMNS = {("events", "price_cents"), ("seats", "price_cents"), ("bookings", "total_cents"),
                 ("payments", "amount_cents")}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_revenue_past_32_bits_is_served_and_totals_always_fit(
        gql: GraphQLClient, settings: Settings, engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    # The dearest place times the most places per booking still fits the contract's Int totalCents.
    assert MAX_PRICE_CENTS * MAX_TICKETS_PER_BOOKING <= 2**31 - 1
    with pytest.raises(DomainError) as refused:
        await make_event(sessionmaker, price_cents=MAX_PRICE_CENTS + 1)
    assert refused.value.code == "INVALID_INPUT" and refused.value.field == "priceCents"

    event = await make_event(sessionmaker, capacity=300, price_cents=MAX_PRICE_CENTS,
                             max_tickets_per_booking=MAX_TICKETS_PER_BOOKING)
    token = token_for(await make_user(sessionmaker), settings)
    admin = token_for(await make_user(sessionmaker, role=Role.ADMIN), settings)
    for _ in range(3):
        reserved = (await gql("""mutation($e: ID!, $n: Int!) { reserveSeats(input: {eventId: $e, quantity: $n}) {
            booking { id totalCents } errors { code } } }""", {"e": str(event.id), "n": MAX_TICKETS_PER_BOOKING},
            token))["reserveSeats"]
        assert reserved["booking"]["totalCents"] == MAX_PRICE_CENTS * MAX_TICKETS_PER_BOOKING, reserved
        confirmed = (await gql("""mutation($b: ID!) { confirmBooking(input: {bookingId: $b, paymentToken: "tok_visa"}) {
            payment { amountCents } errors { code } } }""", {"b": reserved["booking"]["id"]}, token))["confirmBooking"]
        assert confirmed == {"payment": {"amountCents": MAX_PRICE_CENTS * MAX_TICKETS_PER_BOOKING}, "errors": []}

    revenue = 3 * MAX_PRICE_CENTS * MAX_TICKETS_PER_BOOKING
    assert revenue > 2**32  # past what an unsigned 32-bit sum would hold, too
    sales = "query($e: ID!) { eventSales(eventId: $e) { revenue placesSold } }"
    assert await gql(sales, {"e": str(event.id)}, admin) == {
        "eventSales": {"revenue": str(revenue), "placesSold": 3 * MAX_TICKETS_PER_BOOKING}}
    # The 32-bit field says why it cannot answer, as a client error, not a masked fault.
    body = await gql.raw("query($e: ID!) { eventSales(eventId: $e) { revenueCents } }", {"e": str(event.id)}, admin)
    assert [e["extensions"]["code"] for e in body["errors"]] == ["INT_OVERFLOW"], body
    assert "revenue" in body["errors"][0]["message"]

    if engine.dialect.name == "postgresql":  # SQLite's INTEGER is 64-bit whatever it is called
        async with engine.connect() as connection:
            types = {(row.table_name, row.column_name): row.data_type for row in await connection.execute(text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema()"))}
        assert {column: types[column] for column in MONEY_COLUMNS} == dict.fromkeys(MONEY_COLUMNS, "bigint")
        # A stored total past 32 bits (a booking made before the caps, say) is kept exactly.
        async with sessionmaker() as session:
            await session.execute(update(Booking).where(Booking.event_id == event.id).values(total_cents=2**40))
            await session.commit()
        assert (await gql(sales, {"e": str(event.id)}, admin))["eventSales"]["revenue"] == str(3 * 2**40)


# --- accounts that went away --------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_deleted_users_token_is_unauthenticated_not_a_fault(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    user = await make_user(sessionmaker)
    token = token_for(user, settings)  # still valid for minutes after the account is gone
    # Made first: SQLite would hand the deleted row's id to the next user inserted.
    other = token_for(await make_user(sessionmaker), settings)
    async with sessionmaker() as session:
        await session.execute(delete(User).where(User.id == user.id))
        await session.commit()
    reserve = """mutation($e: ID!) { reserveSeats(input: {eventId: $e, quantity: 1, idempotencyKey: "k1"}) {
        booking { id } errors { code } } }"""
    assert (await gql(reserve, {"e": str(event.id)}, token))["reserveSeats"] == {
        "booking": None, "errors": [{"code": "UNAUTHENTICATED"}]}
    sold_out = await make_event(sessionmaker, capacity=1)
    assert (await gql(reserve, {"e": str(sold_out.id)}, other))["reserveSeats"]["errors"] == []
    join = """mutation($e: ID!) { joinWaitlist(input: {eventId: $e, quantity: 1}) { errors { code } } }"""
    joined = (await gql(join, {"e": str(sold_out.id)}, token))["joinWaitlist"]
    assert joined == {"errors": [{"code": "UNAUTHENTICATED"}]}
    assert (await gql("{ me { id } }", token=token)) == {"me": None}
    # Nothing was taken for the ghost.
    async with sessionmaker() as session:
        assert (await session.get(Event, event.id)).available == event.capacity  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_logged_database_errors_carry_no_values(engine: AsyncEngine) -> None:
    """The engine hides parameters, and the log formatters hide what the database quotes back
    (its DETAIL, the text it could not cast): emails and keys stay out of the logs."""
    user = {"email": "secret.person@example.com", "name": "N", "password_hash": "!", "role": Role.USER,
            "created_at": utcnow()}
    failing = [insert(User).values(user), insert(User).values(user),
               text("SELECT CAST(:key AS integer)").bindparams(key="secret-idempotency-key")]
    errors = []
    for statement in failing:
        try:
            async with engine.begin() as connection:
                await connection.execute(statement)
        except DBAPIError as error:
            errors.append(error)
    assert len(errors) == 2
    for error in errors:
        assert "parameters hidden" in str(error)
        record = logging.LogRecord("app", logging.ERROR, __file__, 1, "%s", (error,),
                                   (type(error), error, error.__traceback__))
        for formatter in (JsonFormatter(), PlainFormatter("%(message)s")):
            logged = formatter.format(record)
            assert "Traceback" in logged and "secret" not in logged, logged


# --- the classes above, generated, against a real server whose log must stay clean -------

ODD_TEXT = st.text(st.one_of(st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ufffe", "\u202e"]),
                             st.characters()), max_size=12)
TEXT_DOCUMENTS = [  # each takes $s: String (or ID) somewhere it reaches a service or the database
    "query($s: String) { events(filter: {search: $s}) { totalCount } }",
    "query($s: String) { events(filter: {city: $s, category: $s}) { totalCount } }",
    "query($s: String) { events(after: $s) { totalCount } }",
    "query($s: String) { myBookings(after: $s) { totalCount } }",
    "query($s: ID!) { event(id: $s) { id } booking(id: $s) { id } }",
    "mutation($s: String!) { register(input: {email: $s, password: $s, name: $s}) { errors { code } } }",
    "mutation($s: String!) { login(input: {email: $s, password: $s}) { errors { code } } }",
    "mutation($s: String!) { refreshToken(refreshToken: $s) { errors { code } } }",
    "mutation($s: ID!) { reserveSeats(input: {eventId: $s, quantity: 1, idempotencyKey: $s}) { errors { code } } }",
]
DATE_DOCUMENTS = ["query($s: DateTime) { events(filter: {startsAfter: $s}) { totalCount } }",
                  "query($s: DateTime) { events(filter: {startsBefore: $s}) { totalCount } }"]


def _escapes() -> st.SearchStrategy[str]:
    """GraphQL string escapes, fixed-width and braced, of every code point and some beyond."""
    code_points = st.integers(0, 0x110010)
    return st.one_of(code_points.map(lambda n: f"\\u{{{n:x}}}"), st.integers(0, 0xFFFF).map(lambda n: f"\\u{n:04X}"),
                     st.sampled_from(["\\u{0}", "\\u0000", "\\uD800", "\\uDFFF", "\\uD83D\\uDE00", "\\u{}", "\\x00"]))


def _cursors() -> st.SearchStrategy[str]:
    dates = st.one_of(st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat), st.text(max_size=10))
    ids = st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=5))
    raw = st.builds(lambda d, i: f"{d}|{i}", dates, ids)
    return st.one_of(raw.map(lambda t: base64.urlsafe_b64encode(t.encode("utf-8", "surrogatepass")).decode()), raw)


def _dates() -> st.SearchStrategy[str]:
    offsets = st.integers(-14 * 60, 14 * 60).map(
        lambda m: f"{'+' if m >= 0 else '-'}{abs(m) // 60:02d}:{abs(m) % 60:02d}")
    extremes = st.sampled_from(["0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "1899-12-31T23:59:59",
                                "9000-01-01T00:00:00", "2030-02-30T00:00:00", "2030-01-01T24:00:00"])
    return st.one_of(st.builds(lambda d, o: d + o, extremes, offsets | st.just("") | st.just("Z")),
                     st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat), ODD_TEXT)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ODD_TEXT


def hostile_bodies() -> st.SearchStrategy[str]:
    """Request bodies of every class the server once failed on."""
    texts = st.builds(lambda doc, s: json.dumps({"query": doc, "variables": {"s": s}}),
                      st.sampled_from(TEXT_DOCUMENTS), ODD_TEXT | _cursors())
    escapes = st.builds(lambda e: json.dumps({"query": f'{{ events(filter: {{search: "a{e}b"}}) {{ totalCount }} }}'}),
                        _escapes())
    dates = st.builds(lambda doc, d: json.dumps({"query": doc, "variables": {"s": d}}),
                      st.sampled_from(DATE_DOCUMENTS), _dates())
    nesting = st.builds(lambda depth, opener, closer: '{"query": "{ __typename }", "variables": {"v": '
                        + opener * depth + closer * depth + "}}",
                        st.integers(1, 20_000), st.just("["), st.just("]")) | \
        st.integers(1, 20_000).map(lambda depth: "[" * depth + "]" * depth)
    not_objects = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) |
                               st.dictionaries(ODD_TEXT, inner, max_size=3), max_leaves=8).map(json.dumps)
    odd_fields = st.builds(lambda q, v: json.dumps({"query": q, "variables": v}),
                           JSON_SCALARS | st.sampled_from(TEXT_DOCUMENTS), JSON_SCALARS)
    return st.one_of(texts, escapes, dates, nesting, not_objects, odd_fields)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_hostile_inputs_leave_no_traceback_in_the_server_log(
        settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession],
        redis_url: str, tmp_path: Any) -> None:
    """`bookmyevent serve` (PostgreSQL, Redis, JSON logs) takes generated hostile bodies of
    every class above: each answered as a client error or as data, and afterwards its log
    holds no traceback and nothing at ERROR."""
    await make_event(sessionmaker)
    token = token_for(await make_user(sessionmaker), settings)
    server = AppProcess(database_url=settings.database_url, redis_url=redis_url, log_path=tmp_path / "server.log")
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=REQUEST_TIMEOUT) as http:
            loop = asyncio.get_running_loop()

            @hypothesis_settings(max_examples=4 * EXAMPLES, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck))
            @given(body=hostile_bodies(), signed_in=st.booleans())
            def run(body: str, signed_in: bool) -> None:
                headers = {"content-type": "application/json", **({"Authorization": f"Bearer {token}"}
                                                                   if signed_in else {})}
                response = run_from_thread(loop, http.post("/graphql", content=body, headers=headers))
                answer = check_clean(response)
                if "data" not in answer or answer["data"] is None:
                    client_error_codes(answer)

            await asyncio.to_thread(run)
    finally:
        await server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    assert '"level": "ERROR"' not in log, log[-5000:]
