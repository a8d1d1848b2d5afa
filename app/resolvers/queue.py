"""The waiting room: joining, leaving and watching one's place (buyers), setting it (admins)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics, models
from app.errors import DomainError, ErrorCode, id_or_none, parse_id
from app.models import QueueStatus
from app.resolvers.base import run_mutation
from app.schema.catalogue import Event, EventPayload
from app.schema.queue import QueuePayload, QueueTicket, WaitingRoomInput
from app.services import queue

# The waiting room's queries and mutations pass the services' queue gate before they run
# (BookMyEventSchema.execute); a queueStatus stream passes it for each read (below).

async def _read_ticket(info: strawberry.Info, user_id: int, event_id: int) -> models.QueueTicket | None:
    async with info.context.read_session() as session:
        return await queue.ticket_of(session, user_id=user_id, event_id=event_id)


async def _view(info: strawberry.Info, ticket: models.QueueTicket, session: AsyncSession | None = None) -> QueueTicket:
    return QueueTicket.from_view(await info.context.services.queue_orders.view(ticket, session))


async def _current(info: strawberry.Info, user_id: int, event_id: int) -> QueueTicket | None:
    ticket = await _read_ticket(info, user_id, event_id)
    return await _view(info, ticket) if ticket else None


@strawberry.type
class QueueQuery:
    @strawberry.field(description="The signed-in buyer's place in an event's queue; null without one.")
    async def my_queue_ticket(self, info: strawberry.Info, event_id: strawberry.ID) -> QueueTicket | None:
        parsed = id_or_none(event_id)
        if info.context.identity is None or parsed is None:
            return None
        identity = info.context.require_user()  # no API key scope covers the waiting room
        return await _current(info, identity.user_id, parsed)


@strawberry.type
class QueueMutation:
    @strawberry.mutation(description="A place in the event's waiting room; the same ticket when already queued.")
    async def join_queue(self, info: strawberry.Info, event_id: strawberry.ID) -> QueuePayload:
        async def work(session: AsyncSession) -> QueuePayload:
            identity = info.context.require_user()
            ticket = await queue.join(session, user_id=identity.user_id, event_id=parse_id(event_id, "eventId"))
            return QueuePayload(ticket=await _view(info, ticket, session))
        settings = info.context.settings
        return await run_mutation(info, QueuePayload, work, limits=[
            (f"queue-join:{info.context.caller_key}", settings.queue_join_rate_limit_per_minute),
            (f"queue-join:ip:{info.context.client_ip}", settings.queue_join_ip_rate_limit_per_minute)])

    @strawberry.mutation(description="Give up one's place (or admission) in the event's queue.")
    async def leave_queue(self, info: strawberry.Info, event_id: strawberry.ID) -> QueuePayload:
        async def work(session: AsyncSession) -> QueuePayload:
            identity = info.context.require_user()
            ticket = await queue.leave(session, user_id=identity.user_id, event_id=parse_id(event_id, "eventId"))
            return QueuePayload(ticket=await _view(info, ticket, session))
        return await run_mutation(info, QueuePayload, work)

    @strawberry.mutation(description="Admin only. Set, change or pause the event's waiting room; null removes it.")
    async def set_waiting_room(self, info: strawberry.Info, event_id: strawberry.ID,
                               input: WaitingRoomInput | None = None) -> EventPayload:
        async def work(session: AsyncSession) -> EventPayload:
            info.context.require_admin()
            event = await queue.set_waiting_room(session, event_id=parse_id(event_id, "eventId"),
                                                 config=input.config() if input else None)
            return EventPayload(event=Event.from_model(event))
        return await run_mutation(info, EventPayload, work)


@strawberry.type
class QueueSubscription:
    @strawberry.subscription(description="The buyer's queue ticket at once, then as it moves: admission and "
                                         "sold out at once, position changes at most every few seconds.")
    async def queue_status(self, info: strawberry.Info,
                           event_id: strawberry.ID) -> AsyncGenerator[QueueTicket, None]:
        identity = info.context.require_user()
        parsed = id_or_none(event_id)
        if parsed is None:
            raise DomainError(ErrorCode.NOT_FOUND, "Event not found")
        interval = info.context.settings.queue_status_interval_seconds
        sent = metrics.SUBSCRIPTION_MESSAGES.labels("queueStatus")
        async with info.context.services.broker.subscribe(queue.queue_channel(parsed),
                                                          queue.merge_queue_messages) as inbox:
            gate = info.context.services.queue_gate  # a stream is open anyway: it waits its turn
            async with gate.enter(wait=True):
                ticket = await _read_ticket(info, identity.user_id, parsed)
                current = await _view(info, ticket) if ticket else None
            if current is None:
                raise DomainError(ErrorCode.NOT_FOUND, "No place in this queue: join it with joinQueue")
            sent.inc()
            yield current
            sent_at = time.monotonic()
            while True:
                delivery = await inbox.next()
                info.context.require_user()  # a private stream ends with the caller's token
                changed = delivery is None or identity.user_id in delivery.message["users"] \
                    or delivery.message["soldOut"]
                # Only the queue moved: a new position (from the shared order, no read of the
                # ticket) is worth a message every `interval` at most.
                if not changed and (ticket is None or ticket.status != QueueStatus.WAITING
                                    or time.monotonic() - sent_at < interval):
                    continue
                async with gate.enter(wait=True):
                    if changed:  # this ticket changed (or messages were missed): read it again
                        ticket = await _read_ticket(info, identity.user_id, parsed)
                    latest = await _view(info, ticket) if ticket else None
                if latest is not None and latest != current:
                    current, sent_at = latest, time.monotonic()
                    sent.inc()
                    yield latest
