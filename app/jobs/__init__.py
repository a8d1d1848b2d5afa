"""Timed jobs that run in every instance (started and stopped by app/web.py). Each is safe to
run anywhere, any number of times at once: they claim their work in the database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def run_every(name: str, interval_seconds: float, once: Callable[[], Awaitable[object]]) -> None:
    """Run `once` every `interval_seconds` until cancelled; a failure (a database blip) is
    logged and the job goes on."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await once()
        except Exception:
            logger.exception("%s failed; retrying in %s s", name, interval_seconds)
