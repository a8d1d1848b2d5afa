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
    since_version: int = strawberry.field(description=(
        "changedSeats lists every seat change after this version (changes close together arrive "
        "merged in one message). Newer than the version a client shows: it missed changes and "
        "re-reads. Equal to version on a snapshot."))

    @classmethod
    def from_message(cls, message: dict[str, Any], since_version: int, *, snapshot: bool = False
                     ) -> AvailabilityUpdate:
        return cls(event_id=strawberry.ID(str(message["eventId"])),
                   available_seats=message["availableSeats"], version=message["version"],
                   since_version=since_version,
                   status=EventStatus(message["status"]), snapshot=snapshot,
                   changed_seats=[SeatChange(seat_id=strawberry.ID(str(change["seatId"])),
                                             status=SeatStatus(change["status"]))
                                  for change in message["changedSeats"]])


@strawberry.type
class BookingUpdate:
    booking: Booking
    reason: str = strawberry.field(description="CONFIRMED, EXPIRED, CANCELLED or OFFERED")
