"""The benchmark's plumbing: its own database, the server subprocess, a GraphQL client.

Everything talks to 127.0.0.1 only. The server runs in its own process group and is always
stopped (SIGTERM to the group, SIGKILL after a grace period) by `Server.stop`, which the
caller runs in a `finally`; an `atexit` hook repeats it for exits that skip the finally.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis import asyncio as aioredis

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
# BENCH_DATABASE: a database of its own for a second benchmark running beside the first
# (its Redis keys and channels are kept apart too, under the same name).
DB_NAME = os.environ.get("BENCH_DATABASE", "bookmyevent_bench")
REDIS_PREFIX = f"{DB_NAME}:"  # the server's REDIS_PREFIX: channels on the wire carry it
ASYNCPG_DSN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}"
DATABASE_URL = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/0"
JWT_SECRET = "bench-only-secret-0123456789abcdef-0123456789abcdef"
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@bench.example.com", "bench-admin-password"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "bookmyevent")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(port: int, workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": REDIS_PREFIX,
        "JWT_SECRET": JWT_SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST": "1024",
        # Limits are counted (their Redis round trips are part of what is measured) but set
        # far above what one benchmark client on one IP does.
        "RESERVE_RATE_LIMIT_PER_MINUTE": "100000",
        "MUTATION_RATE_LIMIT_PER_MINUTE": "1000000",
        "LOGIN_RATE_LIMIT_PER_MINUTE": "1000000",
        "LOGIN_IP_RATE_LIMIT_PER_MINUTE": "1000000",
        "QUERY_RATE_LIMIT_PER_MINUTE": "1000000",
        # Every benchmark client comes from 127.0.0.1: the fan-out holds thousands of sockets.
        "WEBSOCKETS_PER_ADDRESS": "100000",
    })
    return env


async def recreate_database() -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        await conn.close()


def prepare(env: dict[str, str]) -> None:
    """A fresh benchmark database, migrated, with the admin account."""
    asyncio.run(recreate_database())
    run_cli(["migrate"], env)
    run_cli(["create-admin", "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD], env)


async def pg_pids(db: asyncpg.Connection) -> dict[str, set[int]]:
    """PostgreSQL processes working for the benchmark (for CpuMeter): the backends connected
    to its database and the shared background processes (WAL writer, checkpointer...)."""
    rows = await db.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL", DB_NAME)
    return {"postgresql": {row["pid"] for row in rows}}


def run_cli(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([CLI, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"bookmyevent {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")


class Server:
    """`bookmyevent serve` in its own process group, with its output in a log file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.gettempdir()) / f"bookmyevent-bench-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen([CLI, "serve"], env=self.env, cwd=REPO_ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(self.base_url + "/readyz",
                                           timeout=aiohttp.ClientTimeout(total=3)) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        # Workers are in the same group; make sure none outlived the supervisor.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_on_signals(self) -> None:
        """SIGINT and SIGTERM: stop the server at once, then unwind through the `finally`s.
        (asyncio's own SIGINT handling only cancels the main task, which a library deep in
        a request may absorb; this does not depend on that.)"""
        def terminate(signum: int, _frame: Any) -> None:
            self.stop()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_count(self, text: str) -> int:
        return sum(text in line for line in self.log_lines())

    def log_problems(self) -> list[str]:
        lines = self.log_lines()
        # Plain ("ERROR name: ...") or JSON ({"level": "ERROR", ...}) log lines.
        return [line for line in lines if line.startswith(("ERROR", "CRITICAL"))
                or '"level": "ERROR"' in line or '"level": "CRITICAL"' in line]


# --- GraphQL over HTTP ------------------------------------------------------------------

# Reasons a request may fail that are a real answer, not a fault (API.md "Reserve").
REAL_REASONS = frozenset({"SOLD_OUT", "NOT_ENOUGH_SEATS", "SEATS_UNAVAILABLE"})


@dataclass(slots=True)
class Outcome:
    code: str            # "OK", a UserError code, or HTTP_<status>/GRAPHQL_ERROR/TIMEOUT/CONNECTION
    payload: Any = None  # the mutation's or query's payload when there is one (else the top-level errors)

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def fault(self) -> bool:
        return not self.ok and self.code not in REAL_REASONS


def body_of(query: str, variables: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"query": query, "variables": variables or {}}).encode()


def headers_for(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class ChannelListener:
    """Hears one of the server's Redis channels directly (its REDIS_PREFIX added) and hands
    each message's JSON body and arrival time to `on_message`: a stamp taken as near the
    publish as this process can be."""

    def __init__(self, channel: str) -> None:
        self._channel = REDIS_PREFIX + channel
        self._client = aioredis.Redis.from_url(REDIS_URL)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._task: asyncio.Task[None] | None = None

    def on_message(self, body: Any, arrived: float) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self._pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            message = await self._pubsub.get_message(timeout=1.0)
            if message is not None:
                self.on_message(json.loads(message["data"]), time.perf_counter())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._pubsub.aclose()
        await self._client.aclose()


def outcome_of(status: int, doc: Any, field: str) -> Outcome:
    """An answer's outcome for its top-level `field`: OK, the payload's error code, or a fault."""
    if status != 200 or not isinstance(doc, dict):
        return Outcome(f"HTTP_{status}", doc.get("errors") if isinstance(doc, dict) else None)
    if doc.get("errors") or not doc.get("data"):
        return Outcome("GRAPHQL_ERROR", doc.get("errors"))
    payload = doc["data"].get(field)
    if isinstance(payload, dict) and payload.get("errors"):
        return Outcome(payload["errors"][0]["code"], payload)
    return Outcome("OK", payload)


class Connection:
    """One keep-alive HTTP/1.1 connection of its own, posting to /graphql with asyncio's
    streams: a request is bytes made once, an answer a status line, a Content-Length and a
    body. For the scenarios that release thousands of requests at once: aiohttp spends about
    0.2 ms of Python per request, and in a burst of 2,000 on these two cores its share (a
    third of the machine) was taken from the server and measured as the server's latency."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    def request(self, body: bytes, headers: dict[str, str]) -> bytes:
        """The whole POST, made once and sent when its time comes."""
        lines = ["POST /graphql HTTP/1.1", f"Host: {self._host}", *(f"{k}: {v}" for k, v in headers.items()),
                 f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    async def send(self, request: bytes, field: str) -> Outcome:
        try:
            self._writer.write(request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if not lengths:  # the app always sends one; anything else is not its answer
                return Outcome("CONNECTION")
            data = await self._reader.readexactly(lengths[0])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return Outcome("CONNECTION")
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        return outcome_of(int(head.split(b" ", 2)[1]), doc, field)

    def close(self) -> None:
        self._writer.close()


class Client:
    """One aiohttp session (keep-alive pool of `connections`) posting to /graphql."""

    def __init__(self, base_url: str, connections: int, timeout: float = 60) -> None:
        self.url = base_url + "/graphql"
        self.connections = connections
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                           keepalive_timeout=3),  # below uvicorn's 5 s: no reuse races
            timeout=aiohttp.ClientTimeout(total=timeout),
            json_serialize=json.dumps,
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.session.post(self.url, data=body, headers=headers) as response:
            data = await response.read()
            status = response.status
        try:
            return status, json.loads(data)
        except ValueError:
            return status, None

    async def call(self, body: bytes, headers: dict[str, str], field: str) -> Outcome:
        """POST one operation and classify the answer of its top-level `field`."""
        try:
            status, doc = await self.raw(body, headers)
        except TimeoutError:
            return Outcome("TIMEOUT")
        except (aiohttp.ClientError, OSError):
            return Outcome("CONNECTION")
        return outcome_of(status, doc, field)

    async def op(self, query: str, variables: dict[str, Any] | None, field: str,
                 token: str | None = None) -> Outcome:
        return await self.call(body_of(query, variables), headers_for(token), field)

    async def warm(self, count: int | None = None) -> None:
        """Open (up to) `count` keep-alive connections with trivial requests, all at once."""
        count = count or self.connections
        body, headers = body_of("{ __typename }"), headers_for(None)
        await asyncio.gather(*(self.raw(body, headers) for _ in range(count)),
                             return_exceptions=True)
