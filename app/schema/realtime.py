"""Subscription payloads."""

from __future__ import annotations

from typing import Any

import strawberry

from app.schema.bookings import Booking
from app.schema.catalogue import EventStatus, SeatStatus


@strawberry.type
class SeatChange:
    seat_id: strawberry.ID
    status: SeatStatus


@strawberry.type
class AvailabilityUpdate:
    event_id: strawberry.ID
    available_seats: int
    version: int
    status: EventStatus
    changed_seats: list[SeatChange]
    snapshot: bool

    @classmethod
    def from_message(cls, message: dict[str, Any], *, snapshot: bool = False) -> AvailabilityUpdate:
        return cls(event_id=strawberry.ID(str(message["eventId"])),
                   available_seats=message["availableSeats"], version=message["version"],
                   status=EventStatus(message["status"]), snapshot=snapshot,
                   changed_seats=[SeatChange(seat_id=strawberry.ID(str(change["seatId"])),
                                             status=SeatStatus(change["status"]))
                                  for change in message["changedSeats"]])


@strawberry.type
class BookingUpdate:
    booking: Booking
    reason: str = strawberry.field(description="CONFIRMED, EXPIRED, CANCELLED or OFFERED")
