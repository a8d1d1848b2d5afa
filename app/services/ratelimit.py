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
    """Counts in Redis, one round trip a request. Its connections are a bounded pool that
    callers queue for: a burst waits its turn instead of failing open for want of a
    connection (redis-py's default pool raises "Too many connections" past 100). Only Redis
    itself being unreachable lets calls through uncounted, and that is counted as a metric."""

    POOL_SIZE = 32  # per worker: one round trip each, so a few dozen serve thousands a second
    WAIT_SECONDS = 2.0  # a call that waits longer for its count is refused: the server is swamped

    def __init__(self, url: str, *, prefix: str = "", pool_size: int = POOL_SIZE) -> None:
        self._prefix = prefix
        # One retry on a fresh connection: after a Redis restart the pooled one is dead.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=None, socket_timeout=1.0, socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), retries=1), retry_on_error=[RedisConnectionError])
        self._redis = aioredis.Redis(connection_pool=pool)

    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        number, remaining = _window(window_seconds, time.time())
        try:
            async with asyncio.timeout(self.WAIT_SECONDS), self._redis.pipeline(transaction=False) as pipe:
                for key, _ in limits:
                    counter = f"{self._prefix}ratelimit:{key}:{number}"
                    pipe.incr(counter)
                    pipe.expire(counter, window_seconds + 1)
                replies = await pipe.execute()
        except TimeoutError:
            metrics.RATE_LIMIT_UNCOUNTED.labels("busy").inc()
            return 1.0  # shed the load: try again in a second
        except (RedisError, OSError) as error:
            metrics.RATE_LIMIT_UNCOUNTED.labels("redis_unreachable").inc()
            logger.warning("Rate limiting skipped, Redis unreachable: %s", error)
            return None
        counts = replies[::2]
        return remaining if any(count > limit for count, (_, limit) in zip(counts, limits, strict=True)) else None

    async def close(self) -> None:
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()


async def enforce(limiter: RateLimiter, limits: Sequence[Limit], *, window_seconds: int = 60) -> None:
    retry_after = await limiter.hit(limits, window_seconds=window_seconds)
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        raise DomainError(ErrorCode.RATE_LIMITED, f"Too many attempts: try again in {seconds} s",
                          retry_after_seconds=seconds)
