"""Per-caller rate limits: fixed windows counted in Redis (shared by every instance) or in
this process (embedded mode). Losing Redis must not stop sales, so its limiter fails open."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app import metrics
from app.errors import DomainError, ErrorCode

logger = logging.getLogger(__name__)


Limit = tuple[str, int]  # (key, calls allowed per window)


class RateLimiter(Protocol):
    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        """Count one call against each limit; None when all allow it, else the seconds until
        the window reopens."""


def _window(window_seconds: int, now: float) -> tuple[int, float]:
    number = int(now // window_seconds)
    return number, (number + 1) * window_seconds - now


class MemoryRateLimiter:
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        number, remaining = _window(window_seconds, time.time())
        if len(self._counts) > self.MAX_KEYS:  # forget finished windows
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= number}
        exceeded = False
        for key, limit in limits:
            count = self._counts[(key, number)] = self._counts.get((key, number), 0) + 1
            exceeded = exceeded or count > limit
        return remaining if exceeded else None


class RedisRateLimiter:
    """Counts in Redis. The calls made while the event loop turns once go to Redis together,
    in one pipeline on one connection: a burst of a thousand requests costs a few round
    trips, not a thousand connections (redis-py's default pool raised "Too many connections"
    past 100, and every such call went through uncounted). Only Redis itself being
    unreachable lets calls through uncounted, and that is counted as a metric."""

    def __init__(self, url: str, *, prefix: str = "", max_connections: int = 16) -> None:
        self._prefix = prefix
        # Few connections suffice (one per batch in flight); callers beyond them wait their
        # turn. One retry on a fresh connection: after a Redis restart the pooled one is dead.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, socket_timeout=1.0, socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), retries=1), retry_on_error=[RedisConnectionError])
        self._redis = aioredis.Redis(connection_pool=pool)
        self._batch: list[tuple[list[str], int, asyncio.Future[list[int]]]] = []
        self._sends: set[asyncio.Task[None]] = set()

    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        number, remaining = _window(window_seconds, time.time())
        counted: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        if not self._batch:  # the first of this turn: send once everyone else of it has joined
            send = asyncio.create_task(self._send(self._batch), name="rate-limit-counts")
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)
        self._batch.append(([f"{self._prefix}ratelimit:{key}:{number}" for key, _ in limits], window_seconds,
                            counted))
        try:
            counts = await counted
        except (RedisError, OSError) as error:
            metrics.RATE_LIMIT_UNCOUNTED.inc()
            logger.warning("Rate limiting skipped, Redis unreachable: %s", error)
            return None
        return remaining if any(count > limit for count, (_, limit) in zip(counts, limits, strict=True)) else None

    async def _send(self, batch: list[tuple[list[str], int, asyncio.Future[list[int]]]]) -> None:
        self._batch = []  # calls from here on make the next batch
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, window_seconds, _ in batch:
                    for key in keys:
                        pipe.incr(key)
                        pipe.expire(key, window_seconds + 1)
                replies = iter((await pipe.execute())[::2])
        except (RedisError, OSError) as error:
            for _, _, counted in batch:
                counted.set_exception(error)
            return
        for keys, _, counted in batch:
            counted.set_result([next(replies) for _ in keys])

    async def close(self) -> None:
        await asyncio.gather(*self._sends, return_exceptions=True)
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()


async def enforce(limiter: RateLimiter, limits: Sequence[Limit], *, window_seconds: int = 60) -> None:
    retry_after = await limiter.hit(limits, window_seconds=window_seconds)
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        raise DomainError(ErrorCode.RATE_LIMITED, f"Too many attempts: try again in {seconds} s",
                          retry_after_seconds=seconds)
