"""Two-phase booking through the GraphQL API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Booking, BookingStatus, Event, Payment, Role, utcnow
from app.services import bookings
from app.settings import Settings
from tests.conftest import GraphQLClient, running_app
from tests.factories import SMALL_SEAT_MAP, make_event, make_user, make_users, token_for

BOOKING_FIELDS = """id reference status quantity totalCents currency expiresAt confirmedAt cancelledAt
  ticketUrl version seats { id label status } tickets { code status url seat { label } }
  event { id availableSeats status version } user { email }"""
RESERVE = f"""mutation($input: ReserveInput!) {{ reserveSeats(input: $input) {{
  booking {{ {BOOKING_FIELDS} }} errors {{ code message field availableSeats currentVersion }} }} }}"""
CONFIRM = f"""mutation($input: ConfirmInput!) {{ confirmBooking(input: $input) {{
  booking {{ {BOOKING_FIELDS} }} payment {{ id transactionId status amountCents method }}
  errors {{ code message field }} }} }}"""
CANCEL = f"""mutation($input: CancelInput!) {{ cancelBooking(input: $input) {{
  booking {{ {BOOKING_FIELDS} }} refund {{ id status amountCents }} errors {{ code message }} }} }}"""
EVENT = "query($id: ID!) { event(id: $id) { availableSeats status version seats { id status } } }"


class Buyer:
    """A signed-in user driving the API."""

    def __init__(self, gql: GraphQLClient, token: str, user_id: int = 0) -> None:
        self.gql, self.token, self.user_id = gql, token, user_id

    async def reserve(self, event_id: Any, **fields: Any) -> dict:
        return (await self.gql(RESERVE, {"input": {"eventId": str(event_id), **fields}}, self.token))["reserveSeats"]

    async def confirm(self, booking_id: str, token: str = "tok_visa", **fields: Any) -> dict:
        return (await self.gql(CONFIRM, {"input": {"bookingId": booking_id, "paymentToken": token, **fields}},
                               self.token))["confirmBooking"]

    async def cancel(self, booking_id: str, **fields: Any) -> dict:
        return (await self.gql(CANCEL, {"input": {"bookingId": booking_id, **fields}}, self.token))["cancelBooking"]


@pytest.fixture
async def buyer(gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> Buyer:
    return Buyer(gql, token_for(await make_user(sessionmaker), settings))


@pytest.fixture
async def other_buyer(gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession],
                      settings: Settings) -> Buyer:
    return Buyer(gql, token_for(await make_user(sessionmaker), settings))


@pytest.fixture
async def admin(gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> Buyer:
    return Buyer(gql, token_for(await make_user(sessionmaker, role=Role.ADMIN), settings))


def codes(payload: dict) -> list[str]:
    return [error["code"] for error in payload["errors"]]


async def lapse(sessionmaker: async_sessionmaker[AsyncSession], booking_id: str) -> None:
    """Travel past a hold's expiry."""
    async with sessionmaker() as session:
        await session.execute(update(Booking).where(Booking.id == int(booking_id))
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()


async def places_taken(sessionmaker: async_sessionmaker[AsyncSession], event_id: int) -> tuple[int, int]:
    """(places in PENDING+CONFIRMED bookings, capacity - available) from the database."""
    async with sessionmaker() as session:
        held = await session.scalar(select(func.coalesce(func.sum(Booking.quantity), 0)).where(
            Booking.event_id == event_id, Booking.status.in_(["PENDING", "CONFIRMED"])))
        event = await session.get(Event, event_id)
        assert event is not None
        return int(held or 0), event.capacity - event.available


async def test_reserve_holds_places_for_the_hold_ttl(buyer: Buyer,
                                                     sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10, price_cents=2500)
    result = await buyer.reserve(event.id, quantity=3)
    assert result["errors"] == []
    booking = result["booking"]
    assert booking["status"] == "PENDING" and booking["quantity"] == 3
    assert (booking["totalCents"], booking["currency"]) == (7500, "USD")
    assert re.fullmatch(r"BME-[2-9A-HJ-NP-Z]{8}", booking["reference"])
    expires_in = datetime.fromisoformat(booking["expiresAt"]) - utcnow()
    assert timedelta(seconds=290) < expires_in <= timedelta(seconds=300)
    assert booking["event"]["availableSeats"] == 7
    assert booking["event"]["version"] == event.version + 1
    assert booking["ticketUrl"] is None and booking["tickets"] == []
    assert await places_taken(sessionmaker, event.id) == (3, 3)


async def test_reserve_refuses_only_for_real_reasons(buyer: Buyer,
                                                     sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=5, max_tickets_per_booking=4)
    assert codes(await buyer.reserve(event.id, quantity=5)) == ["LIMIT_EXCEEDED"]
    assert codes(await buyer.reserve(event.id, quantity=0)) == ["INVALID_INPUT"]
    assert codes(await buyer.reserve(event.id)) == ["INVALID_INPUT"]
    assert codes(await buyer.reserve(event.id, seatIds=["1"])) == ["INVALID_INPUT"]
    assert codes(await buyer.reserve("424242", quantity=1)) == ["NOT_FOUND"]
    assert codes(await buyer.reserve("not-an-id", quantity=1)) == ["INVALID_INPUT"]
    assert (await buyer.reserve(event.id, quantity=4))["errors"] == []
    short = await buyer.reserve(event.id, quantity=2)
    assert codes(short) == ["NOT_ENOUGH_SEATS"] and short["errors"][0]["availableSeats"] == 1
    assert (await buyer.reserve(event.id, quantity=1))["errors"] == []
    sold_out = await buyer.reserve(event.id, quantity=1)
    assert codes(sold_out) == ["SOLD_OUT"] and sold_out["errors"][0]["availableSeats"] == 0
    draft = await make_event(sessionmaker, publish=False)
    assert codes(await buyer.reserve(draft.id, quantity=1)) == ["NOT_FOUND"]
    anonymous = (await buyer.gql(RESERVE, {"input": {"eventId": str(event.id), "quantity": 1}}))["reserveSeats"]
    assert codes(anonymous) == ["UNAUTHENTICATED"]


async def test_sold_out_status_follows_the_places(buyer: Buyer, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=2)
    booking = (await buyer.reserve(event.id, quantity=2))["booking"]
    assert booking["event"]["status"] == "SOLD_OUT"
    cancelled = await buyer.cancel(booking["id"])
    assert cancelled["booking"]["status"] == "CANCELLED"
    assert cancelled["booking"]["event"]["status"] == "ON_SALE"
    assert cancelled["booking"]["event"]["availableSeats"] == 2


async def test_expected_version_is_checked(buyer: Buyer, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    stale = await buyer.reserve(event.id, quantity=1, expectedVersion=event.version - 1)
    assert codes(stale) == ["VERSION_CONFLICT"] and stale["errors"][0]["currentVersion"] == event.version
    fresh = await buyer.reserve(event.id, quantity=1, expectedVersion=event.version)
    assert fresh["errors"] == []
    assert await places_taken(sessionmaker, event.id) == (1, 1)


async def test_confirm_checks_the_booking_version(buyer: Buyer,
                                                  sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=5)
    booking = (await buyer.reserve(event.id, quantity=1))["booking"]
    async with sessionmaker() as session:  # the booking moves on after the client read it
        await session.execute(update(Booking).where(Booking.id == int(booking["id"]))
                              .values(version=Booking.version + 1))
        await session.commit()
    stale = await buyer.confirm(booking["id"], expectedVersion=booking["version"])
    assert stale["booking"] is None
    assert stale["errors"] == [{"code": "VERSION_CONFLICT", "message": "The booking changed since you read it",
                                "field": "expectedVersion"}]
    conflict = await buyer.gql(CONFIRM.replace("errors { code message field }", "errors { currentVersion }"),
                               {"input": {"bookingId": booking["id"], "paymentToken": "tok_visa",
                                          "expectedVersion": booking["version"]}}, buyer.token)
    assert conflict["confirmBooking"]["errors"] == [{"currentVersion": booking["version"] + 1}]
    confirmed = await buyer.confirm(booking["id"], expectedVersion=booking["version"] + 1)
    assert confirmed["errors"] == [] and confirmed["booking"]["status"] == "CONFIRMED"


async def test_confirm_pays_and_issues_tickets(buyer: Buyer, gql: GraphQLClient,
                                               sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10, price_cents=1500)
    booking = (await buyer.reserve(event.id, quantity=2))["booking"]
    confirmed = await buyer.confirm(booking["id"], paymentMethod="card")
    assert confirmed["errors"] == []
    assert confirmed["booking"]["status"] == "CONFIRMED"
    assert confirmed["booking"]["expiresAt"] is None and confirmed["booking"]["confirmedAt"]
    assert confirmed["payment"]["status"] == "CAPTURED" and confirmed["payment"]["amountCents"] == 3000
    tickets = confirmed["booking"]["tickets"]
    assert len(tickets) == 2 and len({t["code"] for t in tickets}) == 2
    assert all(t["status"] == "VALID" for t in tickets)

    page = await gql.http.get(confirmed["booking"]["ticketUrl"])
    assert page.status_code == 200 and booking["reference"] in page.text
    one = await gql.http.get(tickets[0]["url"], headers={"Accept": "application/json"})
    assert one.status_code == 200 and one.json()["tickets"][0]["code"] == tickets[0]["code"]
    assert (await gql.http.get("/tickets/forged-code")).status_code == 404

    cancelled = await buyer.cancel(booking["id"])
    assert cancelled["refund"]["status"] == "REFUNDED" and cancelled["refund"]["amountCents"] == 3000
    assert (await gql.http.get(confirmed["booking"]["ticketUrl"])).status_code == 404
    assert cancelled["booking"]["event"]["availableSeats"] == 10
    assert codes(await buyer.cancel(booking["id"])) == ["INVALID_STATE"]


async def test_declined_payment_keeps_the_hold(buyer: Buyer, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    booking = (await buyer.reserve(event.id, quantity=1))["booking"]
    declined = await buyer.confirm(booking["id"], token="tok_decline_insufficient_funds")
    assert codes(declined) == ["PAYMENT_DECLINED"] and declined["booking"] is None
    assert (await buyer.confirm(booking["id"]))["booking"]["status"] == "CONFIRMED"
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Payment)) == 1


async def test_confirm_twice_same_key_same_answer_else_invalid_state(
        buyer: Buyer, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    booking = (await buyer.reserve(event.id, quantity=1))["booking"]
    first = await buyer.confirm(booking["id"], idempotencyKey="pay-1")
    again = await buyer.confirm(booking["id"], idempotencyKey="pay-1")
    assert again["errors"] == [] and again["payment"]["id"] == first["payment"]["id"]
    assert again["booking"]["id"] == first["booking"]["id"]
    assert codes(await buyer.confirm(booking["id"], idempotencyKey="pay-2")) == ["INVALID_STATE"]
    assert codes(await buyer.confirm(booking["id"])) == ["INVALID_STATE"]
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Payment)) == 1


async def test_the_sweeper_expires_lapsed_holds_on_its_own(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=3)
    [user] = await make_users(sessionmaker, 1)
    holds = bookings.HoldTimes(reservation_seconds=300, offer_seconds=600)
    async with sessionmaker() as session:
        hold = await bookings.reserve(session, user_id=user.id, event_id=event.id, quantity=2, seat_ids=None,
                                      idempotency_key=None, expected_version=None, holds=holds)
        await session.commit()
    await lapse(sessionmaker, str(hold.id))
    async with running_app(replace(settings, sweep_interval_seconds=0.1)):
        async with asyncio.timeout(10):  # nothing but the app's own sweeper touches it
            while True:
                async with sessionmaker() as session:
                    swept = await session.get(Booking, hold.id)
                    counter = await session.get(Event, event.id)
                    assert swept is not None and counter is not None
                    if swept.status == BookingStatus.EXPIRED:
                        break
                await asyncio.sleep(0.05)
    assert counter.available == 3


async def test_lapsed_hold_is_free_before_the_sweeper(buyer: Buyer, other_buyer: Buyer, admin: Buyer,
                                                      gql: GraphQLClient,
                                                      sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=3)
    booking = (await buyer.reserve(event.id, quantity=3))["booking"]
    await lapse(sessionmaker, booking["id"])
    seen = (await gql(EVENT, {"id": str(event.id)}))["event"]
    assert (seen["availableSeats"], seen["status"]) == (3, "ON_SALE")
    assert codes(await buyer.confirm(booking["id"])) == ["RESERVATION_EXPIRED"]
    # The whole event can be bought again at once: the reserve clears the lapsed hold itself.
    taken = await other_buyer.reserve(event.id, quantity=3)
    assert taken["errors"] == []
    assert await places_taken(sessionmaker, event.id) == (3, 3)
    mine = (await gql("query($id: ID!) { booking(id: $id) { status } }", {"id": booking["id"]}, buyer.token))
    assert mine["booking"]["status"] == "EXPIRED"


async def test_expire_reservations_is_for_admins(buyer: Buyer, admin: Buyer, gql: GraphQLClient,
                                                 sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=5)
    for _ in range(2):
        booking = (await buyer.reserve(event.id, quantity=2))["booking"]
        await lapse(sessionmaker, booking["id"])
    expire = "mutation { expireReservations { expired errors { code } } }"
    assert codes((await gql(expire, token=buyer.token))["expireReservations"]) == ["FORBIDDEN"]
    assert (await gql(expire, token=admin.token))["expireReservations"] == {"expired": 2, "errors": []}
    assert (await gql(expire, token=admin.token))["expireReservations"]["expired"] == 0
    assert await places_taken(sessionmaker, event.id) == (0, 0)


async def test_idempotent_reserve(buyer: Buyer, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    first = await buyer.reserve(event.id, quantity=2, idempotencyKey="k1")
    again = await buyer.reserve(event.id, quantity=2, idempotencyKey="k1")
    assert again["booking"]["id"] == first["booking"]["id"]
    assert await places_taken(sessionmaker, event.id) == (2, 2)
    reused = await buyer.reserve(event.id, quantity=3, idempotencyKey="k1")
    assert codes(reused) == ["IDEMPOTENCY_KEY_REUSED"]
    assert codes(await buyer.reserve(event.id, quantity=1, idempotencyKey="")) == ["INVALID_INPUT"]


async def test_reserved_seating_exact_and_best_available(buyer: Buyer, other_buyer: Buyer, gql: GraphQLClient,
                                                         sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    seats = (await gql(EVENT, {"id": str(event.id)}))["event"]["seats"]
    chosen = [seats[0]["id"], seats[25]["id"]]
    exact = await buyer.reserve(event.id, seatIds=chosen)
    assert exact["errors"] == []
    assert exact["booking"]["totalCents"] == 5000 + 3000
    assert [s["status"] for s in exact["booking"]["seats"]] == ["HELD", "HELD"]
    clash = await other_buyer.reserve(event.id, seatIds=[seats[1]["id"], seats[25]["id"]])
    assert codes(clash) == ["SEATS_UNAVAILABLE"]
    # All or none: the free seat of the clashing request was not kept.
    after = {s["id"]: s["status"] for s in (await gql(EVENT, {"id": str(event.id)}))["event"]["seats"]}
    assert after[seats[1]["id"]] == "AVAILABLE"
    best = await other_buyer.reserve(event.id, quantity=3)
    labels = [s["label"] for s in best["booking"]["seats"]]
    assert labels == ["Stalls A2", "Stalls A3", "Stalls A4"]  # side by side, best first
    assert codes(await buyer.reserve(event.id, seatIds=[seats[0]["id"], seats[0]["id"]])) == ["INVALID_INPUT"]

    confirmed = await other_buyer.confirm(best["booking"]["id"])
    assert {s["status"] for s in confirmed["booking"]["seats"]} == {"BOOKED"}
    assert [t["seat"]["label"] for t in confirmed["booking"]["tickets"]] == labels
    await other_buyer.cancel(best["booking"]["id"])
    final = {s["id"]: s["status"] for s in (await gql(EVENT, {"id": str(event.id)}))["event"]["seats"]}
    assert [final[s["id"]] for s in best["booking"]["seats"]] == ["AVAILABLE"] * 3


async def test_nobody_sees_or_changes_another_users_booking(buyer: Buyer, other_buyer: Buyer, admin: Buyer,
                                                            gql: GraphQLClient,
                                                            sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10)
    booking = (await buyer.reserve(event.id, quantity=1))["booking"]
    query = "query($id: ID!) { booking(id: $id) { id } }"
    assert (await gql(query, {"id": booking["id"]}, other_buyer.token))["booking"] is None
    assert (await gql(query, {"id": booking["id"]}))["booking"] is None
    assert (await gql(query, {"id": booking["id"]}, admin.token))["booking"] == {"id": booking["id"]}
    assert codes(await other_buyer.confirm(booking["id"])) == ["NOT_FOUND"]
    assert codes(await other_buyer.cancel(booking["id"])) == ["NOT_FOUND"]
    assert (await buyer.confirm(booking["id"]))["errors"] == []


async def test_my_bookings_pages_newest_first(buyer: Buyer, other_buyer: Buyer, gql: GraphQLClient,
                                              sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=50)
    ids = [(await buyer.reserve(event.id, quantity=1))["booking"]["id"] for _ in range(3)]
    await other_buyer.reserve(event.id, quantity=1)
    await buyer.confirm(ids[0])
    query = """query($first: Int, $after: String, $status: BookingStatus) {
      myBookings(first: $first, after: $after, status: $status) {
        totalCount pageInfo { hasNextPage endCursor } edges { node { id } } } }"""
    page = (await gql(query, {"first": 2}, buyer.token))["myBookings"]
    assert page["totalCount"] == 3 and page["pageInfo"]["hasNextPage"]
    assert [e["node"]["id"] for e in page["edges"]] == [ids[2], ids[1]]
    rest = (await gql(query, {"first": 2, "after": page["pageInfo"]["endCursor"]}, buyer.token))["myBookings"]
    assert [e["node"]["id"] for e in rest["edges"]] == [ids[0]]
    confirmed = (await gql(query, {"status": "CONFIRMED"}, buyer.token))["myBookings"]
    assert [e["node"]["id"] for e in confirmed["edges"]] == [ids[0]]
    assert (await gql(query, {}))["myBookings"]["totalCount"] == 0


async def test_cancel_event_voids_and_refunds_everything(buyer: Buyer, admin: Buyer, gql: GraphQLClient,
                                                         sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP)
    held = (await buyer.reserve(event.id, quantity=2))["booking"]
    paid = (await buyer.reserve(event.id, quantity=1))["booking"]
    await buyer.confirm(paid["id"])
    cancel = "mutation($id: ID!) { cancelEvent(id: $id) { event { status availableSeats } errors { code } } }"
    assert codes((await gql(cancel, {"id": str(event.id)}, buyer.token))["cancelEvent"]) == ["FORBIDDEN"]
    result = (await gql(cancel, {"id": str(event.id)}, admin.token))["cancelEvent"]
    assert result == {"event": {"status": "CANCELLED", "availableSeats": 30}, "errors": []}
    query = "query($id: ID!) { booking(id: $id) { status } }"
    for booking in (held, paid):
        assert (await gql(query, {"id": booking["id"]}, buyer.token))["booking"]["status"] == "CANCELLED"
    async with sessionmaker() as session:
        kinds = (await session.scalars(select(Payment.status).order_by(Payment.id))).all()
    assert list(kinds) == ["CAPTURED", "REFUNDED"]
    assert codes(await buyer.reserve(event.id, quantity=1)) == ["EVENT_NOT_ON_SALE"]
    seats = (await gql(EVENT, {"id": str(event.id)}))["event"]["seats"]
    assert {s["status"] for s in seats} == {"AVAILABLE"}
