"""Test fixtures: real databases built by the migrations, the app in-process, a GraphQL helper.

PostgreSQL and Redis are real services. With REQUIRE_SERVICES=1 (CI sets it) a missing one
fails the run; on a developer machine without them, their tests are skipped and the session
ends with a loud line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.cli import migrate
from app.db import create_engine, create_sessionmaker
from app.models import Base
from app.settings import Settings

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# One database per test run, so runs on one machine (several checkouts, CI) never collide.
POSTGRES_DB = os.environ.get("TEST_POSTGRES_DB", f"bookmyevent_test_{os.getpid()}")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Pub/sub channels ignore the database number: runs sharing one Redis are kept apart by this.
REDIS_PREFIX = f"test{os.getpid()}:"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-keys"

_skipped_services: set[str] = set()


def base_settings(**overrides: Any) -> Settings:
    """Settings for tests: cheap argon2, a real secret, the sweeper and admission jobs effectively off, rate
    limits out of the way (their own tests set them), queue positions read fresh every time (their
    sharing has its own test), and the waiting room's gate blind to the loop lag of a test process
    that runs clients and server in one loop on a busy machine (the lag check has its own test)."""
    values: dict[str, Any] = dict(jwt_secret=JWT_SECRET, redis_prefix=REDIS_PREFIX,
                                  argon2_time_cost=1, argon2_memory_cost=1024,
                                  sweep_interval_seconds=3600.0, admission_interval_seconds=3600.0,
                                  reserve_rate_limit_per_minute=10_000, queue_join_rate_limit_per_minute=10_000,
                                  queue_join_ip_rate_limit_per_minute=10_000,
                                  mutation_rate_limit_per_minute=10_000, login_rate_limit_per_minute=10_000,
                                  login_ip_rate_limit_per_minute=10_000, login_account_rate_limit_per_minute=10_000,
                                  query_rate_limit_per_minute=10_000, queue_position_max_age_seconds=0,
                                  queue_max_loop_lag_ms=10_000)
    values.update(overrides)
    return Settings(**values)


def postgres_url() -> str:
    host_part = POSTGRES_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+asyncpg://{host_part}/{POSTGRES_DB}"


def _service_missing(name: str, reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} is required (REQUIRE_SERVICES=1) but unreachable: {reason}")
    _skipped_services.add(name)
    pytest.skip(f"{name} unreachable ({reason}); set REQUIRE_SERVICES=1 to make this fatal")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_services:
        terminalreporter.write_line(
            f"WARNING: tests needing {', '.join(sorted(_skipped_services))} were SKIPPED: "
            "those services were unreachable.", red=True, bold=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- databases ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test session, built by the migrations."""
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        _service_missing("PostgreSQL", str(error))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{POSTGRES_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{POSTGRES_DB}"')
    finally:
        await admin.close()
    url = postgres_url()
    await asyncio.to_thread(migrate, base_settings(database_url=url))
    yield url
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{POSTGRES_DB}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
    await asyncio.to_thread(migrate, base_settings(database_url=url))
    return url


async def _empty_tables(engine: AsyncEngine) -> None:
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                await connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test on both databases: the embedded default and production."""
    return str(request.param)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str) -> str:
    name = "postgres_database" if backend == "postgres" else "sqlite_database"
    return str(request.getfixturevalue(name))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return base_settings(database_url=database_url)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(replace(settings, db_pool_size=25, db_max_overflow=5))
    await _empty_tables(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        _service_missing("Redis", str(error))
    finally:
        client.close()
    return REDIS_URL


# --- the application in-process -----------------------------------------------------------

class GraphQLClient:
    """POSTs GraphQL documents to the app; `token` signs the calls in."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def raw(self, query: str, variables: dict[str, Any] | None = None,
                  token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post("/graphql", json={"query": query, "variables": variables or {}},
                                        headers=headers)
        assert response.status_code in (200, 400, 401), response.text
        return dict(response.json())

    async def __call__(self, query: str, variables: dict[str, Any] | None = None,
                       token: str | None = None) -> dict[str, Any]:
        """The `data` of a document that must not produce top-level errors."""
        body = await self.raw(query, variables, token)
        assert "errors" not in body, body["errors"]
        return dict(body["data"])


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Any, GraphQLClient]]:
    from app.web import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, GraphQLClient(http)


@pytest.fixture
async def app_and_client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[tuple[Any, GraphQLClient]]:
    async with running_app(settings) as pair:
        yield pair


@pytest.fixture
def gql(app_and_client: tuple[Any, GraphQLClient]) -> GraphQLClient:
    return app_and_client[1]
