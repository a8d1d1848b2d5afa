"""Per-caller rate limits: fixed windows counted in Redis (shared by every instance) or in
this process (embedded mode). Losing Redis must not stop sales, so its limiter fails open.

Keys are stored as a hash of fixed length, whatever the caller put in them (an email, an
address). A call refused by any of its limits counts against none of them: otherwise a caller
refused by its own limit would still spend the budget of others (an attacker over its address
limit would keep using up the limit of the account it attacks)."""

from __future__ import annotations

import hashlib
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

from app.errors import DomainError, ErrorCode

logger = logging.getLogger(__name__)


Limit = tuple[str, int]  # (key, calls allowed per window)


class RateLimiter(Protocol):
    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        """Count one call against each limit; None when all allow it, else the seconds until
        the window reopens."""

    async def remember(self, key: str, *, seconds: int) -> None:
        """Note `key` for `seconds` (an exemption a later call may ask about)."""

    async def recalls(self, key: str) -> bool:
        """Whether `key` was remembered and has not lapsed."""


def _stored_key(key: str) -> str:
    return hashlib.sha256(key.encode(errors="surrogatepass")).hexdigest()[:32]


def _window(window_seconds: int, now: float) -> tuple[int, float]:
    number = int(now // window_seconds)
    return number, (number + 1) * window_seconds - now


class MemoryRateLimiter:
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._remembered: dict[str, float] = {}  # key -> when it lapses

    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        number, remaining = _window(window_seconds, time.time())
        if len(self._counts) > self.MAX_KEYS:  # forget finished windows
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= number}
        counters = [(_stored_key(key), number) for key, _ in limits]
        if any(self._counts.get(counter, 0) >= limit for counter, (_, limit) in zip(counters, limits, strict=True)):
            return remaining
        for counter in counters:
            self._counts[counter] = self._counts.get(counter, 0) + 1
        return None

    async def remember(self, key: str, *, seconds: int) -> None:
        now = time.time()
        if len(self._remembered) > self.MAX_KEYS:  # forget what has lapsed
            self._remembered = {k: until for k, until in self._remembered.items() if until > now}
        self._remembered[_stored_key(key)] = now + seconds

    async def recalls(self, key: str) -> bool:
        return self._remembered.get(_stored_key(key), 0.0) > time.time()


class RedisRateLimiter:
    def __init__(self, url: str, *, prefix: str = "") -> None:
        self._prefix = prefix
        # One retry on a fresh connection: after a Redis restart the pooled one is dead.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), retries=1), retry_on_error=[RedisConnectionError])

    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        number, remaining = _window(window_seconds, time.time())
        counters = [f"{self._prefix}ratelimit:{_stored_key(key)}:{number}" for key, _ in limits]
        try:
            # One round trip for all; a refused call takes its counts back in a second one
            # (counting first keeps the common case at one trip, without a script).
            counts = (await self._run(counters, window_seconds, increment=1))[::2]
            if not any(count > limit for count, (_, limit) in zip(counts, limits, strict=True)):
                return None
            await self._run(counters, window_seconds, increment=-1)
        except (RedisError, OSError) as error:
            logger.warning("Rate limiting skipped, Redis unreachable: %s", error)
            return None
        return remaining

    async def remember(self, key: str, *, seconds: int) -> None:
        try:
            await self._redis.set(f"{self._prefix}remembered:{_stored_key(key)}", 1, ex=seconds)
        except (RedisError, OSError) as error:
            logger.warning("Not remembered, Redis unreachable: %s", error)

    async def recalls(self, key: str) -> bool:
        try:
            return bool(await self._redis.exists(f"{self._prefix}remembered:{_stored_key(key)}"))
        except (RedisError, OSError) as error:  # then no limit holds anyway (hit fails open)
            logger.warning("Nothing recalled, Redis unreachable: %s", error)
            return False

    async def _run(self, counters: Sequence[str], window_seconds: int, *, increment: int) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for counter in counters:
                pipe.incrby(counter, increment)
                pipe.expire(counter, window_seconds + 1)
            return list(await pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()


async def enforce(limiter: RateLimiter, limits: Sequence[Limit], *, window_seconds: int = 60) -> None:
    retry_after = await limiter.hit(limits, window_seconds=window_seconds)
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        raise DomainError(ErrorCode.RATE_LIMITED, f"Too many attempts: try again in {seconds} s",
                          retry_after_seconds=seconds)
