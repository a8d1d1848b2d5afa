"""Scheduled on-sales: SCHEDULED events go ON_SALE when their sales start, on whichever
instance looks first (exactly once: `catalogue.open_due_sales` is one conditional UPDATE)."""

from __future__ import annotations

from datetime import datetime

from app.resolvers.context import AppServices
from app.services import catalogue, outbox


async def open_sales_once(services: AppServices, now: datetime | None = None) -> list[int]:
    """The events this call opened; their availability is published after the commit."""
    async with services.sessionmaker() as session:
        opened = await catalogue.open_due_sales(session, now=now)
        await session.commit()
    await services.broker.publish_all(outbox.take(session))
    return opened
