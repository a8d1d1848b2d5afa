"""Abuse that costs others: oversized inputs, lockouts, connection hoarding, slow clients,
spoofed addresses, requests the event can never serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from websockets.exceptions import InvalidStatus

from app.errors import DomainError, ErrorCode
from app.services import waitlist
from app.services.ratelimit import MemoryRateLimiter, RedisRateLimiter
from app.settings import Settings
from tests.conftest import REDIS_PREFIX, GraphQLClient, running_app
from tests.factories import make_event, make_user
from tests.servers import MESSAGE_TIMEOUT, AppProcess, http_client, init_connection
from tests.test_accounts import LOGIN, LOGOUT, REFRESH, REGISTER


async def test_waitlist_refuses_more_places_than_the_event_has(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=3, max_tickets_per_booking=10)
    user = await make_user(sessionmaker)
    async with sessionmaker() as session:
        with pytest.raises(DomainError) as refused:
            await waitlist.join(session, user_id=user.id, event_id=event.id, quantity=4)
    assert (refused.value.code, refused.value.field) == (ErrorCode.LIMIT_EXCEEDED, "quantity")


# --- accounts: bounded inputs, hashed counters, no lockout by strangers -------------------------

@contextlib.asynccontextmanager
async def from_address(app: Any, address: str) -> AsyncIterator[GraphQLClient]:
    """A client of the in-process `app` that connects from `address`."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield GraphQLClient(http)


async def login_codes(gql: GraphQLClient, email: str, password: str) -> list[str]:
    payload = (await gql(LOGIN, {"input": {"email": email, "password": password}}))["login"]
    return [error["code"] for error in payload["errors"]]


OWNER = {"email": "owner@example.com", "password": "the owner's password", "name": "Owner"}


async def test_oversized_account_inputs_are_refused_and_counters_stay_small(
        settings: Settings, engine: AsyncEngine, redis_url: str) -> None:
    huge = "x" * 200_000
    async with running_app(replace(settings, redis_url=redis_url)) as (_, gql):
        assert (await gql(REGISTER, {"input": OWNER}))["register"]["errors"] == []
        for variables in ({"email": huge + "@example.com", "password": "long enough"},
                          {"email": OWNER["email"], "password": huge}):
            [error] = (await gql(LOGIN, {"input": variables}))["login"]["errors"]
            assert error["code"] == "INVALID_INPUT" and error["field"] in variables
        for mutation, field in ((REGISTER, "email"), (REGISTER, "password"), (REGISTER, "name")):
            [error] = (await gql(mutation, {"input": {**OWNER, field: huge}}))["register"]["errors"]
            assert (error["code"], error["field"]) == ("INVALID_INPUT", field)
        # A refresh token longer than ours is none of ours: refused, or nothing to log out, unread.
        assert (await gql(REFRESH, {"t": huge}))["refreshToken"]["errors"][0]["code"] == "INVALID_TOKEN"
        assert (await gql(LOGOUT, {"t": huge}))["logout"] == {"ok": True, "errors": []}
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{REDIS_PREFIX}ratelimit:*", count=1000))
    finally:
        client.close()
    assert keys and max(map(len, keys)) < 100  # a hash, not the email


async def test_strangers_guessing_from_many_addresses_cannot_lock_the_owner_out(
        settings: Settings, engine: AsyncEngine) -> None:
    limited = replace(settings, login_rate_limit_per_minute=3, login_account_rate_limit_per_minute=50)
    async with running_app(limited) as (app, gql):
        assert (await gql(REGISTER, {"input": OWNER}))["register"]["errors"] == []
        for number in range(10):  # 30 wrong passwords, 3 from each address
            async with from_address(app, f"203.0.113.{number}") as stranger:
                for _ in range(3):
                    assert await login_codes(stranger, OWNER["email"], "a wrong guess") == ["INVALID_CREDENTIALS"]
                # One address is limited, even with the right password.
                assert await login_codes(stranger, OWNER["email"], OWNER["password"]) == ["RATE_LIMITED"]
        async with from_address(app, "198.51.100.7") as owner:
            assert await login_codes(owner, OWNER["email"], OWNER["password"]) == []


async def test_guessing_spread_over_many_addresses_meets_the_account_ceiling_which_spares_the_owner(
        settings: Settings, engine: AsyncEngine) -> None:
    async with running_app(replace(settings, login_account_rate_limit_per_minute=5)) as (app, gql):
        assert (await gql(REGISTER, {"input": OWNER}))["register"]["errors"] == []
        async with from_address(app, "198.51.100.7") as owner:  # where the owner signs in (1 of 5)
            assert await login_codes(owner, OWNER["email"], OWNER["password"]) == []
        outcomes = []
        for number in range(7):
            async with from_address(app, f"203.0.113.{number}") as stranger:
                outcomes += await login_codes(stranger, OWNER["email"], "a wrong guess")
        assert outcomes == ["INVALID_CREDENTIALS"] * 4 + ["RATE_LIMITED"] * 3
        # The ceiling holds for every address but those the account signed in from.
        async with from_address(app, "198.51.100.8") as elsewhere:
            assert await login_codes(elsewhere, OWNER["email"], OWNER["password"]) == ["RATE_LIMITED"]
        async with from_address(app, "198.51.100.7") as owner:
            assert await login_codes(owner, OWNER["email"], OWNER["password"]) == []


async def test_calls_refused_by_one_limit_count_against_no_other(
        settings: Settings, engine: AsyncEngine) -> None:
    limited = replace(settings, login_ip_rate_limit_per_minute=2, login_rate_limit_per_minute=5,
                      login_account_rate_limit_per_minute=5)
    async with running_app(limited) as (app, gql):
        assert (await gql(REGISTER, {"input": OWNER}))["register"]["errors"] == []
        async with from_address(app, "203.0.113.1") as stranger:
            outcomes = [code for _ in range(20) for code in await login_codes(stranger, OWNER["email"], "a guess")]
        assert outcomes == ["INVALID_CREDENTIALS"] * 2 + ["RATE_LIMITED"] * 18
        # The 18 refused guesses did not use up the account's ceiling of 5.
        async with from_address(app, "198.51.100.7") as owner:
            assert await login_codes(owner, OWNER["email"], OWNER["password"]) == []


@pytest.mark.parametrize("limiter", ["memory", "redis"])
async def test_a_refused_call_is_not_counted_and_a_remembered_key_lapses(
        limiter: str, request: pytest.FixtureRequest) -> None:
    limiters = {"memory": MemoryRateLimiter,
                "redis": lambda: RedisRateLimiter(request.getfixturevalue("redis_url"), prefix=REDIS_PREFIX)}
    counted = limiters[limiter]()
    key = f"test:{uuid.uuid4()}"
    try:
        assert await counted.hit([(key, 1), (f"{key}:other", 2)], window_seconds=60) is None
        for _ in range(5):  # refused by the first limit
            assert await counted.hit([(key, 1), (f"{key}:other", 2)], window_seconds=60) is not None
        assert await counted.hit([(f"{key}:other", 2)], window_seconds=60) is None
        assert not await counted.recalls(key)
        await counted.remember(key, seconds=1)
        assert await counted.recalls(key)
        await asyncio.sleep(2.5)
        assert not await counted.recalls(key)
    finally:
        if isinstance(counted, RedisRateLimiter):
            await counted.close()


# --- connections: slow clients, websockets per address, forwarded addresses ---------------------

@contextlib.asynccontextmanager
async def serving(tmp_path: Path, postgres_database: str, redis_url: str, **env: str) -> AsyncIterator[AppProcess]:
    server = AppProcess(database_url=postgres_database, redis_url=redis_url, log_path=tmp_path / "server.log")
    # Counters of its own: other tests of this run count logins from 127.0.0.1 too.
    server.env.update(REDIS_PREFIX=f"{REDIS_PREFIX}{uuid.uuid4().hex[:8]}:", **env)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def cut_off(server: AppProcess, head: bytes, trickle: bytes) -> bytes:
    """Send `head`, then `trickle` a byte at a time, until the server closes the connection;
    returns what it answered. A server that keeps the connection fails the test (a hang)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def dribble() -> None:
        writer.write(head)
        for byte in trickle:
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
            await writer.drain()

    sending = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            return await reader.read()  # until the server closes
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sending
        writer.close()


async def test_slow_headers_and_bodies_are_cut_off(postgres_database: str, redis_url: str, tmp_path: Path) -> None:
    async with serving(tmp_path, postgres_database, redis_url,
                       HEADER_TIMEOUT_SECONDS="1", BODY_TIMEOUT_SECONDS="1") as server:
        endless = b"x" * 1000  # 200 s at 5 bytes a second
        assert (await cut_off(server, b"", b"")).startswith(b"HTTP/1.1 408")  # never says a word
        slow_head = await cut_off(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", endless)
        assert slow_head.startswith(b"HTTP/1.1 408")
        slow_body = await cut_off(server, b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          b"Content-Length: 1000\r\n\r\n", endless)
        assert slow_body.startswith(b"HTTP/1.1 408")
        # A request head may not be unbounded either.
        huge_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"y" * 100_000 + b"\r\n\r\n"
        assert (await cut_off(server, huge_head, b"")).startswith(b"HTTP/1.1 400")
        # Timely requests, and websockets (which outlive the deadlines), are unaffected.
        async with http_client(server.http_url) as gql:
            assert (await gql.http.get("/healthz")).status_code == 200
        ws = await init_connection(server.ws_url)
        try:
            assert json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
            await asyncio.sleep(2.5)
            await asyncio.wait_for(await ws.ping(), MESSAGE_TIMEOUT)
        finally:
            await ws.close()


async def test_websockets_are_capped_per_client_address(postgres_database: str, redis_url: str,
                                                        tmp_path: Path) -> None:
    async with serving(tmp_path, postgres_database, redis_url, WEBSOCKETS_PER_ADDRESS="2") as server:
        first, second = [await init_connection(server.ws_url) for _ in range(2)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await init_connection(server.ws_url)
            assert refused.value.response.status_code == 403
            await first.close()
            await asyncio.sleep(0.2)  # let the server see the close
            again = await init_connection(server.ws_url)
            assert json.loads(await asyncio.wait_for(again.recv(), MESSAGE_TIMEOUT))["type"] == "connection_ack"
            await again.close()
        finally:
            await first.close()
            await second.close()


async def login_from(server: AppProcess, forwarded_for: str) -> list[str]:
    query = 'mutation { login(input: {email: "nobody@example.com", password: "wrong"}) { errors { code } } }'
    async with httpx.AsyncClient(base_url=server.http_url, timeout=MESSAGE_TIMEOUT) as http:
        response = await http.post("/graphql", json={"query": query}, headers={"X-Forwarded-For": forwarded_for})
    return [error["code"] for error in response.json()["data"]["login"]["errors"]]


async def test_forwarded_addresses_are_believed_from_trusted_proxies_only(
        postgres_database: str, redis_url: str, tmp_path: Path) -> None:
    limits = {"LOGIN_IP_RATE_LIMIT_PER_MINUTE": "2", "LOGIN_RATE_LIMIT_PER_MINUTE": "1000",
              "LOGIN_ACCOUNT_RATE_LIMIT_PER_MINUTE": "1000"}
    # Nobody trusted (the default): a client naming a new address each time is still one address.
    async with serving(tmp_path, postgres_database, redis_url, **limits) as server:
        assert [await login_from(server, f"203.0.113.{n}") for n in range(3)] == \
            [["INVALID_CREDENTIALS"]] * 2 + [["RATE_LIMITED"]]
    # Behind a trusted proxy, each client it names is counted on its own; a repeat is limited.
    async with serving(tmp_path, postgres_database, redis_url, TRUSTED_PROXIES="127.0.0.1/32", **limits) as server:
        assert [await login_from(server, f"198.51.100.{n}") for n in range(3)] == [["INVALID_CREDENTIALS"]] * 3
        assert [await login_from(server, "198.51.100.0") for _ in range(2)] == \
            [["INVALID_CREDENTIALS"], ["RATE_LIMITED"]]
