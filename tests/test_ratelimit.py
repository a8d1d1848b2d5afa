"""Rate limits: per user on reserves, per email and IP on logins, per caller on mutations;
shared through Redis across instances, and open (not closed) when Redis is gone."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import replace

import pytest
from redis import asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import metrics
from app.services.ratelimit import RedisRateLimiter, _stored_key
from app.settings import Settings
from tests.conftest import REDIS_PREFIX, free_port, running_app
from tests.factories import make_event, make_user, token_for
from tests.test_accounts import LOGIN, REGISTER
from tests.test_bookings import RESERVE


async def test_reserve_is_limited_per_user(settings: Settings, engine: AsyncEngine,
                                           sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=100)
    first, second = [token_for(await make_user(sessionmaker), settings) for _ in range(2)]
    variables = {"input": {"eventId": str(event.id), "quantity": 1}}
    async with running_app(replace(settings, reserve_rate_limit_per_minute=3)) as (_, gql):
        for _ in range(3):
            assert (await gql(RESERVE, variables, first))["reserveSeats"]["errors"] == []
        limited = (await gql(RESERVE, variables, first))["reserveSeats"]
        assert limited["booking"] is None
        [error] = limited["errors"]
        assert error["code"] == "RATE_LIMITED" and error["message"].startswith("Too many attempts")
        assert (await gql(RESERVE, variables, second))["reserveSeats"]["errors"] == []  # others unaffected


async def test_login_is_limited_per_email_and_address_and_mutations_per_client(
        settings: Settings, engine: AsyncEngine) -> None:
    limited_settings = replace(settings, login_rate_limit_per_minute=2, mutation_rate_limit_per_minute=6)
    async with running_app(limited_settings) as (_, gql):
        account = {"email": "eve@example.com", "password": "right password", "name": "Eve"}
        assert (await gql(REGISTER, {"input": account}))["register"]["errors"] == []
        login = {"input": {"email": "eve@example.com", "password": "right password"}}
        for _ in range(2):
            assert (await gql(LOGIN, login))["login"]["errors"] == []
        # Even the right password is refused once the account's attempts are used up.
        refused = (await gql(LOGIN, login))["login"]
        assert [e["code"] for e in refused["errors"]] == ["RATE_LIMITED"] and refused["accessToken"] is None
        # Anonymous callers are counted by IP across every mutation: 3 used so far (the refused
        # login counts nowhere), 6 allowed.
        other = {"input": {**account, "email": "x@example.com"}}
        assert (await gql(REGISTER, other))["register"]["errors"] == []
        for _ in range(2):
            assert (await gql(REGISTER, other))["register"]["errors"][0]["code"] == "EMAIL_TAKEN"
        assert (await gql(REGISTER, other))["register"]["errors"][0]["code"] == "RATE_LIMITED"


async def test_redis_limits_are_shared_between_instances(redis_url: str) -> None:
    key = f"test:{uuid.uuid4()}"
    one, two = RedisRateLimiter(redis_url, prefix=REDIS_PREFIX), RedisRateLimiter(redis_url, prefix=REDIS_PREFIX)
    try:
        assert await one.hit([(key, 2)], window_seconds=60) is None
        assert await two.hit([(key, 2)], window_seconds=60) is None
        retry_after = await one.hit([(key, 2), (f"{key}:other", 100)], window_seconds=60)
        assert retry_after is not None and 0 < retry_after <= 60
    finally:
        await one.close()
        await two.close()


async def test_redis_counts_lapse_with_their_window(redis_url: str) -> None:
    key = f"test:{uuid.uuid4()}"
    limiter = RedisRateLimiter(redis_url, prefix=REDIS_PREFIX)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(2):  # the first count of a window sets its expiry, a later one keeps it
            assert await limiter.hit([(key, 5)], window_seconds=60) is None
        [counter] = [name async for name in redis.scan_iter(f"{REDIS_PREFIX}ratelimit:{_stored_key(key)}:*")]
        assert int(await redis.get(counter)) == 2 and 0 < await redis.ttl(counter) <= 61
    finally:
        await limiter.close()
        await redis.aclose()


async def test_limiter_fails_open_without_redis(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, logger="app.services.ratelimit"):
            for _ in range(3):
                assert await limiter.hit([("anyone", 1)], window_seconds=60) is None
        assert "Rate limiting skipped" in caplog.text
    finally:
        await limiter.close()


async def test_a_burst_from_one_user_is_limited_not_let_through(
        redis_url: str, settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession],
        caplog: pytest.LogCaptureFixture) -> None:
    """1,000 reserves at once from one user: far more than the limiter has connections; none
    slips through uncounted (redis-py's default pool failed them open)."""
    event = await make_event(sessionmaker, capacity=10_000)
    token = token_for(await make_user(sessionmaker), settings)
    variables = {"input": {"eventId": str(event.id), "quantity": 1}}
    uncounted = metrics.RATE_LIMIT_UNCOUNTED
    before = uncounted._value.get()
    async with running_app(replace(settings, redis_url=redis_url, reserve_rate_limit_per_minute=10)) as (_, gql):
        with caplog.at_level(logging.WARNING, logger="app.services.ratelimit"):
            answers = await asyncio.gather(*(gql(RESERVE, variables, token) for _ in range(1000)))
    codes = Counter(tuple(e["code"] for e in a["reserveSeats"]["errors"]) for a in answers)
    # Windows are fixed minutes: a burst that straddles the turn of one gets two windows' worth.
    assert codes[()] <= 2 * 10 and codes[()] + codes[("RATE_LIMITED",)] == 1000, codes
    assert "Rate limiting skipped" not in caplog.text
    assert uncounted._value.get() == before
