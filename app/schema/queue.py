"""Waiting-room types: the room an admin sets, the ticket a buyer holds."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import strawberry

from app import models
from app.schema.common import UserError
from app.services import queue


@strawberry.enum
class QueueStatus(StrEnum):
    WAITING = "WAITING"
    ADMITTED = "ADMITTED"
    LAPSED = "LAPSED"
    LEFT = "LEFT"
    SOLD_OUT = "SOLD_OUT"


@strawberry.input
class WaitingRoomInput:
    admit_per_minute: int = strawberry.field(description="Buyers admitted per minute, in queue order")
    admission_seconds: int = strawberry.field(default=600, description="How long an admission lasts")
    paused: bool = strawberry.field(default=False, description="Stop admitting (the queue keeps its order)")

    def config(self) -> queue.RoomConfig:
        return queue.RoomConfig(admit_per_minute=self.admit_per_minute, admission_seconds=self.admission_seconds,
                                paused=self.paused)


@strawberry.type
class WaitingRoom:
    admit_per_minute: int
    admission_seconds: int
    paused: bool
    queue_length: int = strawberry.field(description="Tickets WAITING")
    admitted_count: int = strawberry.field(description="Tickets ADMITTED and not yet lapsed")

    @classmethod
    def from_model(cls, room: models.WaitingRoom, queue_length: int, admitted_count: int) -> WaitingRoom:
        return cls(admit_per_minute=room.admit_per_minute, admission_seconds=room.admission_seconds,
                   paused=room.paused, queue_length=queue_length, admitted_count=admitted_count)


@strawberry.type
class QueueTicket:
    event_id: strawberry.ID
    status: QueueStatus
    position: int | None = strawberry.field(description="1 = next to be admitted; null unless WAITING")
    estimated_wait_seconds: int | None = strawberry.field(description="At the room's rate; null while paused")
    admitted_until: datetime | None = strawberry.field(description="While ADMITTED: reserve before this")
    joined_at: datetime

    @classmethod
    def from_view(cls, view: queue.TicketView) -> QueueTicket:
        ticket = view.ticket
        return cls(event_id=strawberry.ID(str(ticket.event_id)), status=QueueStatus(ticket.status),
                   position=view.position, estimated_wait_seconds=view.estimated_wait_seconds,
                   admitted_until=ticket.admitted_until if ticket.status == models.QueueStatus.ADMITTED else None,
                   joined_at=ticket.joined_at)


@strawberry.type
class QueuePayload:
    ticket: QueueTicket | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)
