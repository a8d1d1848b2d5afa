"""What each tier past one machine sustains here (docs/scaling.md): `python -m bench.scale`.

- PostgreSQL: the general-admission reserve as one statement (bench/flash_sale.py's SQL
  ceiling), closed loop, on one hot event and spread over one event per connection; straight
  to PostgreSQL with asyncpg's prepared statements, and through PgBouncer (transaction
  pooling, fewer server connections than clients) with the unnamed statements DB_PGBOUNCER=1
  makes the app send.
- Redis: PUBLISH on one server, and PUBLISH and SPUBLISH on a 3-master cluster (redis-benchmark,
  pipelined), with one subscriber on the channel.

Everything runs on its own database and its own servers on free ports, started here.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import redis

from app.cli import migrate
from bench import harness
from bench.flash_sale import SQL_RESERVE_ONE
from tests.conftest import base_settings
from tests.servers import PgBouncerProcess, RedisClusterProcesses, RedisProcess

DB_NAME = "bookmyevent_scale_bench"
PLACES = 1_000_000
REFERENCES = itertools.count()  # booking references, unique across runs


async def prepare(events: int, buyers: int) -> tuple[list[int], list[int]]:
    admin = await asyncpg.connect(host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER,
                                  database="postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        await admin.close()
    url = f"postgresql+asyncpg://{harness.PG_USER}@{harness.PG_HOST}:{harness.PG_PORT}/{DB_NAME}"
    await asyncio.to_thread(migrate, replace(base_settings(), database_url=url))
    db = await asyncpg.connect(host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER, database=DB_NAME)
    try:
        venue = await db.fetchval("INSERT INTO venues (name, address, city, country, capacity, created_at) "
                                  "VALUES ('Bench hall', '1 Road', 'Town', 'FR', $1, now()) RETURNING id", PLACES)
        event_ids = [row["id"] for row in await db.fetch(
            "INSERT INTO events (name, description, category, venue_id, starts_at, ends_at, capacity, available, "
            "price_cents, currency, status, version, max_tickets_per_booking, max_tickets_per_user, created_at) "
            "SELECT 'Event ' || g, '', 'MUSIC', $1, now() + interval '30 days', now() + interval '31 days', "
            "$2, $2, 1000, 'EUR', 'ON_SALE', 1, 10, 10, now() FROM generate_series(1, $3) AS g RETURNING id",
            venue, PLACES, events)]
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="connections, one reserve in flight each")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument("--pool", type=int, default=8, help="PgBouncer server connections")
    parser.add_argument("--redis-requests", type=int, default=300_000)
    args = parser.parse_args()

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
