"""Signed tickets and the door: codes verified by signature (and refused when tampered with,
forged, of another event or signed by a retired key), check-in with exactly one winner at two
gates, idempotent re-uploads, late offline scans, revocation sync, who may scan, live counts,
the ticket page. PostgreSQL: the races need real concurrent transactions."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from playwright.async_api import async_playwright
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import cli
from app.errors import DomainError, ErrorCode
from app.models import CheckInScan, Event, Role, Ticket, TicketKey, User, Venue, utcnow
from app.services import bookings, checkin, tickets
from app.services.payments import MockGateway
from app.settings import Settings
from app.web import create_app
from tests.conftest import GraphQLClient, running_app
from tests.factories import identity_of, make_event, make_user, token_for
from tests.servers import MESSAGE_TIMEOUT, http_client, serve_in_process, subscribe
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium

HOLDS = bookings.HoldTimes(reservation_seconds=300, offer_seconds=600)
CHECK_IN = """mutation($input: CheckInInput!) { checkIn(input: $input) {
  result checkedInAt gate ticket { id status checkedInAt } errors { code message } } }"""
REVOKED = "query($id: ID!, $since: DateTime) { revokedTickets(eventId: $id, since: $since) }"


@pytest.fixture
def backend() -> str:
    return "postgres"


async def sell(sessionmaker: async_sessionmaker[AsyncSession], event: Event, quantity: int = 2,
               buyer: User | None = None) -> tuple[int, list[str]]:
    """A confirmed booking of `quantity` tickets: its id and its ticket codes."""
    buyer = buyer or await make_user(sessionmaker)
    async with sessionmaker() as session:
        held = await bookings.reserve(session, user_id=buyer.id, event_id=event.id, quantity=quantity,
                                      seat_ids=None, idempotency_key=None, expected_version=None, holds=HOLDS)
        paid, _ = await bookings.confirm(session, caller=identity_of(buyer), booking_id=held.id,
                                         payment_token="tok_visa", payment_method="card", idempotency_key=None,
                                         gateway=MockGateway())
        codes = list((await session.scalars(select(Ticket.code).where(Ticket.booking_id == paid.id)
                                            .order_by(Ticket.id))).all())
        await session.commit()
    return paid.id, codes


async def staff_token(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> str:
    return token_for(await make_user(sessionmaker, Role.STAFF), settings)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- signatures ---------------------------------------------------------------------------

async def test_codes_are_jws_that_the_published_keys_verify(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, codes = await sell(sessionmaker, event)
    response = await gql.http.get("/.well-known/ticket-keys")
    assert response.status_code == 200 and "max-age" in response.headers["cache-control"]
    [jwk] = response.json()["keys"]
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    for code in codes:
        header, payload, signature = code.split(".")
        public.verify(base64.urlsafe_b64decode(signature + "=="), f"{header}.{payload}".encode())  # raises if bad
        assert json.loads(base64.urlsafe_b64decode(header + "=="))["alg"] == "EdDSA"
        assert jwt.get_unverified_header(code)["kid"] == jwk["kid"]
        assert jwt.decode(code, public, algorithms=["EdDSA"])["eid"] == str(event.id)
    # The ticket page still finds them.
    assert (await gql.http.get(f"/tickets/{codes[0]}")).status_code == 200


async def test_tampered_forged_and_foreign_codes_are_refused(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event, other_event = await make_event(sessionmaker), await make_event(sessionmaker)
    _, [code, second] = await sell(sessionmaker, event)
    _, [elsewhere, _] = await sell(sessionmaker, other_event)
    token = await staff_token(sessionmaker, settings)
    header, payload, signature = code.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = f"{header}.{b64(json.dumps({**claims, 'tid': str(int(claims['tid']) + 1)}).encode())}.{signature}"
    kid = jwt.get_unverified_header(code)["kid"]
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})
    spliced = ".".join([*second.split(".")[:2], signature])  # another ticket's signature
    for bad in (tampered, forged, spliced, "not-a-code", f"{header}.{payload}.", code + "x"):
        body = (await gql(CHECK_IN, {"input": {"code": bad}}, token))["checkIn"]
        assert [e["code"] for e in body["errors"]] == ["TICKET_INVALID"], (bad, body)
        assert body["result"] is None
    wrong_event = (await gql(CHECK_IN, {"input": {"code": elsewhere, "eventId": str(event.id)}}, token))["checkIn"]
    assert [e["code"] for e in wrong_event["errors"]] == ["TICKET_INVALID"]
    async with sessionmaker() as session:  # nothing was checked in
        assert await session.scalar(select(func.count()).where(Ticket.checked_in_at.is_not(None))) == 0


async def test_rotation_keeps_old_tickets_until_their_key_is_retired(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [old, old_second] = await sell(sessionmaker, event)
    old_kid = jwt.get_unverified_header(old)["kid"]
    new_kid = await asyncio.to_thread(cli.rotate_ticket_key, settings)  # what `bookmyevent rotate-ticket-key` does
    _, [new, _] = await sell(sessionmaker, event)
    assert jwt.get_unverified_header(new)["kid"] == new_kid != old_kid
    kids = [key["kid"] for key in (await gql.http.get("/.well-known/ticket-keys")).json()["keys"]]
    assert sorted(kids) == sorted([old_kid, new_kid])
    token = await staff_token(sessionmaker, settings)
    assert (await gql(CHECK_IN, {"input": {"code": old}}, token))["checkIn"]["result"] == "OK"

    await asyncio.to_thread(cli.retire_ticket_key, settings, old_kid)
    refused = (await gql(CHECK_IN, {"input": {"code": old_second}}, token))["checkIn"]
    assert [e["code"] for e in refused["errors"]] == ["TICKET_INVALID"]
    assert (await gql(CHECK_IN, {"input": {"code": new}}, token))["checkIn"]["result"] == "OK"
    kids = [key["kid"] for key in (await gql.http.get("/.well-known/ticket-keys")).json()["keys"]]
    assert kids == [new_kid]
    async with sessionmaker() as session:  # the signing key cannot be retired, only rotated away
        with pytest.raises(DomainError) as refused_retire:
            await tickets.retire_key(session, kid=new_kid)
        assert refused_retire.value.code == ErrorCode.INVALID_STATE


async def test_keys_are_encrypted_with_the_secret_when_one_is_set(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        key = await tickets.rotate_key(session, secret="door secret")
        code = await tickets.sign(session, ticket_id=1, event_id=2, secret="door secret")
        assert "ENCRYPTED PRIVATE KEY" in key.private_key
        with pytest.raises(TypeError):  # no secret, no key
            serialization.load_pem_private_key(key.private_key.encode(), password=None)
        assert (await tickets.verify(session, code)).ticket_id == 1


# --- check-in -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgres"])  # the embedded mode checks in too
async def test_first_scan_ok_second_already_same_nonce_same_answer(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [code, _] = await sell(sessionmaker, event)
    token = await staff_token(sessionmaker, settings)
    first = (await gql(CHECK_IN, {"input": {"code": code, "eventId": str(event.id), "gate": "North",
                                            "nonce": "scan-1"}}, token))["checkIn"]
    assert first["errors"] == [] and first["result"] == "OK" and first["gate"] == "North"
    assert first["ticket"]["status"] == "CHECKED_IN" and first["ticket"]["checkedInAt"] == first["checkedInAt"]
    again = (await gql(CHECK_IN, {"input": {"code": code, "gate": "South", "nonce": "scan-2"}}, token))["checkIn"]
    assert again["errors"] == [] and again["result"] == "ALREADY_CHECKED_IN"
    assert (again["checkedInAt"], again["gate"]) == (first["checkedInAt"], "North")
    # The first scan uploaded again (a retry after a network drop): its own answer, not a second scan.
    replay = (await gql(CHECK_IN, {"input": {"code": code, "gate": "North", "nonce": "scan-1"}}, token))["checkIn"]
    assert (replay["result"], replay["checkedInAt"], replay["gate"]) == ("OK", first["checkedInAt"], "North")
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(CheckInScan)) == 2


async def test_a_busy_door_scans_past_the_general_mutation_limit_within_its_own(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [code, _] = await sell(sessionmaker, event)
    token = await staff_token(sessionmaker, settings)
    limits = replace(settings, mutation_rate_limit_per_minute=2, checkin_rate_limit_per_minute=4)
    async with running_app(limits) as (_, gql):
        results = [(await gql(CHECK_IN, {"input": {"code": code, "nonce": f"scan-{n}"}}, token))["checkIn"]
                   for n in range(5)]
    assert [r["result"] for r in results[:4]] == ["OK"] + ["ALREADY_CHECKED_IN"] * 3  # twice the general limit
    assert [e["code"] for e in results[4]["errors"]] == ["RATE_LIMITED"]


async def test_codes_issued_before_signing_still_check_in(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [code, _] = await sell(sessionmaker, event)
    legacy = secrets.token_urlsafe(32)  # what confirm wrote before codes were signed
    async with sessionmaker() as session:
        await session.execute(update(Ticket).where(Ticket.code == code).values(code=legacy))
        await session.commit()
    token = await staff_token(sessionmaker, settings)
    assert (await gql(CHECK_IN, {"input": {"code": legacy, "eventId": str(event.id)}}, token))["checkIn"]["result"] \
        == "OK"
    guessed = (await gql(CHECK_IN, {"input": {"code": secrets.token_urlsafe(32)}}, token))["checkIn"]
    assert [e["code"] for e in guessed["errors"]] == ["TICKET_INVALID"]


async def test_two_gates_at_once_one_ok(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, codes = await sell(sessionmaker, event, quantity=4)
    gates = 6
    for code in codes:
        barrier = asyncio.Barrier(gates)

        async def scan(gate: int, code: str = code, barrier: asyncio.Barrier = barrier) -> checkin.CheckIn:
            async with sessionmaker() as session:
                await session.connection()
                await barrier.wait()
                answer = await checkin.check_in(session, code=code, event_id=event.id, gate=f"gate {gate}",
                                                scanned_at=None, nonce=f"n{gate}")
                await session.commit()
                return answer

        answers = await asyncio.gather(*(scan(gate) for gate in range(gates)))
        winners = [a for a in answers if a.result == checkin.CheckInResult.OK]
        assert len(winners) == 1, [a.result for a in answers]
        async with sessionmaker() as session:  # the database's truth: the winner's scan, once
            ticket = await session.scalar(select(Ticket).where(Ticket.code == code))
            assert ticket is not None and ticket.checked_in_gate == winners[0].gate
            assert ticket.checked_in_at == winners[0].checked_in_at
        assert {(a.checked_in_at, a.gate) for a in answers} == {(winners[0].checked_in_at, winners[0].gate)}


async def test_one_scan_uploaded_twice_at_once_is_one_scan(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [code, _] = await sell(sessionmaker, event)
    barrier = asyncio.Barrier(4)

    async def upload() -> checkin.CheckIn:
        async with sessionmaker() as session:
            await session.connection()
            await barrier.wait()
            answer = await checkin.check_in(session, code=code, event_id=None, gate="East",
                                            scanned_at=utcnow() - timedelta(minutes=1), nonce="offline-7")
            await session.commit()
            return answer

    answers = await asyncio.gather(*(upload() for _ in range(4)))
    assert {(a.result, a.checked_in_at, a.gate) for a in answers} == \
        {(checkin.CheckInResult.OK, answers[0].checked_in_at, "East")}
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(CheckInScan)) == 1


async def test_late_offline_scans_are_ordered_by_scanned_at(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [code, _] = await sell(sessionmaker, event)
    token = await staff_token(sessionmaker, settings)
    now = utcnow()

    async def scan(gate: str, scanned_at: datetime | None) -> dict[str, Any]:
        variables = {"code": code, "gate": gate, "scannedAt": scanned_at.isoformat() if scanned_at else None}
        return dict((await gql(CHECK_IN, {"input": variables}, token))["checkIn"])

    live = await scan("Main", None)
    assert live["result"] == "OK" and live["gate"] == "Main"
    # An offline scanner saw the ticket ten minutes earlier and uploads now: its scan was the first.
    early = await scan("Side", now - timedelta(minutes=10))
    assert (early["result"], early["gate"]) == ("OK", "Side")
    assert datetime.fromisoformat(early["checkedInAt"]) == now - timedelta(minutes=10)
    # One in between, uploaded last: not the first.
    between = await scan("Back", now - timedelta(minutes=5))
    assert (between["result"], between["gate"], between["checkedInAt"]) == \
        ("ALREADY_CHECKED_IN", "Side", early["checkedInAt"])
    # A live scan never displaces the record, and a scanner clock ahead of ours counts as now.
    assert (await scan("Main", None))["gate"] == "Side"
    assert (await scan("Fast clock", now + timedelta(hours=1)))["result"] == "ALREADY_CHECKED_IN"


async def test_cancelled_tickets_are_revoked_and_listed_for_scanners(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    buyer = await make_user(sessionmaker)
    booking_id, codes = await sell(sessionmaker, event, buyer=buyer)
    _, kept = await sell(sessionmaker, event)
    token = await staff_token(sessionmaker, settings)
    before = utcnow()
    assert (await gql(REVOKED, {"id": str(event.id)}, token))["revokedTickets"] == []
    cancel = "mutation($id: ID!) { cancelBooking(input: {bookingId: $id}) { errors { code } } }"
    assert (await gql(cancel, {"id": str(booking_id)}, token_for(buyer, settings)))["cancelBooking"]["errors"] == []
    after = utcnow()
    assert sorted((await gql(REVOKED, {"id": str(event.id), "since": before.isoformat()}, token))[
        "revokedTickets"]) == sorted(codes)
    assert (await gql(REVOKED, {"id": str(event.id), "since": after.isoformat()}, token))["revokedTickets"] == []
    refused = (await gql(CHECK_IN, {"input": {"code": codes[0]}}, token))["checkIn"]
    assert [e["code"] for e in refused["errors"]] == ["TICKET_REVOKED"]
    assert (await gql(CHECK_IN, {"input": {"code": kept[0]}}, token))["checkIn"]["result"] == "OK"


# --- who may scan -------------------------------------------------------------------------

async def test_staff_scan_users_and_strangers_do_not(
        gql: GraphQLClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker)
    _, [code, second] = await sell(sessionmaker, event)
    user = await make_user(sessionmaker)
    admin = await make_user(sessionmaker, Role.ADMIN)
    # `bookmyevent create-staff` makes a staff account that can log in.
    await asyncio.to_thread(cli.create_account, settings, "door@example.com", "door password", "Door", Role.STAFF)
    login = """mutation { login(input: {email: "door@example.com", password: "door password"}) {
      accessToken user { role } } }"""
    signed_in = (await gql(login))["login"]
    assert signed_in["user"]["role"] == "STAFF"
    staff = signed_in["accessToken"]
    for token, expected in ((None, "UNAUTHENTICATED"), (token_for(user, settings), "FORBIDDEN")):
        body = (await gql(CHECK_IN, {"input": {"code": code}}, token))["checkIn"]
        assert [e["code"] for e in body["errors"]] == [expected]
        refused = await gql.raw(REVOKED, {"id": str(event.id)}, token)
        assert refused["errors"][0]["extensions"]["code"] == expected
    assert (await gql(CHECK_IN, {"input": {"code": code}}, staff))["checkIn"]["result"] == "OK"
    assert (await gql(REVOKED, {"id": str(event.id)}, staff))["revokedTickets"] == []
    # Staff is not an admin.
    sales = "query($id: ID!) { eventSales(eventId: $id) { placesSold checkedIn } }"
    assert (await gql.raw(sales, {"id": str(event.id)}, staff))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    venue = """mutation { createVenue(input: {name: "V", address: "A", city: "C", country: "X", capacity: 1}) {
      errors { code } } }"""
    assert (await gql(venue, token=staff))["createVenue"]["errors"] == [{"code": "FORBIDDEN"}]
    assert (await gql(sales, {"id": str(event.id)}, token_for(admin, settings)))["eventSales"] == \
        {"placesSold": 2, "checkedIn": 1}
    # An admin makes a registered user staff; their next token carries the role.
    set_role = "mutation($id: ID!) { setUserRole(userId: $id, role: STAFF) { user { role } errors { code } } }"
    assert (await gql(set_role, {"id": str(user.id)}, staff))["setUserRole"]["errors"] == [{"code": "FORBIDDEN"}]
    made = (await gql(set_role, {"id": str(user.id)}, token_for(admin, settings)))["setUserRole"]
    assert made == {"user": {"role": "STAFF"}, "errors": []}
    async with sessionmaker() as session:
        promoted = await session.get(User, user.id)
    assert promoted is not None
    promoted_token = token_for(promoted, settings)
    assert (await gql(CHECK_IN, {"input": {"code": second}}, promoted_token))["checkIn"]["result"] == "OK"


async def test_check_in_counts_are_pushed_live(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
                                               redis_url: str) -> None:
    event = await make_event(sessionmaker)
    _, codes = await sell(sessionmaker, event, quantity=3)
    token = await staff_token(sessionmaker, settings)
    user_token = token_for(await make_user(sessionmaker), settings)
    document = "subscription($id: ID!) { checkInCounts(eventId: $id) { eventId checkedIn sold } }"
    app = create_app(replace(settings, redis_url=redis_url))
    async with serve_in_process(app) as address:
        url = f"ws://{address}/graphql"
        async with subscribe(url, document, {"id": str(event.id)}, token=user_token) as refused:
            message = json.loads(await asyncio.wait_for(refused.ws.recv(), MESSAGE_TIMEOUT))
            errors = message["payload"] if isinstance(message["payload"], list) else message["payload"]["errors"]
            assert errors[0]["extensions"]["code"] == "FORBIDDEN", message
        async with subscribe(url, document, {"id": str(event.id)}, token=token) as live, \
                http_client(f"http://{address}") as door:
            assert (await live.next())["checkInCounts"] == {"eventId": str(event.id), "checkedIn": 0, "sold": 3}
            assert (await door(CHECK_IN, {"input": {"code": codes[0]}}, token))["checkIn"]["result"] == "OK"
            assert (await live.next())["checkInCounts"]["checkedIn"] == 1
            assert (await door(CHECK_IN, {"input": {"code": codes[1]}}, token))["checkIn"]["result"] == "OK"
            assert (await live.next())["checkInCounts"] == {"eventId": str(event.id), "checkedIn": 2, "sold": 3}


# --- the ticket page ----------------------------------------------------------------------

async def test_ticket_page_in_the_venues_time_with_a_qr_code(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, starts_at=datetime.fromisoformat("2031-07-12T17:00:00+00:00"),
                             name="Summer Night")
    async with sessionmaker() as session:
        await session.execute(update(Venue).where(Venue.id == event.venue_id).values(timezone="Europe/Lisbon"))
        await session.commit()
    buyer = await make_user(sessionmaker)
    _, [code, _] = await sell(sessionmaker, event, buyer=buyer)
    found = (await gql.http.get(f"/tickets/{code}", headers={"Accept": "application/json"})).json()
    assert found["startsAtLocal"] == "2031-07-12T18:00:00+01:00" and found["timezone"] == "Europe/Lisbon"
    assert found["holder"] == buyer.name and found["currency"] == "USD"
    assert found["tickets"] == [{"code": code, "status": "VALID", "seat": None, "priceCents": 2500,
                                 "checkedInAt": None}]
    page = await gql.http.get(f"/tickets/{code}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<svg" in text and "Summer Night" in text and "Sat 12 Jul 2031, 18:00 WEST" in text
    assert "25.00 USD" in text and buyer.name in text and "@media print" in text


async def test_venues_say_their_timezone(gql: GraphQLClient, settings: Settings,
                                         sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    token = token_for(await make_user(sessionmaker, Role.ADMIN), settings)
    create = """mutation($tz: String!) { createVenue(input: {name: "Teatro", address: "Rua 1", city: "Lisboa",
      country: "Portugal", capacity: 100, timezone: $tz}) { venue { timezone } errors { code field } } }"""
    made = (await gql(create, {"tz": "Europe/Lisbon"}, token))["createVenue"]
    assert made == {"venue": {"timezone": "Europe/Lisbon"}, "errors": []}
    refused = (await gql(create, {"tz": "Mars/Olympus"}, token))["createVenue"]
    assert refused == {"venue": None, "errors": [{"code": "INVALID_INPUT", "field": "timezone"}]}


async def test_the_first_key_is_made_once_under_concurrency(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    barrier = asyncio.Barrier(5)

    async def first_signature(n: int) -> str:
        async with sessionmaker() as session:
            await session.connection()
            await barrier.wait()
            code = await tickets.sign(session, ticket_id=n, event_id=1, secret="")
            await session.commit()
            return str(jwt.get_unverified_header(code)["kid"])

    kids = await asyncio.gather(*(first_signature(n) for n in range(5)))
    async with sessionmaker() as session:
        assert len(set(kids)) == 1 and await session.scalar(select(func.count()).select_from(TicketKey)) == 1


# --- the door page in a real browser ------------------------------------------------------

async def test_the_door_page_online_then_offline(settings: Settings,
                                                 sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """/checkin on a phone-sized Chromium: a real ticket is let in, its second scan and a forged
    code are refused; with the network gone a ticket is checked on the device, queued, and
    uploaded when the network is back."""
    require_chromium()
    event = await make_event(sessionmaker)
    _, [first, second] = await sell(sessionmaker, event)
    await asyncio.to_thread(cli.create_account, settings, "gate@example.com", "gate password", "Gate", Role.STAFF)
    header, payload, _ = first.split(".")
    forged = f"{header}.{payload}.{b64(bytes(64))}"
    problems: list[str] = []
    async with serve_in_process(create_app(settings)) as address, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            await page.goto(f"http://{address}/checkin?event={event.id}")
            await page.fill("#login-email", "gate@example.com")
            await page.fill("#login-password", "gate password")
            await page.click("#login-form button")
            await page.wait_for_selector("#door:not([hidden])")
            assert await page.is_hidden("#login-form")
            await page.fill("#gate", "North")

            async def scan(code: str, result: str, offline: bool = False) -> None:
                await page.evaluate("document.querySelector('#answer').dataset.result = ''")
                await page.fill("#code", code)
                await page.click("#scan-form button")
                await page.wait_for_selector(f'#answer[data-result="{result}"][data-offline="{str(offline).lower()}"]')

            await scan(first, "OK")
            assert await page.get_attribute("#answer", "class") == "ok"
            await scan(first, "ALREADY_CHECKED_IN")
            assert await page.get_attribute("#answer", "class") == "bad"
            assert "North" in (await page.text_content("#answer") or "")
            await scan(forged, "TICKET_INVALID")
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # fits the phone

            # The network drops: the device decides with the keys it fetched, and queues.
            await page.wait_for_function("(JSON.parse(localStorage.getItem('bme.door.jwks')) || {keys: []})"
                                         ".keys.length")
            await context.set_offline(True)
            await scan(second, "OK", offline=True)
            await page.wait_for_selector("#queued:text-is('1')")
            await scan(second, "ALREADY_CHECKED_IN", offline=True)
            await scan(forged, "TICKET_INVALID", offline=True)
            await page.screenshot(path=ARTIFACTS / "checkin-offline.png", full_page=True)
            async with sessionmaker() as session:
                ticket = await session.scalar(select(Ticket).where(Ticket.code == second))
                assert ticket is not None and ticket.checked_in_at is None

            # Back online: the queued scan is uploaded with its own time and gate.
            await context.set_offline(False)
            await page.wait_for_selector("#queued:text-is('0')")
            async with sessionmaker() as session:
                ticket = await session.scalar(select(Ticket).where(Ticket.code == second))
                assert ticket is not None and ticket.checked_in_gate == "North" and ticket.checked_in_at is not None
                assert await session.scalar(select(func.count()).select_from(CheckInScan)) >= 1
            # Failed loads while offline are what the console reports for a dropped network.
            assert [p for p in problems if "ERR_INTERNET_DISCONNECTED" not in p] == []
        finally:
            await browser.close()
