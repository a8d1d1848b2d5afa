"""Admission from the waiting rooms, in every instance: `queue.admit` claims each room with
SKIP LOCKED and moves its admission clock as it admits, so the instances together admit at
each room's rate. Scheduled on-sales open first, so a room starts admitting in the same round."""

from __future__ import annotations

from datetime import datetime

from app import metrics
from app.jobs.onsale import open_sales_once
from app.resolvers.context import AppServices
from app.services import outbox, queue


async def admit_once(services: AppServices, now: datetime | None = None) -> list[queue.AdmissionRound]:
    """One admission round; what it changed is published after the commit."""
    async with services.sessionmaker() as session:
        rounds = await queue.admit(session, now=now)
        await session.commit()
    await services.broker.publish_all(outbox.take(session))
    for done in rounds:
        event = str(done.event_id)
        metrics.QUEUE_WAITING.labels(event).set(done.waiting)
        metrics.QUEUE_ADMITTED.labels(event).inc(done.admitted)
        metrics.QUEUE_LAPSED.labels(event).inc(done.lapsed_unused)
        metrics.QUEUE_SOLD_OUT.labels(event).inc(done.sold_out)
    return rounds


async def tick(services: AppServices) -> None:
    await open_sales_once(services)
    await admit_once(services)
