"""Per-caller rate limits: fixed windows counted in Redis (shared by every instance) or in
this process (embedded mode). Losing Redis must not stop sales, so its limiter fails open.

Keys are stored as a hash of fixed length, whatever the caller put in them (an email, an
address). A call refused by any of its limits counts against none of them: otherwise a caller
refused by its own limit would still spend the budget of others (an attacker over its address
limit would keep using up the limit of the account it attacks)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
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

    async def remember(self, key: str, *, seconds: int) -> None:
        """Note `key` for `seconds` (an exemption a later call may ask about)."""

    async def recalls(self, key: str) -> bool:
        """Whether `key` was remembered and has not lapsed."""


@functools.lru_cache(maxsize=4096)  # the same few callers ask again and again
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


# One command per count (each is packed and parsed in Python): the count, and on the first of
# its window the expiry, in one script so that no count outlives its window.
_COUNT = "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n"


class RedisRateLimiter:
    """Counts in Redis. The calls made while the event loop turns once go to Redis together,
    in one pipeline on one connection: a burst of a thousand requests costs a few round
    trips, not a thousand connections (redis-py's default pool raised "Too many connections"
    past 100, and every such call went through uncounted). Only Redis itself being
    unreachable lets calls through uncounted, and that is counted as a metric."""

    def __init__(self, url: str, *, prefix: str = "", max_connections: int = 16, cluster: bool = False) -> None:
        self._prefix = prefix
        # Few connections suffice (one per round trip in flight); callers beyond them wait
        # their turn here. (redis-py's cluster client has no blocking pool: past its
        # max_connections it breaks, in 8.1 with an AttributeError.) One retry on a fresh
        # connection: after a Redis restart the pooled one is dead.
        self._turns = asyncio.Semaphore(max_connections)
        options: dict[str, Any] = dict(socket_timeout=1.0, socket_connect_timeout=1.0,
                                       retry=Retry(NoBackoff(), retries=1), retry_on_error=[RedisConnectionError])
        # The cluster client splits a pipeline by shard; no command here needs two keys in one
        # slot, so the counters need no hash tags.
        self._redis: aioredis.Redis | RedisCluster = (RedisCluster.from_url(url, **options) if cluster
                                                      else aioredis.Redis.from_url(url, **options))
        self._batch: list[tuple[list[str], int, asyncio.Future[list[int]]]] = []
        self._sends: set[asyncio.Task[None]] = set()

    async def hit(self, limits: Sequence[Limit], *, window_seconds: int) -> float | None:
        number, remaining = _window(window_seconds, time.time())
        counters = [f"{self._prefix}ratelimit:{_stored_key(key)}:{number}" for key, _ in limits]
        counted: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        if not self._batch:  # the first of this turn: send once everyone else of it has joined
            send = asyncio.create_task(self._send(self._batch), name="rate-limit-counts")
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)
        self._batch.append((counters, window_seconds, counted))
        try:
            counts = await counted
        except (RedisError, OSError) as error:
            metrics.RATE_LIMIT_UNCOUNTED.inc()
            logger.warning("Rate limiting skipped, Redis unreachable: %s", error)
            return None
        if not any(count > limit for count, (_, limit) in zip(counts, limits, strict=True)):
            return None
        # Refused: take the counts back (a round trip of its own; the refusal stands even if
        # it fails, the counts then lapse with their window).
        try:
            async with self._pipeline() as pipe:
                for counter in counters:
                    pipe.decr(counter)
                    pipe.expire(counter, window_seconds + 1)
                await pipe.execute()
        except (RedisError, OSError) as error:
            logger.warning("Refused counts not taken back, Redis unreachable: %s", error)
        return remaining

    async def remember(self, key: str, *, seconds: int) -> None:
        try:
            async with self._turns:
                await self._redis.set(f"{self._prefix}remembered:{_stored_key(key)}", 1, ex=seconds)
        except (RedisError, OSError) as error:
            logger.warning("Not remembered, Redis unreachable: %s", error)

    async def recalls(self, key: str) -> bool:
        try:
            async with self._turns:
                return bool(await self._redis.exists(f"{self._prefix}remembered:{_stored_key(key)}"))
        except (RedisError, OSError) as error:  # then no limit holds anyway (hit fails open)
            logger.warning("Nothing recalled, Redis unreachable: %s", error)
            return False

    async def _send(self, batch: list[tuple[list[str], int, asyncio.Future[list[int]]]]) -> None:
        self._batch = []  # calls from here on make the next batch
        try:
            async with self._pipeline() as pipe:
                for keys, window_seconds, _ in batch:
                    for key in keys:
                        pipe.eval(_COUNT, 1, key, window_seconds + 1)
                replies = iter(await pipe.execute())
        except (RedisError, OSError) as error:
            for _, _, counted in batch:
                counted.set_exception(error)
            return
        for keys, _, counted in batch:
            counted.set_result([next(replies) for _ in keys])

    @contextlib.asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Any]:
        async with self._turns, self._redis.pipeline(transaction=False) as pipe:
            yield pipe

    async def close(self) -> None:
        await asyncio.gather(*self._sends, return_exceptions=True)
        await self._redis.aclose()
        if isinstance(self._redis, aioredis.Redis):
            await self._redis.connection_pool.disconnect()


async def enforce(limiter: RateLimiter, limits: Sequence[Limit], *, window_seconds: int = 60) -> None:
    retry_after = await limiter.hit(limits, window_seconds=window_seconds)
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        raise DomainError(ErrorCode.RATE_LIMITED, f"Too many attempts: try again in {seconds} s",
                          retry_after_seconds=seconds)
