"""The expiry sweeper: runs in every instance, safe anywhere, any number of times at once
(holds are claimed with SKIP LOCKED). Reads already treat lapsed holds as free; the sweeper
makes it official, returns the places and tells subscribers."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.pubsub import Broker
from app.services import bookings, outbox

logger = logging.getLogger(__name__)


async def sweep_once(sessionmaker: async_sessionmaker[AsyncSession], broker: Broker) -> int:
    async with sessionmaker() as session:
        expired = await bookings.expire_lapsed(session)
        await session.commit()
    await broker.publish_all(outbox.take(session))
    return expired


async def run_sweeper(sessionmaker: async_sessionmaker[AsyncSession], broker: Broker,
                      interval_seconds: float) -> None:
    while True:
        try:
            # A full batch means more are waiting: go again at once.
            while await sweep_once(sessionmaker, broker) == bookings.EXPIRY_BATCH:
                pass
        except Exception:  # a database blip must not end the sweeper
            logger.exception("Expiry sweep failed; retrying in %s s", interval_seconds)
        await asyncio.sleep(interval_seconds)
