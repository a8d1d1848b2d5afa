"""The waitlist: who may join, and returned places reaching the right people first."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DomainError, ErrorCode
from app.models import Booking, BookingStatus, IdempotencyKey, WaitlistEntry, WaitlistStatus
from app.resolvers.realtime import merge_booking_updates
from app.services import bookings, outbox, waitlist
from app.services.payments import MockGateway
from app.settings import Settings
from tests.conftest import GraphQLClient
from tests.factories import identity_of, make_event, make_user, make_users, token_for
from tests.test_bookings import Buyer, codes, lapse
from tests.test_concurrency import HOLDS, assert_inventory_truth, race

JOIN = """mutation($input: JoinWaitlistInput!) { joinWaitlist(input: $input) {
  entry { id status position quantity offer { id status } } errors { code availableSeats } } }"""
LEAVE = "mutation($id: ID!) { leaveWaitlist(id: $id) { entry { status } errors { code } } }"
MINE = """{ myWaitlist { id status position quantity event { id }
  offer { id status quantity expiresAt } } }"""


async def buyer_for(gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession],
                    settings: Settings) -> Buyer:
    user = await make_user(sessionmaker)
    return Buyer(gql, token_for(user, settings), user.id)


async def join(buyer: Buyer, event_id: int, quantity: int = 1) -> dict:
    return (await buyer.gql(JOIN, {"input": {"eventId": str(event_id), "quantity": quantity}},
                            buyer.token))["joinWaitlist"]


async def my_waitlist(buyer: Buyer) -> list[dict]:
    return list((await buyer.gql(MINE, token=buyer.token))["myWaitlist"])


async def test_join_only_when_the_request_cannot_be_served(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    event = await make_event(sessionmaker, capacity=3)
    first, second = [await buyer_for(gql, sessionmaker, settings) for _ in range(2)]
    refused = await join(first, event.id, 2)
    assert refused["errors"] == [{"code": "WAITLIST_NOT_ALLOWED", "availableSeats": 3}]
    await second.reserve(event.id, quantity=2)
    assert (await join(first, event.id, 2))["entry"]["position"] == 1  # 1 free, 2 wanted
    assert codes(await join(first, event.id, 1)) == ["ALREADY_WAITLISTED"]
    assert codes(await join(second, event.id, 11)) == ["LIMIT_EXCEEDED"]
    assert codes(await join(second, event.id, 0)) == ["INVALID_INPUT"]


async def test_returned_places_go_to_the_oldest_entry_they_fit(
        gql: GraphQLClient, app_and_client: tuple[Any, GraphQLClient],
        sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    event = await make_event(sessionmaker, capacity=3)
    holder, big, small, public = [await buyer_for(gql, sessionmaker, settings) for _ in range(4)]
    one = (await holder.reserve(event.id, quantity=1))["booking"]
    await holder.reserve(event.id, quantity=2)
    big_entry = (await join(big, event.id, 2))["entry"]
    small_entry = (await join(small, event.id, 1))["entry"]
    assert (big_entry["position"], small_entry["position"]) == (1, 2)

    broker = app_and_client[0].state.services.broker
    async with broker.subscribe(outbox.bookings_channel(small.user_id), merge_booking_updates) as slot:
        await holder.cancel(one["id"])  # one place back: too few for `big`, right for `small`
        pushed = await asyncio.wait_for(slot.next(), 5)
    assert pushed is not None and pushed.message["reason"] == "OFFERED"

    [mine] = await my_waitlist(small)
    assert mine["status"] == "OFFERED" and mine["offer"]["status"] == "PENDING"
    [still_waiting] = await my_waitlist(big)
    assert (still_waiting["status"], still_waiting["position"], still_waiting["offer"]) == ("WAITING", 1, None)
    # The place is held for the waitlist: the public cannot take it.
    assert codes(await public.reserve(event.id, quantity=1)) == ["SOLD_OUT"]
    confirmed = await small.confirm(mine["offer"]["id"])
    assert confirmed["booking"]["status"] == "CONFIRMED"
    assert (await my_waitlist(small))[0]["status"] == "CONVERTED"
    await assert_inventory_truth(sessionmaker, event.id)


async def test_lapsed_places_owed_to_the_waitlist_are_not_shown_as_free(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    event = await make_event(sessionmaker, capacity=5)
    holder, waiting, too_big, newcomer, public = [await buyer_for(gql, sessionmaker, settings) for _ in range(5)]
    hold = (await holder.reserve(event.id, quantity=4))["booking"]
    await public.reserve(event.id, quantity=1)
    await join(waiting, event.id, 2)
    await join(too_big, event.id, 5)
    await lapse(sessionmaker, hold["id"])  # 4 places back once swept: 2 of them owed to `waiting`
    seen = (await gql("query($id: ID!) { event(id: $id) { availableSeats status } }",
                      {"id": str(event.id)}))["event"]
    assert seen == {"availableSeats": 2, "status": "ON_SALE"}
    # Every answer agrees with what is shown: 3 cannot be had (the refused reserve swept the
    # lapsed hold on its way, and `waiting` has its offer), so joining for 3 is allowed.
    [refused] = (await newcomer.reserve(event.id, quantity=3))["errors"]
    assert (refused["code"], refused["availableSeats"]) == ("NOT_ENOUGH_SEATS", 2)
    [offered] = await my_waitlist(waiting)
    assert offered["status"] == "OFFERED" and offered["offer"]["quantity"] == 2
    assert (await join(newcomer, event.id, 3))["entry"]["position"] == 2  # behind `too_big`
    assert (await public.reserve(event.id, quantity=2))["errors"] == []
    await assert_inventory_truth(sessionmaker, event.id)


async def test_a_refused_reserve_keeps_the_expiry_it_did_on_the_way(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    event = await make_event(sessionmaker, capacity=1)
    holder, waiting, public = [await buyer_for(gql, sessionmaker, settings) for _ in range(3)]
    hold = (await holder.reserve(event.id, quantity=1))["booking"]
    await join(waiting, event.id)
    await lapse(sessionmaker, hold["id"])
    # The reserve expires the lapsed hold, whose place goes to the waitlist first: the buyer
    # is refused, and the expiry and the offer stand without waiting for a sweep.
    assert codes(await public.reserve(event.id, quantity=1, idempotencyKey="try-1")) == ["SOLD_OUT"]
    [offered] = await my_waitlist(waiting)
    assert offered["status"] == "OFFERED"
    async with sessionmaker() as session:
        assert (await session.get(Booking, int(hold["id"]))).status == BookingStatus.EXPIRED
        mine = (await session.scalars(select(Booking).where(Booking.user_id == public.user_id))).all()
        assert mine == []  # the refused buyer's own hold is not kept
        # Nor its idempotency key: trying again with it is a new attempt, not a replay.
        assert await session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == "try-1")) is None
    await assert_inventory_truth(sessionmaker, event.id)


async def test_a_lapsed_offer_moves_on_and_leaving_declines(
        gql: GraphQLClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    event = await make_event(sessionmaker, capacity=1)
    holder, first, second = [await buyer_for(gql, sessionmaker, settings) for _ in range(3)]
    booking = (await holder.reserve(event.id, quantity=1))["booking"]
    await join(first, event.id)
    await join(second, event.id)
    await lapse(sessionmaker, booking["id"])
    admin = Buyer(gql, token_for(await make_user(sessionmaker, role="ADMIN"), settings))
    await gql("mutation { expireReservations { expired } }", token=admin.token)
    [offered] = await my_waitlist(first)
    assert offered["status"] == "OFFERED"
    assert (await my_waitlist(second))[0]["position"] == 1

    await lapse(sessionmaker, offered["offer"]["id"])
    await gql("mutation { expireReservations { expired } }", token=admin.token)
    assert (await my_waitlist(first))[0]["status"] == "EXPIRED"
    [passed_on] = await my_waitlist(second)
    assert passed_on["status"] == "OFFERED"

    left = (await gql(LEAVE, {"id": passed_on["id"]}, second.token))["leaveWaitlist"]
    assert left == {"entry": {"status": "LEFT"}, "errors": []}
    seen = (await gql("query($id: ID!) { event(id: $id) { availableSeats } }", {"id": str(event.id)}))["event"]
    assert seen["availableSeats"] == 1  # nobody else waits: back on public sale
    assert codes((await gql(LEAVE, {"id": passed_on["id"]}, first.token))["leaveWaitlist"]) == ["NOT_FOUND"]
    await assert_inventory_truth(sessionmaker, event.id)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_returned_places_reach_the_waitlist_in_order_under_concurrency(
        backend: str, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=20)
    holders = await make_users(sessionmaker, 20)
    waiting = await make_users(sessionmaker, 20)
    public = await make_users(sessionmaker, 30)
    gateway = MockGateway()
    held = []
    for user in holders:
        async with sessionmaker() as session:
            held.append(await bookings.reserve(session, user_id=user.id, event_id=event.id, quantity=1,
                                               seat_ids=None, idempotency_key=None, expected_version=None,
                                               holds=HOLDS))
            await session.commit()
    entries = []
    for user in waiting:
        async with sessionmaker() as session:
            entries.append(await waitlist.join(session, user_id=user.id, event_id=event.id, quantity=1))
            await session.commit()
    # 15 of the 20 holders give their place back (some lapse, some cancel) while the public
    # tries to buy: the 15 oldest entries must get them, the 5 youngest keep waiting.
    returning = random.sample(range(20), 15)
    lapsing = set(returning[:7])
    async with sessionmaker() as session:
        for index in lapsing:
            booking = await session.get(Booking, held[index].id)
            assert booking is not None
            booking.expires_at = booking.created_at
        await session.commit()

    async def act(session: AsyncSession, index: int) -> Any:
        if index < 15:
            holder = returning[index]
            if holder in lapsing:
                return await bookings.expire_lapsed(session, holds=HOLDS)
            return await bookings.cancel(session, caller=identity_of(holders[holder]), booking_id=held[holder].id,
                                         idempotency_key=None, gateway=gateway, holds=HOLDS)
        return await bookings.reserve(session, user_id=public[index - 15].id, event_id=event.id, quantity=1,
                                      seat_ids=None, idempotency_key=None, expected_version=None, holds=HOLDS)

    results = await race(sessionmaker, 45, act)
    public_outcomes = Counter(r if isinstance(r, ErrorCode) else "ok" for r in results[15:])
    assert public_outcomes["ok"] == 0, public_outcomes  # never a place owed to the waitlist
    assert set(public_outcomes) <= {ErrorCode.SOLD_OUT, ErrorCode.NOT_ENOUGH_SEATS}
    async with sessionmaker() as session:
        statuses = {e.id: (e.status, e.offer_booking_id) for e in await session.scalars(select(WaitlistEntry))}
        offers = {b.id: b for b in await session.scalars(select(Booking).where(Booking.waitlist_offer.is_(True)))}
    assert [statuses[e.id][0] for e in entries] == [WaitlistStatus.OFFERED] * 15 + [WaitlistStatus.WAITING] * 5
    assert len(offers) == 15 and all(b.status == BookingStatus.PENDING for b in offers.values())
    assert [offers[statuses[e.id][1]].user_id for e in entries[:15]] == [u.id for u in waiting[:15]]
    await assert_inventory_truth(sessionmaker, event.id)


async def test_leave_refuses_what_is_over(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=1)
    holder, waiter = await make_users(sessionmaker, 2)
    async with sessionmaker() as session:
        await bookings.reserve(session, user_id=holder.id, event_id=event.id, quantity=1, seat_ids=None,
                               idempotency_key=None, expected_version=None, holds=HOLDS)
        entry = await waitlist.join(session, user_id=waiter.id, event_id=event.id, quantity=1)
        await waitlist.leave(session, caller=identity_of(waiter), entry_id=entry.id, gateway=MockGateway(),
                             holds=HOLDS)
        with pytest.raises(DomainError) as refused:
            await waitlist.leave(session, caller=identity_of(holder), entry_id=entry.id, gateway=MockGateway(),
                                 holds=HOLDS)
        assert refused.value.code == ErrorCode.NOT_FOUND
