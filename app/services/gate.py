"""A bound on how many of one kind of request a worker serves at once.

The waiting room's own traffic (joins, polls, position reads) comes in floods when a big sale
opens; behind a gate it cannot take every database connection and every turn of the event
loop from the admitted buyers it exists to protect. Waiting at the gate costs nothing; one
who waits too long is told to come back instead of timing out on the connection pool.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.errors import DomainError, ErrorCode


class Gate:
    def __init__(self, limit: int, *, wait_seconds: float, busy_message: str) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._wait_seconds = wait_seconds
        self._busy_message = busy_message

    @asynccontextmanager
    async def enter(self, *, wait: bool = False) -> AsyncIterator[None]:
        """Inside, one of the `limit`. RATE_LIMITED (retry after the wait) when no place came
        free within `wait_seconds`; with `wait`, however long it takes (a stream that is
        open anyway)."""
        try:
            async with asyncio.timeout(None if wait else self._wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise DomainError(ErrorCode.RATE_LIMITED, self._busy_message,
                              retry_after_seconds=max(1, math.ceil(self._wait_seconds))) from None
        try:
            yield
        finally:
            self._slots.release()
