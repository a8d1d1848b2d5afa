"""The expiry sweeper: runs in every instance, safe anywhere, any number of times at once
(holds are claimed with SKIP LOCKED). Reads already treat lapsed holds as free; the sweeper
makes it official, returns the places and tells subscribers."""

from __future__ import annotations

import asyncio
import logging

from app import metrics
from app.resolvers.context import AppServices
from app.services import bookings, outbox

logger = logging.getLogger(__name__)


async def sweep_once(services: AppServices) -> int:
    async with services.sessionmaker() as session:
        expired = await bookings.expire_lapsed(session, holds=services.hold_times)
        await session.commit()
        holds, places = await bookings.active_holds(session)
    await services.broker.publish_all(outbox.take(session))
    metrics.SWEEPS.inc()
    metrics.EXPIRED_HOLDS.inc(expired)
    metrics.ACTIVE_HOLDS.set(holds)
    metrics.HELD_PLACES.set(places)
    return expired


async def run_sweeper(services: AppServices, interval_seconds: float) -> None:
    """Sweep every `interval_seconds`, the first time one interval after startup: reads and
    reserves treat lapsed holds as free meanwhile, and instances restarted together do not
    all sweep at the same instant."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            # A full batch means more are waiting: go again at once.
            while await sweep_once(services) == bookings.EXPIRY_BATCH:
                pass
        except Exception:  # a database blip must not end the sweeper
            logger.exception("Expiry sweep failed; retrying in %s s", interval_seconds)
