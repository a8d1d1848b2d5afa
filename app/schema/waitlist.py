"""Waitlist types."""

from __future__ import annotations

from enum import StrEnum

import strawberry

from app import models
from app.schema.bookings import Booking
from app.schema.catalogue import Event
from app.schema.common import UserError


@strawberry.enum
class WaitlistStatus(StrEnum):
    WAITING = "WAITING"
    OFFERED = "OFFERED"
    CONVERTED = "CONVERTED"
    EXPIRED = "EXPIRED"
    LEFT = "LEFT"


@strawberry.type
class WaitlistEntry:
    id: strawberry.ID
    quantity: int
    status: WaitlistStatus
    position: int | None = strawberry.field(description="Place in the queue while WAITING (1 is next)")
    model: strawberry.Private[models.WaitlistEntry]

    @classmethod
    def from_model(cls, entry: models.WaitlistEntry, position: int | None) -> WaitlistEntry:
        return cls(id=strawberry.ID(str(entry.id)), quantity=entry.quantity,
                   status=WaitlistStatus(entry.status), position=position, model=entry)

    @strawberry.field
    async def event(self, info: strawberry.Info) -> Event:
        return Event.from_model(await info.context.loaders.event.load(self.model.event_id))

    @strawberry.field(description="The PENDING booking held for this entry; confirm it with confirmBooking.")
    async def offer(self, info: strawberry.Info) -> Booking | None:
        if self.model.offer_booking_id is None:
            return None
        return Booking.from_model(await info.context.loaders.booking.load(self.model.offer_booking_id))


@strawberry.input
class JoinWaitlistInput:
    event_id: strawberry.ID
    quantity: int = 1


@strawberry.type
class WaitlistPayload:
    entry: WaitlistEntry | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)
