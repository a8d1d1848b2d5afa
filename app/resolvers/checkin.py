"""The door: check-in, revoked tickets for scanners to sync, live counts (STAFF or ADMIN)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.errors import parse_id
from app.resolvers.base import run_mutation
from app.schema.checkin import CheckInCounts, CheckInInput, CheckInPayload
from app.services import checkin, outbox


def _latest(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    return newer  # a message only says "counts changed": they are read afresh


@strawberry.type
class CheckInQuery:
    @strawberry.field(description="Staff: codes of the event's VOID tickets (voided since `since`), for scanners.")
    async def revoked_tickets(self, info: strawberry.Info, event_id: strawberry.ID,
                              since: datetime | None = None) -> list[str]:
        info.context.require_checkin()
        async with info.context.read_session() as session:
            return await checkin.revoked_codes(session, event_id=parse_id(event_id, "eventId"), since=since)


@strawberry.type
class CheckInMutation:
    @strawberry.mutation(description="Staff: admit a ticket. A second scan is ALREADY_CHECKED_IN, not an error.")
    async def check_in(self, info: strawberry.Info, input: CheckInInput) -> CheckInPayload:
        async def work(session: AsyncSession) -> CheckInPayload:
            info.context.require_checkin()
            event_id = parse_id(input.event_id, "eventId") if input.event_id is not None else None
            return CheckInPayload.from_domain(await checkin.check_in(
                session, code=input.code, event_id=event_id, gate=input.gate, scanned_at=input.scanned_at,
                nonce=input.nonce))
        # A door scans far faster than a person buys (and a scanner back online uploads its
        # offline scans at once): staff have a check-in budget of their own.
        return await run_mutation(info, CheckInPayload, work, general_limit=False, limits=[
            (f"checkin:{info.context.caller_key}", info.context.settings.checkin_rate_limit_per_minute)])


@strawberry.type
class CheckInSubscription:
    @strawberry.subscription(description="Staff: checked in and sold for an event, now and after every check-in.")
    async def check_in_counts(self, info: strawberry.Info,
                              event_id: strawberry.ID) -> AsyncGenerator[CheckInCounts, None]:
        info.context.require_checkin()
        parsed = parse_id(event_id, "eventId")
        sent = metrics.SUBSCRIPTION_MESSAGES.labels("checkInCounts")
        async with info.context.services.broker.subscribe(outbox.checkins_channel(parsed), _latest) as inbox:
            while True:
                async with info.context.read_session() as session:
                    counts = await checkin.counts(session, event_id=parsed)
                sent.inc()
                yield CheckInCounts.from_domain(counts)
                await inbox.next()  # a check-in, or lost messages: either way read again
                info.context.require_checkin()  # ends with the caller's token
