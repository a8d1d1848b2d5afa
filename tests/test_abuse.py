"""Abuse that costs others: oversized inputs, lockouts, connection hoarding, slow clients,
spoofed addresses, requests the event can never serve."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DomainError, ErrorCode
from app.services import waitlist
from tests.factories import make_event, make_user


async def test_waitlist_refuses_more_places_than_the_event_has(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=3, max_tickets_per_booking=10)
    user = await make_user(sessionmaker)
    async with sessionmaker() as session:
        with pytest.raises(DomainError) as refused:
            await waitlist.join(session, user_id=user.id, event_id=event.id, quantity=4)
    assert (refused.value.code, refused.value.field) == (ErrorCode.LIMIT_EXCEEDED, "quantity")
