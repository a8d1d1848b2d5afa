"""A bound on how much of one kind of request a worker serves at once.

The waiting room's own traffic (joins, polls, position reads) comes in floods when a big sale
opens. Behind a gate it cannot take every database connection and every turn of the event
loop from the admitted buyers the room exists to protect: at most `limit` requests are inside
at once, and none goes in while the event loop runs late (`LoopLag`), which is what would
make every other request slow. Waiting at the gate costs nothing; one who waits too long is
told to come back instead of timing out on the connection pool.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app import metrics
from app.errors import DomainError, ErrorCode


class LoopLag:
    """How late this event loop runs what is due, sampled every `interval` seconds while
    `run` runs (0 before)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.seconds = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.seconds = loop.time() - due
            metrics.EVENT_LOOP_LAG.set(self.seconds)


class Gate:
    def __init__(self, limit: int, *, lag: LoopLag, max_lag_seconds: float, wait_seconds: float,
                 busy_message: str) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._lag = lag
        self._max_lag = max_lag_seconds
        self._wait_seconds = wait_seconds
        self._busy_message = busy_message

    async def take(self, *, wait: bool = False) -> None:
        """One of the `limit` places, taken while the loop keeps time (give it back with
        `release`). RATE_LIMITED (retry after the wait) when that did not happen within
        `wait_seconds`; with `wait`, however long it takes (a stream that is open anyway)."""
        try:
            async with asyncio.timeout(None if wait else self._wait_seconds):
                await self._slots.acquire()
                try:
                    while self._lag.seconds > self._max_lag:
                        await asyncio.sleep(self._lag.interval)
                except BaseException:
                    self._slots.release()
                    raise
        except TimeoutError:
            raise DomainError(ErrorCode.RATE_LIMITED, self._busy_message,
                              retry_after_seconds=max(1, math.ceil(self._wait_seconds))) from None

    def release(self) -> None:
        self._slots.release()

    @asynccontextmanager
    async def enter(self, *, wait: bool = False) -> AsyncIterator[None]:
        """Inside, one of the `limit` (see `take`)."""
        await self.take(wait=wait)
        try:
            yield
        finally:
            self.release()
