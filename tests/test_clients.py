"""Clients nobody here wrote: clients/check.mjs drives a real `bookmyevent serve` (PostgreSQL,
Redis) with Apollo Client (query, mutation, automatic persisted queries over GET), graphql-ws
and graphql-sse, from the npm packages pinned in clients/package-lock.json."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import _service_missing
from tests.factories import make_event
from tests.servers import PROJECT_ROOT, AppProcess

CLIENTS = PROJECT_ROOT / "clients"
NPM_TIMEOUT = 300  # a cold npm cache on a shared machine
CHECK_TIMEOUT = 120  # the script gives up after 60 s by itself


@pytest.fixture
def backend() -> str:
    return "postgres"


def run(command: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=CLIENTS, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env}, check=False)


async def test_standard_clients_against_a_running_server(database_url: str, redis_url: str, tmp_path: Path,
                                                         sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        _service_missing("Node.js and npm", "`node`/`npm` not on PATH; install Node.js 20+")
    assert npm is not None and node is not None
    installed = await asyncio.to_thread(run, [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"], NPM_TIMEOUT)
    assert installed.returncode == 0, installed.stderr
    event = await make_event(sessionmaker, capacity=10)
    server = AppProcess(database_url=database_url, redis_url=redis_url, log_path=tmp_path / "server.log")
    try:
        await server.start()
        checked = await asyncio.to_thread(run, [node, "check.mjs"], CHECK_TIMEOUT,
                                          BME_URL=server.http_url, BME_EVENT_ID=str(event.id))
    finally:
        await server.stop()
    assert checked.returncode == 0, f"{checked.stdout}\n{checked.stderr}\nserver log:\n{server.log()}"
    assert checked.stdout.count("ok: ") == 3, checked.stdout
