"""Booking types: bookings, tickets, payments, and the booking mutations' inputs and payloads."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import strawberry

from app import models
from app.models import utcnow
from app.schema.accounts import User
from app.schema.catalogue import Event, Seat
from app.schema.common import UserError


@strawberry.enum
class BookingStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


@strawberry.enum
class PaymentStatus(StrEnum):
    CAPTURED = "CAPTURED"
    REFUNDED = "REFUNDED"


@strawberry.enum
class TicketStatus(StrEnum):
    VALID = "VALID"
    VOID = "VOID"
    CHECKED_IN = "CHECKED_IN"


def ticket_url(info: strawberry.Info, code: str) -> str:
    return f"{info.context.base_url}/tickets/{code}"


@strawberry.type
class Ticket:
    id: strawberry.ID
    code: str = strawberry.field(description="Secret admission code; GET /tickets/{code} verifies it")
    status: TicketStatus = strawberry.field(description="VOID: cancelled or refunded")
    checked_in_at: datetime | None = strawberry.field(description="The first scan at the door")
    model: strawberry.Private[models.Ticket]

    @classmethod
    def from_model(cls, ticket: models.Ticket) -> Ticket:
        return cls(id=strawberry.ID(str(ticket.id)), code=ticket.code, status=TicketStatus(ticket.status),
                   checked_in_at=ticket.checked_in_at, model=ticket)

    @strawberry.field
    def url(self, info: strawberry.Info) -> str:
        return ticket_url(info, self.code)

    @strawberry.field
    async def seat(self, info: strawberry.Info) -> Seat | None:
        if self.model.seat_id is None:
            return None
        found = await info.context.loaders.seat.load(self.model.seat_id)
        return Seat.from_model(*found) if found else None


@strawberry.type
class Payment:
    id: strawberry.ID
    transaction_id: str
    status: PaymentStatus
    amount_cents: int
    method: str

    @classmethod
    def from_model(cls, payment: models.Payment) -> Payment:
        return cls(id=strawberry.ID(str(payment.id)), transaction_id=payment.transaction_id,
                   status=PaymentStatus(payment.status), amount_cents=payment.amount_cents,
                   method=payment.method)


@strawberry.type
class Booking:
    id: strawberry.ID
    reference: str
    quantity: int
    total_cents: int
    currency: str
    created_at: datetime
    confirmed_at: datetime | None
    cancelled_at: datetime | None
    version: int
    external_reference: str | None
    model: strawberry.Private[models.Booking]

    @classmethod
    def from_model(cls, booking: models.Booking) -> Booking:
        return cls(id=strawberry.ID(str(booking.id)), reference=booking.reference,
                   quantity=booking.quantity, total_cents=booking.total_cents,
                   currency=booking.currency, created_at=booking.created_at,
                   confirmed_at=booking.confirmed_at, cancelled_at=booking.cancelled_at,
                   version=booking.version, external_reference=booking.external_reference, model=booking)

    @property
    def _lapsed(self) -> bool:
        model = self.model
        return (model.status == models.BookingStatus.PENDING and model.expires_at is not None
                and model.expires_at <= utcnow())

    @strawberry.field(description="A hold past its expiry reads EXPIRED even before the sweeper runs.")
    def status(self) -> BookingStatus:
        return BookingStatus.EXPIRED if self._lapsed else BookingStatus(self.model.status)

    @strawberry.field(description="Set while PENDING: when the hold lapses.")
    def expires_at(self) -> datetime | None:
        return None if self._lapsed else self.model.expires_at

    @strawberry.field
    async def event(self, info: strawberry.Info) -> Event:
        return Event.from_model(await info.context.loaders.event.load(self.model.event_id))

    @strawberry.field
    async def user(self, info: strawberry.Info) -> User:
        return User.from_model(await info.context.loaders.user.load(self.model.user_id))

    @strawberry.field
    async def seats(self, info: strawberry.Info) -> list[Seat]:
        if not self.model.seat_ids:
            return []
        found = await info.context.loaders.seat.load_many(self.model.seat_ids)
        return [Seat.from_model(*seat) for seat in found if seat is not None]

    @strawberry.field(description="Set once CONFIRMED: GET on it shows the tickets.")
    def ticket_url(self, info: strawberry.Info) -> str | None:
        if self.model.status != models.BookingStatus.CONFIRMED or self.model.ticket_code is None:
            return None
        return ticket_url(info, self.model.ticket_code)

    @strawberry.field(description="One per place once CONFIRMED, each with its own code.")
    async def tickets(self, info: strawberry.Info) -> list[Ticket]:
        if self.model.confirmed_at is None:
            return []
        return [Ticket.from_model(t) for t in await info.context.loaders.tickets.load(self.model.id)]


@strawberry.input
class ReserveInput:
    event_id: strawberry.ID
    quantity: int | None = None
    seat_ids: list[strawberry.ID] | None = None
    idempotency_key: str | None = None
    expected_version: int | None = None
    external_reference: str | None = strawberry.field(
        default=None, description="The partner's own order id, kept on the booking (at most 200 characters)")


@strawberry.input
class ConfirmInput:
    booking_id: strawberry.ID
    payment_token: str
    payment_method: str | None = "card"
    idempotency_key: str | None = None


@strawberry.input
class CancelInput:
    booking_id: strawberry.ID
    idempotency_key: str | None = None


@strawberry.type
class ReservePayload:
    booking: Booking | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class ConfirmPayload:
    booking: Booking | None = None
    payment: Payment | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class CancelPayload:
    booking: Booking | None = None
    refund: Payment | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class ExpirePayload:
    expired: int = 0
    errors: list[UserError] = strawberry.field(default_factory=list)
