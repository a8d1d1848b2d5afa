"""Check-in types: the door's scans and its live counts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import strawberry

from app.schema.bookings import Ticket
from app.schema.common import UserError
from app.services import checkin


@strawberry.enum
class CheckInResult(StrEnum):
    OK = checkin.CheckInResult.OK
    ALREADY_CHECKED_IN = checkin.CheckInResult.ALREADY_CHECKED_IN


@strawberry.input
class CheckInInput:
    code: str
    event_id: strawberry.ID | None = strawberry.field(
        default=None, description="The event this door admits to: a ticket of another is TICKET_INVALID")
    gate: str | None = None
    scanned_at: datetime | None = strawberry.field(
        default=None, description="When an offline scanner scanned it; omit for a live scan")
    nonce: str | None = strawberry.field(
        default=None, description="Unique per scan: the same nonce again gets the first answer")


@strawberry.type
class CheckInPayload:
    ticket: Ticket | None = None
    result: CheckInResult | None = None
    checked_in_at: datetime | None = strawberry.field(default=None, description="The ticket's first scan")
    gate: str | None = strawberry.field(default=None, description="Where the first scan was")
    errors: list[UserError] = strawberry.field(default_factory=list)

    @classmethod
    def from_domain(cls, answer: checkin.CheckIn) -> CheckInPayload:
        return cls(ticket=Ticket.from_model(answer.ticket), result=CheckInResult(answer.result),
                   checked_in_at=answer.checked_in_at, gate=answer.gate)


@strawberry.type
class CheckInCounts:
    event_id: strawberry.ID
    checked_in: int
    sold: int = strawberry.field(description="Tickets sold and not cancelled")

    @classmethod
    def from_domain(cls, counts: checkin.Counts) -> CheckInCounts:
        return cls(event_id=strawberry.ID(str(counts.event_id)), checked_in=counts.checked_in, sold=counts.sold)
