"""What each tier past one machine sustains here (docs/scaling.md): `python -m bench.scale`
(each tier alone) and `python -m bench.scale stack` (the whole path against one instance).

- PostgreSQL: the general-admission reserve as one statement (bench/flash_sale.py's SQL
  ceiling), closed loop, on one hot event and spread over one event per connection; straight
  to PostgreSQL with asyncpg's prepared statements, and through PgBouncer (transaction
  pooling, fewer server connections than clients) with the unnamed statements DB_PGBOUNCER=1
  makes the app send.
- Redis: PUBLISH on one server, and PUBLISH and SPUBLISH on a 3-master cluster (redis-benchmark,
  pipelined), with one subscriber on the channel.
- stack: a flash sale (open loop) and a fan-out (subscribers, then one change every 250 ms)
  through HAProxy -> 3 instances -> PgBouncer -> PostgreSQL with a Redis Cluster, next to
  one instance straight on PostgreSQL and one Redis, in one run.

Everything runs on its own database and its own servers on free ports, started here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import redis

from app.cli import migrate
from app.services.accounts import issue_access_token
from bench import harness, wsclient
from bench.flash_sale import RESERVE, SQL_RESERVE_ONE, SUBSCRIBE
from bench.stats import percentile
from tests.conftest import base_settings
from tests.servers import (
    AppProcess,
    HAProxyProcess,
    PgBouncerProcess,
    RedisClusterProcesses,
    RedisProcess,
    app_processes,
)

DB_NAME = "bookmyevent_scale_bench"
DATABASE_URL = f"postgresql+asyncpg://{harness.PG_USER}@{harness.PG_HOST}:{harness.PG_PORT}/{DB_NAME}"
# What the instances run with on top of tests/servers.py's (the tests' JWT secret, no limits):
# pools that fit a shared PostgreSQL, every subscriber from one client address.
SERVER_ENV = {"DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "10", "WEBSOCKETS_PER_ADDRESS": "100000"}
PLACES = 1_000_000
REFERENCES = itertools.count()  # booking references, unique across runs


async def prepare(events: int, buyers: int, places: int = PLACES) -> tuple[list[int], list[int]]:
    admin = await asyncpg.connect(host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER,
                                  database="postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        await admin.close()
    await asyncio.to_thread(migrate, replace(base_settings(), database_url=DATABASE_URL))
    db = await asyncpg.connect(host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER, database=DB_NAME)
    try:
        venue = await db.fetchval("INSERT INTO venues (name, address, city, country, capacity, created_at) "
                                  "VALUES ('Bench hall', '1 Road', 'Town', 'FR', $1, now()) RETURNING id", places)
        event_ids = [row["id"] for row in await db.fetch(
            "INSERT INTO events (name, description, category, venue_id, starts_at, ends_at, capacity, available, "
            "price_cents, currency, status, version, max_tickets_per_booking, max_tickets_per_user, created_at) "
            "SELECT 'Event ' || g, '', 'MUSIC', $1, now() + interval '30 days', now() + interval '31 days', "
            "$2, $2, 1000, 'EUR', 'ON_SALE', 1, 10, 10, now() FROM generate_series(1, $3) AS g RETURNING id",
            venue, places, events)]
        user_ids = [row["id"] for row in await db.fetch(
            "INSERT INTO users (email, name, password_hash, role, created_at) "
            "SELECT 'scale' || g || '@bench.example.com', 'Buyer ' || g, '!', 'USER', now() "
            "FROM generate_series(1, $1) AS g RETURNING id", buyers)]
        await db.execute("VACUUM (ANALYZE)")
    finally:
        await db.close()
    return event_ids, user_ids


async def closed_loop(conns: list[asyncpg.Connection], seconds: float,
                      call: Callable[[int], Awaitable[object]]) -> float:
    """Calls per second with one call in flight per connection."""
    done = 0
    stop = time.monotonic() + seconds

    async def slot(index: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call(index)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(slot(i) for i in range(len(conns))))
    return done / (time.monotonic() - started)


async def reserves_per_second(port: int, *, pgbouncer: bool, hot: bool, event_ids: list[int], users: list[int],
                              concurrency: int, seconds: float) -> float:
    options = {"statement_cache_size": 0} if pgbouncer else {}
    conns = [await asyncpg.connect(host="127.0.0.1", port=port, user=harness.PG_USER, database=DB_NAME, **options)
             for _ in range(concurrency)]
    try:
        async def reserve(slot: int) -> object:
            created = datetime.now(UTC)
            event = event_ids[0] if hot else event_ids[slot]
            # asyncpg with its cache off sends an unnamed statement, parsed at each execution:
            # what the app does through PgBouncer.
            return await conns[slot].fetchrow(SQL_RESERVE_ONE, event, 1, f"SC-{next(REFERENCES):09X}",
                                              users[slot], created, created + timedelta(seconds=300))

        await closed_loop(conns, 1.0, reserve)  # warm-up
        return await closed_loop(conns, seconds, reserve)
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))


def redis_benchmark(port: int, *command: str, requests: int) -> float:
    """Requests per second redis-benchmark reaches (50 clients, pipelines of 16)."""
    done = subprocess.run([shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark", "-p", str(port),
                           "-n", str(requests), "-c", "50", "-P", "16", "-q", *command],
                          capture_output=True, text=True, check=True)
    return float(re.findall(r"([\d.]+) requests per second", done.stdout)[-1])


async def redis_figures(requests: int) -> dict[str, float]:
    figures = {}
    with tempfile.TemporaryDirectory() as directory:
        single = RedisProcess()
        cluster = RedisClusterProcesses(Path(directory))
        await single.start()
        await cluster.start()
        try:
            channel = "event:1:availability"
            shard = cluster.owner_of(channel)
            for name, port, command in [("PUBLISH, one server", single.port, "PUBLISH"),
                                        ("PUBLISH, 3-master cluster", shard.port, "PUBLISH"),
                                        ("SPUBLISH, 3-master cluster", shard.port, "SPUBLISH")]:
                listener = redis.Redis(port=port).pubsub()
                (listener.ssubscribe if command == "SPUBLISH" else listener.subscribe)(channel)
                try:
                    figures[name] = redis_benchmark(port, command, channel, '{"version": 1}', requests=requests)
                finally:
                    listener.close()
        finally:
            await cluster.stop()
            await single.kill()
    return figures


# --- the whole path: HAProxy -> 3 instances -> PgBouncer -> PostgreSQL, and Redis Cluster ---

@contextlib.asynccontextmanager
async def one_instance(directory: Path, workers: int) -> AsyncIterator[tuple[str, int]]:
    """One instance with `workers` workers, straight on PostgreSQL and one Redis."""
    redis_server = RedisProcess()
    await redis_server.start()
    server = AppProcess(database_url=DATABASE_URL, redis_url=redis_server.url, log_path=directory / "one.log",
                        env={**SERVER_ENV, "WORKERS": str(workers)})
    try:
        await server.start()
        yield "127.0.0.1", server.port
    finally:
        await server.stop()
        await redis_server.kill()


@contextlib.asynccontextmanager
async def whole_stack(directory: Path, pool: int) -> AsyncIterator[tuple[str, int]]:
    """HAProxy (deploy/haproxy.cfg) -> 3 instances of one worker -> PgBouncer -> PostgreSQL;
    pub/sub on a 3-master Redis Cluster."""
    bouncer = PgBouncerProcess(directory, postgres_host=harness.PG_HOST, postgres_port=harness.PG_PORT,
                               pool_size=pool)
    cluster = RedisClusterProcesses(directory)
    await bouncer.start()
    await cluster.start()
    env = {**SERVER_ENV, "DB_PGBOUNCER": "1", "REDIS_CLUSTER": "1", "TRUSTED_PROXIES": "127.0.0.1"}
    try:
        async with app_processes(3, database_url=bouncer.url(DB_NAME), redis_url=cluster.url, log_dir=directory,
                                 env=env) as servers:
            balancer = HAProxyProcess(servers, directory / "haproxy.log")
            await balancer.start()
            try:
                yield "127.0.0.1", balancer.port
            finally:
                await balancer.stop()
    finally:
        await cluster.stop()
        await bouncer.stop()


async def flash_sale(base: str, event_id: int, tokens: list[str], rate: float) -> dict[str, float]:
    """Every buyer reserves one place at `start + i / rate` (open loop); latency from then."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    async with harness.Client(base, 500) as client:
        await client.warm()
        start = time.monotonic() + 0.5

        async def buyer(index: int, token: str) -> None:
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            outcome = await client.call(harness.body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 1}}),
                                        harness.headers_for(token), "reserveSeats")
            latencies.append(time.monotonic() - due)
            codes[outcome.code] += 1

        await asyncio.gather(*(buyer(i, token) for i, token in enumerate(tokens)))
        ended = time.monotonic()
    latencies.sort()
    return {"answers/s": len(tokens) / (ended - start), "p50 ms": 1000 * percentile(latencies, 50),
            "p99 ms": 1000 * percentile(latencies, 99), "sold": codes["OK"],
            "faults": sum(n for code, n in codes.items() if code not in harness.REAL_REASONS | {"OK"})}


async def fan_out(base: str, host: str, port: int, event_id: int, tokens: list[str],
                  subscribers: int) -> dict[str, float]:
    """`subscribers` subscriptions to one event, then one reserve every 250 ms: latency from just
    before each reserve is sent to each subscriber's first message at that version or later."""
    arrivals: list[list[tuple[float, int]]] = [[] for _ in range(subscribers)]
    payload = {"query": SUBSCRIBE, "variables": {"eventId": str(event_id)}}
    opened = []
    for first in range(0, subscribers, 100):  # 100 at a time: the balancer's and the server's backlogs
        opened += await asyncio.gather(*(
            wsclient.subscribe(host, port, payload, lambda at, msg, i=i: arrivals[i].append(
                (at, msg["payload"]["data"]["eventAvailability"]["version"])))
            for i in range(first, min(first + 100, subscribers))))
    version = max(snapshot["payload"]["data"]["eventAvailability"]["version"] for _, snapshot in opened)
    sent: list[tuple[float, int]] = []
    async with harness.Client(base, 4) as client:
        for token in tokens:
            version += 1
            sent.append((time.monotonic(), version))
            outcome = await client.call(harness.body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 1}}),
                                        harness.headers_for(token), "reserveSeats")
            assert outcome.ok, outcome
            await asyncio.sleep(0.25)
    await asyncio.sleep(2)
    for subscriber, _ in opened:
        subscriber.close()
    latencies = sorted(next((at for at, seen in got if seen >= wanted), math.inf) - when
                       for got in arrivals for when, wanted in sent)
    delivered = sum(latency != math.inf for latency in latencies)
    return {"delivered": delivered, "expected": len(latencies), "p50 ms": 1000 * percentile(latencies, 50),
            "p99 ms": 1000 * percentile(latencies, 99)}


async def stack(args: argparse.Namespace) -> None:
    event_ids, users = await prepare(2, args.buyers + args.changes, places=args.places)
    flash_tokens = [token_for(user) for user in users[:args.buyers]]
    change_tokens = [token_for(user) for user in users[args.buyers:]]
    print(f"flash sale: {args.buyers} buyers x 1 place against {args.places}, sent at {args.rate:.0f}/s; "
          f"fan-out: {args.subscribers} subscribers, {args.changes} changes 250 ms apart")
    for name, topology in [(f"1 instance x {args.workers} workers, PostgreSQL, Redis",
                            lambda d: one_instance(d, args.workers)),
                           ("HAProxy, 3 instances x 1 worker, PgBouncer, Redis Cluster",
                            lambda d: whole_stack(d, args.pool))]:
        await refill(event_ids)
        with tempfile.TemporaryDirectory() as directory:
            async with topology(Path(directory)) as (host, port):
                base = f"http://{host}:{port}"
                flash = await flash_sale(base, event_ids[0], flash_tokens, args.rate)
                flash["taken"] = await places_taken(event_ids[0])
                fan = await fan_out(base, host, port, event_ids[1], change_tokens, args.subscribers)
        print(f"  {name}")
        print(f"    flash:   {flash['answers/s']:.0f} answers/s, p50 {flash['p50 ms']:.0f} ms, "
              f"p99 {flash['p99 ms']:.0f} ms, {flash['sold']} sold, {flash['taken']} places in bookings, "
              f"{flash['faults']} faults")
        print(f"    fan-out: {fan['delivered']}/{fan['expected']} delivered, p50 {fan['p50 ms']:.0f} ms, "
              f"p99 {fan['p99 ms']:.0f} ms from the reserve")


async def places_taken(event_id: int) -> int:
    """Places in active bookings; fails unless the event's counter says the same."""
    db = await asyncpg.connect(host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER, database=DB_NAME)
    try:
        taken = await db.fetchval("SELECT coalesce(sum(quantity), 0) FROM bookings WHERE event_id = $1 "
                                  "AND status IN ('PENDING', 'CONFIRMED')", event_id)
        counter = await db.fetchval("SELECT capacity - available FROM events WHERE id = $1", event_id)
    finally:
        await db.close()
    assert taken == counter, (taken, counter)
    return int(taken)


async def refill(event_ids: list[int]) -> None:
    db = await asyncpg.connect(host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER, database=DB_NAME)
    try:
        await db.execute("DELETE FROM bookings WHERE event_id = ANY($1)", event_ids)
        await db.execute("UPDATE events SET available = capacity, status = 'ON_SALE' WHERE id = ANY($1)",
                         event_ids)
        await db.execute("VACUUM (ANALYZE) events, bookings")
    finally:
        await db.close()


def token_for(user_id: int) -> str:
    return issue_access_token(SimpleNamespace(id=user_id, role="USER"), base_settings())  # type: ignore[arg-type]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["tiers", "stack"], nargs="?", default="tiers",
                        help="tiers: each tier alone (default); stack: the whole path against one instance")
    parser.add_argument("--concurrency", type=int, default=32, help="connections, one reserve in flight each")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument("--pool", type=int, default=8, help="PgBouncer server connections")
    parser.add_argument("--redis-requests", type=int, default=300_000)
    parser.add_argument("--buyers", type=int, default=800, help="stack: flash-sale buyers")
    parser.add_argument("--places", type=int, default=200, help="stack: places on sale")
    parser.add_argument("--rate", type=float, default=300, help="stack: flash-sale arrivals per second")
    parser.add_argument("--subscribers", type=int, default=300, help="stack: fan-out subscribers")
    parser.add_argument("--changes", type=int, default=10, help="stack: fan-out changes")
    parser.add_argument("--workers", type=int, default=2, help="stack: workers of the single instance")
    args = parser.parse_args()
    if args.what == "stack":
        await stack(args)
        return

    event_ids, users = await prepare(args.concurrency, args.concurrency)
    with tempfile.TemporaryDirectory() as directory:
        bouncer = PgBouncerProcess(Path(directory), postgres_host=harness.PG_HOST, postgres_port=harness.PG_PORT,
                                   pool_size=args.pool)
        await bouncer.start()
        try:
            print(f"reserves/s, {args.concurrency} connections, one reserve in flight each, {args.seconds:.0f} s runs")
            ways = [("PostgreSQL, prepared statements", harness.PG_PORT, False),
                    ("PostgreSQL, unnamed statements", harness.PG_PORT, True),
                    (f"PgBouncer ({args.pool} server conns), unnamed", bouncer.port, True)]
            for hot in (True, False):
                for via, port, unnamed in ways:
                    rate = await reserves_per_second(port, pgbouncer=unnamed, hot=hot, event_ids=event_ids,
                                                     users=users, concurrency=args.concurrency,
                                                     seconds=args.seconds)
                    where = "one hot event" if hot else f"{args.concurrency} events"
                    print(f"  {where:<18} {via:<44} {rate:8.0f}/s")
        finally:
            await bouncer.stop()
    print("Redis messages/s (redis-benchmark, 50 clients, pipelines of 16, one subscriber)")
    for name, rate in (await redis_figures(args.redis_requests)).items():
        print(f"  {name:<30} {rate:10.0f}/s")


if __name__ == "__main__":
    asyncio.run(main())
