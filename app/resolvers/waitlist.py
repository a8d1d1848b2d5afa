"""Waitlist queries and mutations."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import parse_id
from app.resolvers.base import run_mutation
from app.schema.waitlist import JoinWaitlistInput, WaitlistEntry, WaitlistPayload
from app.services import waitlist


@strawberry.type
class WaitlistQuery:
    @strawberry.field(description="The signed-in user's waitlist entries, newest first.")
    async def my_waitlist(self, info: strawberry.Info) -> list[WaitlistEntry]:
        if info.context.identity is None:
            return []
        identity = info.context.require_user()  # no API key scope covers the waitlist
        async with info.context.read_session() as session:
            entries = await waitlist.entries_of(session, user_id=identity.user_id)
            positions = await waitlist.positions(session, entries)
        return [WaitlistEntry.from_model(entry, positions.get(entry.id)) for entry in entries]


@strawberry.type
class WaitlistMutation:
    @strawberry.mutation(description="Queue for a sold-out event; returned places are offered in order.")
    async def join_waitlist(self, info: strawberry.Info, input: JoinWaitlistInput) -> WaitlistPayload:
        async def work(session: AsyncSession) -> WaitlistPayload:
            identity = info.context.require_user()
            entry = await waitlist.join(session, user_id=identity.user_id,
                                        event_id=parse_id(input.event_id, "eventId"), quantity=input.quantity)
            position = (await waitlist.positions(session, [entry])).get(entry.id)
            return WaitlistPayload(entry=WaitlistEntry.from_model(entry, position))
        return await run_mutation(info, WaitlistPayload, work)

    @strawberry.mutation(description="Leave the queue; an open offer is declined and passed on.")
    async def leave_waitlist(self, info: strawberry.Info, id: strawberry.ID) -> WaitlistPayload:
        async def work(session: AsyncSession) -> WaitlistPayload:
            entry = await waitlist.leave(session, caller=info.context.require_user(), entry_id=parse_id(id, "id"),
                                         gateway=info.context.services.gateway,
                                         holds=info.context.services.hold_times)
            return WaitlistPayload(entry=WaitlistEntry.from_model(entry, None))
        return await run_mutation(info, WaitlistPayload, work)
