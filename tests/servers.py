"""Real servers for end-to-end tests: the app under uvicorn (a subprocess started the way
production starts it, or in the test's own event loop when a test must look inside it), a
private redis-server a test may kill and restart, PgBouncer, and a graphql-transport-ws client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from app.cli import MAX_WEBSOCKET_FRAME
from tests.conftest import JWT_SECRET, REDIS_PREFIX, REQUIRE_SERVICES, GraphQLClient, free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0  # generous: a shared machine with 2 cores
MESSAGE_TIMEOUT = 15.0  # only to turn a hang into a failure, never a timing assertion
NO_LIMITS = "1000000"


class AppProcess:
    """`bookmyevent serve` in a subprocess: migrations, uvicorn with the CLI's options."""

    def __init__(self, *, database_url: str, redis_url: str, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "JWT_SECRET": JWT_SECRET, "REDIS_PREFIX": REDIS_PREFIX,
                    "ARGON2_TIME_COST": "1", "ARGON2_MEMORY_COST": "1024",
                    "HOST": "127.0.0.1", "PORT": str(self.port), "SWEEP_INTERVAL_SECONDS": "3600",
                    "RESERVE_RATE_LIMIT_PER_MINUTE": NO_LIMITS, "MUTATION_RATE_LIMIT_PER_MINUTE": NO_LIMITS,
                    "QUERY_RATE_LIMIT_PER_MINUTE": NO_LIMITS,
                    "DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "5",  # a shared PostgreSQL: take little
                    "ADMISSION_INTERVAL_SECONDS": "3600", "DRAIN_SECONDS": "0", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=PROJECT_ROOT,
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        async with httpx.AsyncClient(base_url=self.http_url) as http:
            await wait_until_ready(http, self)

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


async def wait_until_ready(http: httpx.AsyncClient, process: AppProcess | None = None) -> None:
    """Poll GET /readyz until it answers 200: the database and Redis reachable, and the app
    listening on pub/sub (a subscriber that came before would get an extra snapshot then)."""
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            if process is not None:
                assert process.process is not None and process.process.poll() is None, \
                    f"server exited:\n{process.log()}"
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def app_processes(count: int, *, database_url: str, redis_url: str, log_dir: Path,
                        env: dict[str, str] | None = None) -> AsyncIterator[list[AppProcess]]:
    """`count` instances sharing one database and one Redis, started together."""
    servers = [AppProcess(database_url=database_url, redis_url=redis_url, log_path=log_dir / f"server{i}.log",
                          env=env) for i in range(count)]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


@contextlib.asynccontextmanager
async def http_client(base_url: str) -> AsyncIterator[GraphQLClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=MESSAGE_TIMEOUT) as http:
        yield GraphQLClient(http)


@contextlib.asynccontextmanager
async def serve_in_process(app: Any) -> AsyncIterator[str]:
    """Serve `app` from this event loop (so a test can inspect its state) with the CLI's
    websocket options; yields the address (host:port)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws_per_message_deflate=False,
                            ws_max_size=MAX_WEBSOCKET_FRAME, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class RedisProcess:
    """A private redis-server on a free port, to kill and restart under a running app."""

    def __init__(self, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.args = args  # more options for redis-server
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:
                    assert self.process.poll() is None, "redis-server exited"
                    with contextlib.suppress(redis.ConnectionError):
                        if client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            client.close()

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


class RedisClusterProcesses:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on free ports; a node
    killed and started again keeps its port and its cluster config, so it comes back with its
    slots (or as a replica, if one of its replicas took over meanwhile)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0) -> None:
        # Other shards keep serving while one is down (the default stops the whole cluster); a
        # down node is noticed within 2 s, and its replica takes over however stale it is.
        self.replicas = replicas
        self.nodes = []
        for i in range(masters * (1 + replicas)):
            (directory / f"node{i}").mkdir()  # each its own: replicas write their copy there
            self.nodes.append(RedisProcess(args=(
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
                "--cluster-replica-validity-factor", "0", "--dir", str(directory / f"node{i}"))))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self.nodes))
        create = await asyncio.create_subprocess_exec(
            shutil.which("redis-cli") or "/usr/bin/redis-cli", "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes), "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = await create.communicate()
        assert create.returncode == 0, output.decode()
        await self.wait_until_ok()

    @property
    def running(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    async def wait_until_ok(self) -> None:
        """Until every running node sees the cluster whole (all slots served), and every
        replica has its copy of its master."""
        clients = [redis.Redis(port=node.port, socket_connect_timeout=1) for node in self.running]
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:
                    with contextlib.suppress(redis.RedisError):
                        if all(client.cluster("info")["cluster_state"] == "ok" for client in clients):
                            roles = [client.info("replication") for client in clients]
                            linked = [role for role in roles if role.get("master_link_status") == "up"]
                            if len(linked) == len(self.nodes) // (1 + self.replicas) * self.replicas:
                                return
                    await asyncio.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def owner_of(self, key: str) -> RedisProcess:
        """The master serving `key`'s hash slot (a sharded channel's too)."""
        client = redis.Redis(port=self.running[0].port)
        try:
            slot = client.cluster("keyslot", key)
            for start, end, (_host, port, *_), *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == port)
        finally:
            client.close()
        raise AssertionError(f"no node serves {key}")

    async def stop(self) -> None:
        await asyncio.gather(*(node.kill() for node in self.nodes))


def binary(name: str) -> str:
    """The path of a server binary (Debian puts some in /usr/sbin, off a user's PATH); a
    missing one skips the test, or fails it on CI (REQUIRE_SERVICES=1)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = f"{name} is not installed (apt-get install {name})"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return found


async def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a helper program the test started, if it still runs."""
    if process is not None and process.poll() is None:
        process.terminate()
        await asyncio.to_thread(process.wait)


class PgBouncerProcess:
    """PgBouncer in transaction pooling on a free port, in front of the test PostgreSQL: every
    database name is passed through, `pool_size` server connections per database."""

    def __init__(self, directory: Path, *, postgres_host: str, postgres_port: int, pool_size: int = 10) -> None:
        self.port = free_port()
        self.directory = directory
        self.config = directory / "pgbouncer.ini"
        (directory / "users.txt").write_text('"postgres" ""\n')
        self.config.write_text(
            f"[databases]\n* = host={postgres_host} port={postgres_port}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {directory / 'users.txt'}\npool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 2000\n"
            # PgBouncer refuses to run as root: it drops to the PostgreSQL account then.
            + ("user = postgres\n" if os.geteuid() == 0 else ""))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        self.directory.chmod(0o755)  # readable after the switch to the postgres account
        with (self.directory / "pgbouncer.log").open("wb") as log:
            self.process = subprocess.Popen([binary("pgbouncer"), str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT)
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                assert self.process.poll() is None, (self.directory / "pgbouncer.log").read_text()
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await terminate(self.process)


class HAProxyProcess:
    """HAProxy with the repository's deploy/haproxy.cfg on a free port, in front of three app
    instances."""

    CONFIG = PROJECT_ROOT / "deploy" / "haproxy.cfg"

    def __init__(self, servers: list[AppProcess], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, "LISTEN": f"127.0.0.1:{self.port}",
                    **{f"APP{i}": f"127.0.0.1:{server.port}" for i, server in enumerate(servers, 1)}}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([binary("haproxy"), "-db", "-f", str(self.CONFIG)], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        async with httpx.AsyncClient(base_url=self.http_url) as http:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:  # up once a check has found an instance ready
                    assert self.process.poll() is None, self.log_path.read_text()
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/readyz")).status_code == 200:
                            return
                    await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await terminate(self.process)


class Subscription:
    """One graphql-transport-ws connection carrying one subscription."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.last_id: str | None = None  # the operation id of the last `next` message

    async def next(self, timeout: float = MESSAGE_TIMEOUT) -> dict[str, Any]:
        """The data of the next `next` message; fails on errors or anything else."""
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert message["type"] == "next", message
        self.last_id = message["id"]
        assert "errors" not in message["payload"], message["payload"]["errors"]
        return dict(message["payload"]["data"])


async def init_connection(url: str, payload: dict[str, Any] | None = None) -> ClientConnection:
    """Open a websocket and send connection_init (the caller reads the answer)."""
    ws = await connect(url, subprotocols=["graphql-transport-ws"], open_timeout=MESSAGE_TIMEOUT)  # type: ignore[list-item]
    # Per-message deflate stays off (app/cli.py): compressing every small update costs CPU
    # and memory per connection for little gain. The client offers it; the server must decline.
    assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    return ws


@contextlib.asynccontextmanager
async def subscribe(url: str, query: str, variables: dict[str, Any] | None = None, *,
                    token: str | None = None, operation_id: str = "1") -> AsyncIterator[Subscription]:
    ws = await init_connection(url, {"authorization": f"Bearer {token}"} if token else None)
    try:
        ack = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
        assert ack["type"] == "connection_ack", ack
        await ws.send(json.dumps({"id": operation_id, "type": "subscribe",
                                  "payload": {"query": query, "variables": variables or {}}}))
        yield Subscription(ws)
    finally:
        await ws.close()
