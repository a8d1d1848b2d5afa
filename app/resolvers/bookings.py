"""Booking queries and mutations: reserve, confirm, cancel, expire."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import id_or_none, invalid_input, parse_id
from app.models import ApiScope
from app.resolvers.base import run_mutation
from app.schema.bookings import (
    Booking,
    BookingStatus,
    CancelInput,
    CancelPayload,
    ConfirmInput,
    ConfirmPayload,
    ExpirePayload,
    Payment,
    ReserveInput,
    ReservePayload,
)
from app.schema.common import Connection
from app.services import bookings
from app.services.accounts import Identity

MAX_EXTERNAL_REFERENCE_LENGTH = 200


def _partner_write(info: strawberry.Info, idempotency_key: str | None) -> Identity:
    """A person, or a key with BOOKINGS_WRITE and an idempotency key: a partner's server
    retries on its own, and must never buy twice for one order."""
    identity: Identity = info.context.require_scope(ApiScope.BOOKINGS_WRITE)
    if identity.key is not None and idempotency_key is None:
        raise invalid_input("idempotencyKey", "API keys must send an idempotencyKey with every booking change")
    return identity


def _external_reference(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_EXTERNAL_REFERENCE_LENGTH:
        raise invalid_input("externalReference",
                            f"externalReference must be 1 to {MAX_EXTERNAL_REFERENCE_LENGTH} characters")
    return value


async def find_booking(info: strawberry.Info, id: str) -> Booking | None:
    """A booking for its owner or an admin; None for anyone else."""
    info.context.check_scope(ApiScope.BOOKINGS_READ)
    booking_id = id_or_none(id)
    if booking_id is None or info.context.identity is None:
        return None
    async with info.context.read_session() as session:
        booking = await bookings.get_booking(session, caller=info.context.identity, booking_id=booking_id)
    return Booking.from_model(booking) if booking else None


@strawberry.type
class BookingQuery:
    @strawberry.field(description="Its owner or an admin sees it; anyone else gets null.")
    async def booking(self, info: strawberry.Info, id: strawberry.ID) -> Booking | None:
        return await find_booking(info, id)

    @strawberry.field(description="The signed-in user's bookings, newest first.")
    async def my_bookings(self, info: strawberry.Info, status: BookingStatus | None = None,
                          first: int = 20, after: str | None = None) -> Connection[Booking]:
        info.context.check_scope(ApiScope.BOOKINGS_READ)
        identity = info.context.identity
        if identity is None:
            return Connection.of([], total_count=0, has_next_page=False)
        async with info.context.read_session() as session:
            page = await bookings.list_bookings(session, user_id=identity.user_id,
                                                status=status.value if status else None,
                                                first=first, after=after)
        return Connection.of([(bookings.encode_booking_cursor(b), Booking.from_model(b)) for b in page.items],
                             total_count=page.total_count, has_next_page=page.has_next_page, after=after)


@strawberry.type
class BookingMutation:
    @strawberry.mutation(description="Hold places: a PENDING booking that lapses at expiresAt.")
    async def reserve_seats(self, info: strawberry.Info, input: ReserveInput) -> ReservePayload:
        def request() -> tuple[int, bookings.HoldRequest]:
            """The event and the hold asked for, checked in the contract's order."""
            identity = _partner_write(info, input.idempotency_key)
            event_id = parse_id(input.event_id, "eventId")
            return event_id, bookings.HoldRequest(identity.user_id, input.quantity, input.idempotency_key,
                                                  input.expected_version, _external_reference(input.external_reference))

        async def batched() -> ReservePayload | None:
            """General admission goes with whoever else buys the event now (None: seated)."""
            if input.seat_ids is not None:
                return None
            booking = await info.context.services.batcher.reserve(*request())
            return None if booking is None else ReservePayload(booking=Booking.from_model(booking))

        async def work(session: AsyncSession) -> ReservePayload:
            event_id, hold = request()
            seat_ids = None if input.seat_ids is None else [parse_id(seat_id, "seatIds") for seat_id in input.seat_ids]
            booking = await bookings.reserve(
                session, user_id=hold.user_id, event_id=event_id, quantity=hold.quantity, seat_ids=seat_ids,
                idempotency_key=hold.idempotency_key, expected_version=hold.expected_version,
                holds=info.context.services.hold_times, external_reference=hold.external_reference)
            return ReservePayload(booking=Booking.from_model(booking))

        identity = info.context.identity
        limits = [(f"reserve:{identity.user_id}", info.context.settings.reserve_rate_limit_per_minute)] \
            if identity else []
        return await run_mutation(info, ReservePayload, work, limits=limits, batched=batched)

    @strawberry.mutation(description="Pay for a hold and get tickets.")
    async def confirm_booking(self, info: strawberry.Info, input: ConfirmInput) -> ConfirmPayload:
        async def work(session: AsyncSession) -> ConfirmPayload:
            booking, payment = await bookings.confirm(
                session, caller=_partner_write(info, input.idempotency_key),
                booking_id=parse_id(input.booking_id, "bookingId"),
                payment_token=input.payment_token, payment_method=input.payment_method or "card",
                idempotency_key=input.idempotency_key, gateway=info.context.services.gateway,
                ticket_key_secret=info.context.settings.ticket_key_secret,
                expected_version=input.expected_version)
            return ConfirmPayload(booking=Booking.from_model(booking), payment=Payment.from_model(payment))
        return await run_mutation(info, ConfirmPayload, work)

    @strawberry.mutation(description="Cancel a hold or a confirmed booking (refunded).")
    async def cancel_booking(self, info: strawberry.Info, input: CancelInput) -> CancelPayload:
        async def work(session: AsyncSession) -> CancelPayload:
            booking, refund = await bookings.cancel(
                session, caller=_partner_write(info, input.idempotency_key),
                booking_id=parse_id(input.booking_id, "bookingId"),
                idempotency_key=input.idempotency_key, gateway=info.context.services.gateway,
                holds=info.context.services.hold_times)
            return CancelPayload(booking=Booking.from_model(booking),
                                 refund=Payment.from_model(refund) if refund else None)
        return await run_mutation(info, CancelPayload, work)

    @strawberry.mutation(description="Admin only: expire lapsed holds now (the sweeper also does).")
    async def expire_reservations(self, info: strawberry.Info) -> ExpirePayload:
        async def work(session: AsyncSession) -> ExpirePayload:
            info.context.require_admin()
            return ExpirePayload(expired=await bookings.expire_lapsed(
                session, holds=info.context.services.hold_times))
        return await run_mutation(info, ExpirePayload, work)
