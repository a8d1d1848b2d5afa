"""BookMyEvent flash-sale benchmark (issue 6).

    .venv/bin/python -m bench.flash_sale [--workers N] [--quick] [--rate R] ...

Creates its own database (bookmyevent_bench or $BENCH_DATABASE, dropped and recreated), migrates it, creates an
admin, starts `bookmyevent serve` as a subprocess (always stopped at the end), sets up events
and buyers through GraphQL, then runs:

  a. seed       25 buyers x 2 places against 100 places, released at once (3 rounds)
  b. burst      2,000 buyers x 1 place against 500 places, all released at once (also --quick):
                all answered, exactly 500 sold (in the database), p50/p99 from the release;
                then the same burst of `{ __typename }` (its floor: the stack alone)
  b. flash      2,000 buyers x 1 place against 500 places, open loop at a fixed arrival rate;
                latency from the intended send time; oversell checked in the database.
                Run at --rate and at --sat-fraction (70%) of the measured reserve saturation.
  c. ceilings   closed loop, same concurrency, fixed request count, median of --runs runs:
                a reserve as one SQL statement and 50 reserves as one statement (places/s),
                straight through asyncpg; `{ __typename }` through the whole HTTP+GraphQL
                stack; reserveSeats itself; and the app's ratio to each
  d. fan-out    N websocket subscribers to eventAvailability, then a series of reserves;
                latency from just before each reserve is sent to each subscriber's receipt
  e. mixed      catalogue reads, reserve, confirm, cancel for a fixed time, closed loop

and prints one table (with the count of "Rate limiting skipped" lines in the server log), a
CPU table and the targets. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import secrets
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench import harness, wsclient
from bench.harness import Client, Outcome, body_of, headers_for
from bench.stats import CpuMeter, Summary, find_roots, fmt_ms, median

now = time.perf_counter

# --- GraphQL documents ----------------------------------------------------------------------

LOGIN = "mutation($input: LoginInput!) { login(input: $input) { accessToken errors { code message } } }"
REGISTER = ("mutation($input: RegisterInput!) { register(input: $input) "
            "{ accessToken user { id } errors { code message } } }")
CREATE_VENUE = ("mutation($input: VenueInput!) { createVenue(input: $input) "
                "{ venue { id } errors { code message } } }")
CREATE_EVENT = ("mutation($input: EventInput!) { createEvent(input: $input) "
                "{ event { id } errors { code message } } }")
PUBLISH = "mutation($id: ID!) { publishEvent(id: $id) { event { id status } errors { code message } } }"
RESERVE = ("mutation($input: ReserveInput!) { reserveSeats(input: $input) "
           "{ booking { id status } errors { code message availableSeats } } }")
CONFIRM = ("mutation($input: ConfirmInput!) { confirmBooking(input: $input) "
           "{ booking { id status ticketUrl } payment { status amountCents } errors { code message } } }")
CANCEL = ("mutation($input: CancelInput!) { cancelBooking(input: $input) "
          "{ booking { id status } refund { status } errors { code message } } }")
EVENTS = ("query($first: Int) { events(first: $first, filter: {onSaleOnly: true}) { totalCount "
          "edges { node { id name startsAt availableSeats status priceCents currency "
          "venue { name city } } } } }")
EVENT = ("query($id: ID!) { event(id: $id) { id name description category startsAt endsAt "
         "availableSeats status version capacity priceCents currency maxTicketsPerBooking "
         "venue { name address city country } } }")
TRIVIAL = "{ __typename }"
SUBSCRIBE = ("subscription($eventId: ID!) { eventAvailability(eventId: $eventId) "
             "{ eventId availableSeats version status snapshot } }")

# The database's ceilings for a general-admission reserve, on the app's schema: the take first
# (one lock on the hot row, no KEY SHARE from the booking's foreign key before it), the
# PENDING booking written as app/services/bookings.py writes it (seat_ids a JSON null), the
# event's new state and the booking ids returned (what the app needs to answer and to
# publish). One statement, one round trip, its own transaction.
_TAKE = """
    UPDATE events SET available = available - $2, version = version + 1,
           status = CASE WHEN available = $2 THEN 'SOLD_OUT' ELSE status END
    WHERE id = $1 AND status = 'ON_SALE' AND available >= $2
    RETURNING id, price_cents, currency, available, version, status"""
_BOOKING_COLUMNS = ("reference, user_id, event_id, status, quantity, seat_ids, total_cents, currency, "
                    "created_at, expires_at, waitlist_offer, version")
SQL_RESERVE_ONE = f"""
WITH t AS ({_TAKE}),
b AS (INSERT INTO bookings ({_BOOKING_COLUMNS})
      SELECT $3, $4, t.id, 'PENDING', $2, 'null', t.price_cents * $2, t.currency, $5, $6, false, 1 FROM t
      RETURNING id)
SELECT b.id, t.available, t.version, t.status FROM b, t"""
# The same for a batch: one take of the sum ($2 = the array length) and one multi-row insert,
# one booking of one place per (reference, user) pair.
SQL_RESERVE_BATCH = f"""
WITH t AS ({_TAKE}),
b AS (INSERT INTO bookings ({_BOOKING_COLUMNS})
      SELECT r.reference, r.user_id, t.id, 'PENDING', 1, 'null', t.price_cents, t.currency, $5, $6, false, 1
      FROM t, unnest($3::text[], $4::bigint[]) AS r(reference, user_id)
      RETURNING id)
SELECT b.id, t.available, t.version, t.status FROM b, t"""
RATE_LIMIT_SKIPPED = "Rate limiting skipped"  # app/services/ratelimit.py, when it lets a request through unlimited
CEILING_PLACES = 1_000_000  # the most an event may have (app/services/catalogue.py MAX_CAPACITY)


# --- plumbing -------------------------------------------------------------------------------

@dataclass
class Buyer:
    token: str
    user_id: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    scenario: str
    result: str
    throughput: float | None = None
    latency: Summary | None = None
    notes: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    cpu: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    targets: list[tuple[str, bool, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # correctness: oversell, inventory, sales
    faults: list[str] = field(default_factory=list)    # answers that are not a real reason
    data: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, server: harness.Server) -> None:
        self.args = args
        self.server = server
        self.base = server.base_url
        self.host, self.port = "127.0.0.1", server.port
        self.report = Report()
        self.admin_token = ""
        self.buyers: list[Buyer] = []
        self.events: dict[str, list[str]] = defaultdict(list)
        self.meter = CpuMeter({"app server": [server.pid], "redis": find_roots("redis-server")})
        self.db: asyncpg.Connection | None = None
        self.venue_id = ""

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    async def pg_pids(self) -> dict[str, set[int]]:
        assert self.db is not None
        return await harness.pg_pids(self.db)

    @contextlib.asynccontextmanager
    async def cpu(self, phase: str):  # type: ignore[no-untyped-def]
        self.meter.start(await self.pg_pids())
        try:
            yield
        finally:
            self.report.cpu.append((phase, self.meter.stop(await self.pg_pids())))

    async def vacuum(self) -> None:
        """Reclaim the dead versions of the hot event rows before a measured phase. This
        PostgreSQL runs with autovacuum off; without it every phase would start on a more
        bloated events table than the one before (see docs/performance.md)."""
        assert self.db is not None
        await self.db.execute("VACUUM (ANALYZE) events, bookings")

    # --- setup --------------------------------------------------------------------------

    async def setup(self) -> None:
        self.db = await asyncpg.connect(harness.ASYNCPG_DSN)
        others = await self.db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname <> $1",
            harness.DB_NAME)
        limit = int(await self.db.fetchval("SHOW max_connections"))
        if others > 10:
            self.log(f"warning: {others} other PostgreSQL connections are open (max_connections {limit}); "
                     "the benchmark needs up to ~150 and shares the CPU with whatever they do")
        self.report.data["pg_other_connections_at_start"] = others
        load = Path("/proc/loadavg").read_text().split()[0]
        self.report.data["loadavg_at_start"] = float(load)
        async with Client(self.base, 8) as client:
            out = await client.op(LOGIN, {"input": {"email": harness.ADMIN_EMAIL,
                                                    "password": harness.ADMIN_PASSWORD}}, "login")
            if not out.ok or not out.payload.get("accessToken"):
                raise RuntimeError(f"admin login failed: {out}")
            self.admin_token = out.payload["accessToken"]
            venue = await self._admin(client, CREATE_VENUE, {"input": {
                "name": "Bench Arena", "address": "1 Loopback Road", "city": "Localhost",
                "country": "Nowhere", "capacity": 1_000_000}}, "createVenue")
            venue_id = self.venue_id = venue["venue"]["id"]
            plan = (
                [("seed", 100)] * 3 + [("ceiling", CEILING_PLACES)] + [("sql", CEILING_PLACES)] * 2
                + [("fanout", 1_000_000)] + [("mixed", 1_000_000)] * 4 + [("mixed-hot", 300)]
            )
            ids = await asyncio.gather(*(self._event(client, venue_id, kind, capacity, i)
                                         for i, (kind, capacity) in enumerate(plan)))
            for (kind, _), event_id in zip(plan, ids, strict=True):
                self.events[kind].append(event_id)

    async def _admin(self, client: Client, query: str, variables: dict[str, Any], name: str) -> Any:
        out = await client.op(query, variables, name, self.admin_token)
        if not out.ok:
            raise RuntimeError(f"{name} failed: {out}")
        return out.payload

    async def _event(self, client: Client, venue_id: str, kind: str, capacity: int, i: int) -> str:
        starts = datetime.now(UTC) + timedelta(days=30 + i)
        created = await self._admin(client, CREATE_EVENT, {"input": {
            "venueId": venue_id, "name": f"Bench {kind} #{i}", "category": "concert",
            "description": f"Benchmark event ({kind}) with {capacity} places",
            "startsAt": starts.isoformat(), "endsAt": (starts + timedelta(hours=3)).isoformat(),
            "capacity": capacity, "priceCents": 4500, "maxTicketsPerBooking": 10,
            # The closed loops reserve again and again with the same buyers: no per-buyer cap.
            "maxTicketsPerUser": capacity}}, "createEvent")
        event_id = created["event"]["id"]
        await self._admin(client, PUBLISH, {"id": event_id}, "publishEvent")
        return str(event_id)

    async def register_buyers(self, count: int) -> None:
        started = now()
        run_tag = secrets.token_hex(3)
        async with Client(self.base, 32) as client:
            semaphore = asyncio.Semaphore(32)

            async def one(i: int) -> Buyer:
                async with semaphore:
                    out = await client.op(REGISTER, {"input": {
                        "email": f"buyer{i}-{run_tag}@bench.example.com",
                        "password": "bench-password-1234", "name": f"Buyer {i}"}}, "register")
                if not out.ok:
                    raise RuntimeError(f"register failed: {out}")
                token = out.payload["accessToken"]
                return Buyer(token, int(out.payload["user"]["id"]), headers_for(token))

            async with self.cpu("register buyers"):
                self.buyers = list(await asyncio.gather(*(one(i) for i in range(count))))
        elapsed = now() - started
        self.log(f"registered {count} buyers in {elapsed:.1f}s ({count / elapsed:.0f}/s)")
        self.report.data["register_per_s"] = count / elapsed

    # --- database truth -----------------------------------------------------------------

    async def inventory_check(self, event_id: str) -> dict[str, int]:
        assert self.db is not None
        row = await self.db.fetchrow("SELECT capacity, available, version, status FROM events WHERE id = $1",
                                     int(event_id))
        taken = await self.db.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM bookings "
            "WHERE event_id = $1 AND status IN ('PENDING', 'CONFIRMED')", int(event_id))
        capacity, available = row["capacity"], row["available"]
        return {"capacity": capacity, "available": available, "taken": int(taken),
                "oversold": max(0, int(taken) - capacity),
                "consistent": int(int(taken) == capacity - available), "version": row["version"]}

    # --- generic loops ------------------------------------------------------------------

    async def closed_loop(self, concurrency: int, total: int,
                          call: Callable[[int, int], Awaitable[Outcome]]) -> tuple[float, list[float], Counter[str]]:
        """`concurrency` workers issue `total` calls back to back; (elapsed, latencies, codes)."""
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        next_index = 0

        async def worker(slot: int) -> None:
            nonlocal next_index
            while next_index < total:
                index = next_index
                next_index += 1
                t0 = now()
                outcome = await call(slot, index)
                latencies.append(now() - t0)
                codes[outcome.code] += 1

        started = now()
        await asyncio.wait_for(asyncio.gather(*(worker(s) for s in range(concurrency))),
                               timeout=self.args.phase_timeout)
        return now() - started, latencies, codes

    async def open_loop(self, rate: float, calls: list[Callable[[], Awaitable[Outcome]]]
                        ) -> tuple[float, list[tuple[float, float, Outcome]]]:
        """Start call i at start + i/rate whatever happened to the others (no coordinated
        omission); returns (start, [(intended, done, outcome)])."""
        results: list[tuple[float, float, Outcome]] = []

        async def one(intended: float, call: Callable[[], Awaitable[Outcome]]) -> None:
            outcome = await call()
            results.append((intended, now(), outcome))

        tasks = []
        start = now() + 0.02
        for i, call in enumerate(calls):
            intended = start + i / rate
            delay = intended - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(intended, call)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=self.args.phase_timeout)
        return start, results

    # --- c. ceilings ----------------------------------------------------------------------

    async def sql_ceilings(self) -> None:
        """What PostgreSQL itself does on this schema: a reserve as one statement, and 50
        bookings taken by one statement (what group commit could reach), each on its own
        event, one dedicated connection per in-flight slot (no pool), closed loop. Each run
        starts on a refilled event, so no statement is refused (a refusal is cheaper)."""
        args = self.args
        batch = args.batch
        users = await self._sql_buyers(args.concurrency * batch)
        assert self.db is not None
        await self.db.execute("VACUUM (ANALYZE)")  # this PostgreSQL runs with autovacuum off
        references = itertools.count()
        single, many = (int(e) for e in self.events["sql"])
        conns = await self._connections(args.concurrency)
        try:
            async def one(slot: int, _index: int) -> Outcome:
                created = datetime.now(UTC)
                row = await conns[slot].fetchrow(
                    SQL_RESERVE_ONE, single, 1, f"SQL-{next(references):08X}", users[slot], created,
                    created + timedelta(seconds=300))
                return Outcome("OK" if row else "SOLD_OUT")

            async def batched(slot: int, _index: int) -> Outcome:
                created = datetime.now(UTC)
                rows = await conns[slot].fetch(
                    SQL_RESERVE_BATCH, many, batch, [f"SQL-{next(references):08X}" for _ in range(batch)],
                    users[slot * batch:(slot + 1) * batch], created, created + timedelta(seconds=300))
                return Outcome("OK" if len(rows) == batch else "SOLD_OUT")

            await self._closed_loop_runs("sql", "c. SQL ceiling: 1 reserve per statement", one,
                                         phase="c. SQL 1 reserve per statement", refill=single)
            await self._closed_loop_runs("sql_batch", f"c. SQL ceiling: {batch} reserves per statement",
                                         batched, phase=f"c. SQL {batch} reserves per statement",
                                         refill=many, places_per_call=batch)
        finally:
            await asyncio.gather(*(conn.close() for conn in conns), return_exceptions=True)

    async def _sql_buyers(self, count: int) -> list[int]:
        """`count` users written straight into the table (the SQL ceilings need no login):
        one per booking in flight, as in the app, so no two statements in flight share a user row."""
        assert self.db is not None
        rows = await self.db.fetch(
            "INSERT INTO users (email, name, password_hash, role, created_at) "
            "SELECT 'sql' || g || '@bench.example.com', 'SQL buyer ' || g, '!', 'USER', now() "
            "FROM generate_series(1, $1) AS g RETURNING id", count)
        return [row["id"] for row in rows]

    async def refill(self, event_id: int) -> None:
        """Put a ceiling event back as it was created: its bookings gone, every place on sale."""
        assert self.db is not None
        async with self.db.transaction():
            await self.db.execute("DELETE FROM bookings WHERE event_id = $1", event_id)
            await self.db.execute("UPDATE events SET available = capacity, status = 'ON_SALE' WHERE id = $1",
                                  event_id)

    async def _connections(self, count: int) -> list[asyncpg.Connection]:
        """`count` connections to the bench database. Other users of this PostgreSQL come
        and go, so a refusal for want of connection slots is retried for up to 60 s."""
        conns: list[asyncpg.Connection] = []
        deadline = now() + 60
        while len(conns) < count:
            try:
                conns.append(await asyncpg.connect(harness.ASYNCPG_DSN))
            except asyncpg.TooManyConnectionsError:
                if now() > deadline:
                    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
                    raise RuntimeError(f"PostgreSQL has no room for {count} connections (got {len(conns)}): "
                                       "max_connections is shared with whatever else runs here") from None
                await asyncio.sleep(1)
        return conns

    async def framework_ceiling(self) -> None:
        body, headers = body_of(TRIVIAL), headers_for(None)
        async with Client(self.base, self.args.concurrency) as client:
            async def trivial(_slot: int, _index: int) -> Outcome:
                return await client.call(body, headers, "__typename")

            await client.warm()
            await self._closed_loop_runs("framework", "c. framework: POST { __typename }", trivial,
                                         phase="c. framework { __typename }", vacuum=False)

    async def app_ceiling(self) -> None:
        event_id = self.events["ceiling"][0]
        body = body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 1}})
        async with Client(self.base, self.args.concurrency) as client:
            async def reserve(slot: int, _index: int) -> Outcome:
                return await client.call(body, self.buyers[slot].headers, "reserveSeats")

            await client.warm()
            await self._closed_loop_runs("app", "c. app: reserveSeats (closed loop)", reserve,
                                         phase="c. app reserveSeats")
        check = await self.inventory_check(event_id)
        if not check["consistent"]:
            self.report.problems.append(f"ceiling event inventory inconsistent: {check}")

    async def _closed_loop_runs(self, key: str, label: str, call: Callable[[int, int], Awaitable[Outcome]], *,
                                phase: str | None = None, refill: int | None = None, places_per_call: int = 1,
                                vacuum: bool = True) -> None:
        """A warm-up, then --runs closed-loop runs of one fixed size, each after a refill of
        `refill` (an event id) and a VACUUM; CPU is counted over the runs only."""
        args = self.args
        if refill is not None:
            await self.refill(refill)
        count = self.run_size(await self.closed_loop(args.concurrency, args.warmup, call), places_per_call)
        runs, cpu = [], []
        for _ in range(args.runs):
            if refill is not None:
                await self.refill(refill)
            if vacuum:
                await self.vacuum()
            self.meter.start(await self.pg_pids())
            runs.append(await self.closed_loop(args.concurrency, count, call))
            cpu.append(self.meter.stop(await self.pg_pids()))
        wall = sum(used["wall"] for used in cpu)
        self.report.cpu.append((phase or label, {
            name: sum(used[name] * used["wall"] for used in cpu) / wall for name in cpu[0] if name != "wall"
        } | {"wall": wall}))
        self._ceiling_row(key, label, runs, places_per_call)

    def run_size(self, warmup: tuple[float, list[float], Counter[str]], places_per_call: int = 1) -> int:
        """Requests per measured run: --requests, or what the warm-up rate does in
        --run-seconds (at least 300), so that slow and fast ceilings take similar time and
        every run of one ceiling has the same fixed count; never more than 90% of a ceiling
        event's places, so no run reaches a sold-out event."""
        if self.args.requests:
            count = int(self.args.requests)
        else:
            elapsed, latencies, _ = warmup
            count = int(min(max(len(latencies) / elapsed * self.args.run_seconds, 300), 20_000))
        return min(count, CEILING_PLACES * 9 // 10 // places_per_call)

    def _ceiling_row(self, key: str, label: str, runs: list[tuple[float, list[float], Counter[str]]],
                     places_per_call: int = 1) -> None:
        throughputs = [len(lat) / elapsed for elapsed, lat, _ in runs]
        best = median(throughputs)
        middle = sorted(runs, key=lambda r: len(r[1]) / r[0])[len(runs) // 2]
        codes: Counter[str] = Counter()
        for _, _, c in runs:
            codes.update(c)
        faults = sum(n for code, n in codes.items() if code != "OK")
        self.report.data.setdefault("ceilings", {})[key] = {
            "throughputs": throughputs, "median": best, "places_per_s": best * places_per_call,
            "codes": dict(codes), "latency_ms": Summary.of(middle[1]).as_dict()}
        if faults:
            self.report.faults.append(f"{label}: {faults} non-OK answers {dict(codes)}")
        # CPU per request over the whole phase: steadier than throughput on a shared machine.
        _phase, used = self.report.cpu[-1]
        requests = sum(len(lat) for _, lat, _ in runs)
        per_op = {group: 1000 * used[group] * used["wall"] / requests
                  for group in ("app server", "postgresql", "redis", "bench client")}
        self.report.data["ceilings"][key]["cpu_ms_per_request"] = per_op
        places = (f"{places_per_call} places per statement = {best * places_per_call:.0f} places/s, "
                  f"pg CPU {per_op['postgresql'] / places_per_call:.3f} ms/place; " if places_per_call > 1 else "")
        self.report.rows.append(Row(
            label, f"{sum(codes.values()) - faults}/{sum(codes.values())} ok", best, Summary.of(middle[1]),
            f"{places}{self.args.concurrency} in flight, {len(middle[1])} requests/run; runs "
            + " / ".join(f"{t:.0f}" for t in throughputs) + "/s; CPU ms/request: app "
            f"{per_op['app server']:.2f}, pg {per_op['postgresql']:.2f}, client {per_op['bench client']:.2f}"))
        self.log(f"{label}: median {best:.0f}/s (runs {', '.join(f'{t:.0f}' for t in throughputs)})")

    # --- a. seed ----------------------------------------------------------------------------

    async def _released_at_once(self, buyers: list[Buyer], body: bytes, field: str = "reserveSeats",
                                phase: str | None = None) -> list[tuple[Outcome, float]]:
        """Every buyer on a keep-alive connection of its own (`harness.Connection`), warmed
        by one `{ __typename }`, parked at a gate, then all released at once; (outcome,
        latency from the release) per buyer, CPU counted as `phase`."""
        connections = await asyncio.wait_for(asyncio.gather(
            *(harness.Connection.open(self.host, self.port) for _ in buyers)), self.args.phase_timeout)
        try:
            warm = body_of(TRIVIAL)
            await asyncio.wait_for(asyncio.gather(*(c.send(c.request(warm, headers_for(None)), "__typename")
                                                    for c in connections)), self.args.phase_timeout)
            gate = asyncio.Event()
            start = 0.0

            async def one(connection: harness.Connection, buyer: Buyer) -> tuple[Outcome, float]:
                request = connection.request(body, buyer.headers)
                await gate.wait()
                outcome = await connection.send(request, field)
                return outcome, now() - start

            tasks = [asyncio.create_task(one(c, b)) for c, b in zip(connections, buyers, strict=True)]
            await asyncio.sleep(0.05)  # every task is parked at the gate
            async with self.cpu(phase) if phase else contextlib.nullcontext():
                start = now()
                gate.set()
                return await asyncio.wait_for(asyncio.gather(*tasks), self.args.phase_timeout)
        finally:
            for connection in connections:
                connection.close()

    async def _seed_round(self, event_id: str) -> list[tuple[Outcome, float]]:
        """25 buyers x 2 places released at once; latency from the release."""
        body = body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 2}})
        return await self._released_at_once(self.buyers[:25], body)

    async def seed(self) -> None:
        latencies: list[float] = []
        successes: list[int] = []
        codes: Counter[str] = Counter()
        async with self.cpu("a. seed 25x2"):
            for event_id in self.events["seed"]:
                await self.vacuum()
                results = await self._seed_round(event_id)
                successes.append(sum(1 for o, _ in results if o.ok))
                codes.update(o.code for o, _ in results)
                latencies += [t for _, t in results]
                check = await self.inventory_check(event_id)
                if check["oversold"] or not check["consistent"] or check["taken"] != 2 * successes[-1]:
                    self.report.problems.append(f"seed event {event_id}: {check}")
                await asyncio.sleep(0.3)
        summary = Summary.of(latencies)
        self.report.data["seed"] = {"successes": successes, "codes": dict(codes), "latency_ms": summary.as_dict()}
        if min(successes) != 25:
            self.report.problems.append(f"seed: only {successes} of 25 succeeded ({dict(codes)})")
        self.report.rows.append(Row(
            "a. seed: 25 buyers x 2 / 100 places", f"{'/'.join(map(str, successes))} of 25 ok", None, summary,
            f"{len(successes)} rounds pooled; min/avg {fmt_ms(summary.min)}/{fmt_ms(summary.avg)} ms "
            "(old system: 4/25, 57/189/292 ms)"))
        self.report.targets.append(("seed p99 <= 80 ms", summary.p99 <= 80, f"{summary.p99:.0f} ms"))
        self.log(f"seed: {successes} ok, p99 {summary.p99:.0f} ms")

    # --- b. burst -------------------------------------------------------------------------

    async def burst(self) -> None:
        """--burst-buyers x 1 place against --burst-places, every buyer on its own warm
        connection, all released at once (the sale opens): all answered, exactly the places
        sold (in the database), p50/p99 from the release."""
        args = self.args
        n, places = args.burst_buyers, args.burst_places
        label = f"b. burst: {n} x 1 / {places} at once"
        async with Client(self.base, 4) as client:
            event_id = await self._event(client, self.venue_id, "burst", places, 100 + len(self.report.rows))
        body = body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 1}})
        await self.vacuum()
        results = await self._released_at_once(self.buyers[:n], body, phase=f"b. burst {n} at once")
        check = await self.inventory_check(event_id)
        codes = Counter(o.code for o, _ in results)
        faults = {c: k for c, k in codes.items() if c != "OK" and c not in harness.REAL_REASONS}
        summary = Summary.of(t for _, t in results)
        self.report.data["burst"] = {"buyers": n, "places": places, "codes": dict(codes), "db": check,
                                     "latency_ms": summary.as_dict()}
        if codes["OK"] != places or check["taken"] != places or check["oversold"] or not check["consistent"]:
            self.report.problems.append(f"{label}: {codes['OK']} ok of {places}, db {check}")
        if faults:
            self.report.faults.append(f"{label}: not answered or faults {faults}")
        self.report.rows.append(Row(
            label, f"{check['taken']} sold (db), oversold {check['oversold']}", None, summary,
            f"{len(results) - sum(faults.values())}/{n} answered; "
            + ", ".join(f"{c} {k}" for c, k in codes.most_common())))
        self.report.targets.append((f"burst {n} at once: all answered, {places} sold, p99 <= 1 s",
                                    not faults and check["taken"] == places and summary.p99 <= 1000,
                                    f"{len(results) - sum(faults.values())} answered, {check['taken']} sold, "
                                    f"p99 {summary.p99:.0f} ms"))
        self.log(f"{label}: {dict(codes)}, p99 {summary.p99:.0f} ms, db {check}")
        await self.burst_floor(summary)

    async def burst_floor(self, reserves: Summary) -> None:
        """The same burst of `{ __typename }`: what the HTTP and GraphQL stack alone take to
        answer that many requests at once on this machine, in the same run (the burst's floor)."""
        n = self.args.burst_buyers
        label = f"b. burst floor: {n} x {{ __typename }} at once"
        results = await self._released_at_once(self.buyers[:n], body_of(TRIVIAL), "__typename",
                                                f"b. burst floor {n} at once")
        codes = Counter(o.code for o, _ in results)
        summary = Summary.of(t for _, t in results)
        self.report.data["burst_floor"] = {"requests": n, "codes": dict(codes), "latency_ms": summary.as_dict()}
        if codes["OK"] != n:
            self.report.faults.append(f"{label}: {dict(codes)}")
        self.report.rows.append(Row(label, f"{codes['OK']}/{n} ok", None, summary,
                                    f"the reserve burst's p99 is {reserves.p99 / summary.p99:.2f} x this one's"))
        self.log(f"{label}: p99 {summary.p99:.0f} ms")

    # --- b. flash sale --------------------------------------------------------------------

    async def flash(self, rate: float, n_buyers: int, capacity: int, label: str, target: bool) -> None:
        args = self.args
        async with Client(self.base, 4) as client:
            event_id = await self._event(client, self.venue_id, "flash", capacity, 100 + len(self.report.rows))
        buyers = self.buyers[:n_buyers]
        body = body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 1}})
        await self.vacuum()
        async with Client(self.base, args.flash_connections, timeout=args.phase_timeout) as client:
            await client.warm(min(args.flash_connections, 200))

            def call_for(buyer: Buyer) -> Callable[[], Awaitable[Outcome]]:
                return lambda: client.call(body, buyer.headers, "reserveSeats")

            async with self.cpu(f"b. flash @{rate:.0f}/s"):
                start, results = await self.open_loop(rate, [call_for(b) for b in buyers])
        check = await self.inventory_check(event_id)
        codes = Counter(o.code for _, _, o in results)
        latencies = [done - intended for intended, done, _ in results]
        ok_done = sorted(done for _, done, o in results if o.ok)
        last = max(done for _, done, _ in results)
        throughput = len(results) / (last - start)
        sold_out_after = (ok_done[-1] - start) if ok_done else math.nan
        faults = {c: n for c, n in codes.items() if c not in ("OK", "SOLD_OUT", "NOT_ENOUGH_SEATS")}
        summary = Summary.of(latencies)
        capacity = check["capacity"]
        self.report.data.setdefault("flash", []).append({
            "rate": rate, "codes": dict(codes), "db": check, "throughput": throughput,
            "sold_out_after_s": sold_out_after, "latency_ms": summary.as_dict(),
            "ok_latency_ms": Summary.of([d - i for i, d, o in results if o.ok]).as_dict()})
        if codes["OK"] != capacity or check["oversold"] or not check["consistent"] or check["taken"] != capacity:
            self.report.problems.append(f"{label}: {codes['OK']} ok of {capacity}, db {check}")
        if faults:
            self.report.faults.append(f"{label}: faults {faults}")
        self.report.rows.append(Row(
            label, f"{codes['OK']} sold, oversold {check['oversold']}", throughput, summary,
            f"{len(buyers)} buyers at {rate:.0f}/s; sold out after {sold_out_after:.2f} s; "
            f"SOLD_OUT {codes['SOLD_OUT']}; faults {sum(faults.values())}"))
        if target:
            self.report.targets.append((f"flash p99 <= 150 ms at {args.sat_fraction:.0%} of saturation",
                                        summary.p99 <= 150, f"{summary.p99:.0f} ms at {rate:.0f}/s"))
        self.log(f"{label}: {codes['OK']} ok, p99 {summary.p99:.0f} ms, {throughput:.0f}/s, db {check}")

    # --- d. fan-out -----------------------------------------------------------------------

    async def fanout(self) -> None:
        args = self.args
        event_id = self.events["fanout"][0]
        count = args.subscribers
        receipts: list[list[tuple[float, int]]] = [[] for _ in range(count)]
        alive: list[int] = []  # indices of subscribers that got their snapshot
        snapshots: list[int] = []
        ready = asyncio.Semaphore(64)
        connected = 0
        stop = asyncio.Event()
        payload = {"query": SUBSCRIBE, "variables": {"eventId": event_id}}
        failures: Counter[str] = Counter()
        subscribers: list[wsclient.Subscriber] = []

        async def subscriber(i: int) -> None:
            nonlocal connected
            mine = receipts[i]

            def on_next(at: float, message: dict[str, Any]) -> None:
                mine.append((at, message["payload"]["data"]["eventAvailability"]["version"]))

            try:
                async with ready:
                    opened, first = await wsclient.subscribe(self.host, self.port, payload, on_next)
                subscribers.append(opened)
                update = first["payload"]["data"]["eventAvailability"]
                if not update["snapshot"]:
                    raise RuntimeError("first message is not a snapshot")
                snapshots.append(update["version"])
                alive.append(i)
                connected += 1
            except Exception as error:
                failures[type(error).__name__] += 1
                return
            try:
                await opened.closed
            except Exception:
                if not stop.is_set():
                    failures["closed early"] += 1

        started = now()
        async with self.cpu(f"d. fan-out connect {count}"):
            tasks = [asyncio.create_task(subscriber(i)) for i in range(count)]
            deadline = now() + args.phase_timeout
            while connected + sum(failures.values()) < count and now() < deadline:
                await asyncio.sleep(0.05)
        connect_s = now() - started
        self.log(f"fan-out: {connected} subscribers connected in {connect_s:.1f}s, failures {dict(failures)}")

        await self.vacuum()
        sends: list[tuple[float, float, Outcome]] = []
        buyer = self.buyers[-1]
        body = body_of(RESERVE, {"input": {"eventId": event_id, "quantity": 1}})
        async with self.cpu(f"d. fan-out {args.updates} updates"):
            async with Client(self.base, 2) as client:
                await client.warm(2)
                for _ in range(args.updates):
                    t_send = now()
                    outcome = await client.call(body, buyer.headers, "reserveSeats")
                    sends.append((t_send, now(), outcome))
                    await asyncio.sleep(args.update_gap)
            v0 = max(snapshots) if snapshots else 0
            final = v0 + args.updates
            wait_until = now() + 10
            while now() < wait_until and any(
                    not receipts[i] or receipts[i][-1][1] < final for i in alive):
                await asyncio.sleep(0.05)
        stop.set()
        for opened in subscribers:
            opened.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        check = await self.inventory_check(event_id)
        if check["version"] != final:
            self.report.problems.append(f"fan-out: event version {check['version']}, expected {final}")
        from_send, from_response = [], []
        missed = 0
        coalesced = 0  # a subscriber saw version v only folded into a later message
        for k, (t_send, t_resp, outcome) in enumerate(sends, start=1):
            if not outcome.ok:
                self.report.faults.append(f"fan-out reserve {k}: {outcome.code}")
            version = v0 + k
            for i in alive:
                hit = next(((t, v) for t, v in receipts[i] if v >= version), None)
                if hit is None:
                    missed += 1
                    continue
                coalesced += hit[1] != version
                from_send.append(hit[0] - t_send)
                from_response.append(hit[0] - t_resp)
        expected = connected * len(sends)
        received = len(from_send)
        summary = Summary.of(from_send)
        reserve_latency = Summary.of([r - s for s, r, _ in sends])
        resp_summary = Summary.of(from_response)
        self.report.data["fanout"] = {
            "subscribers": count, "connected": connected, "connect_s": connect_s,
            "failures": dict(failures), "updates": len(sends), "received": received,
            "expected": expected, "missed": missed, "coalesced": coalesced,
            "from_send_ms": summary.as_dict(), "from_response_ms": resp_summary.as_dict(),
            "reserve_ms": reserve_latency.as_dict()}
        if failures or missed:
            self.report.faults.append(f"fan-out: failures {dict(failures)}, missed {missed}")
        self.report.rows.append(Row(
            f"d. fan-out: {count} subs x {len(sends)} reserves", f"{received}/{expected} delivered",
            None, summary,
            f"from just before send; reserve itself p50 {fmt_ms(reserve_latency.p50)} ms; "
            f"after response p50/p99 {fmt_ms(resp_summary.p50)}/{fmt_ms(resp_summary.p99)} ms; "
            f"{coalesced} seen folded into a later version; connect {connected} in {connect_s:.1f}s"))
        self.log(f"fan-out: {received}/{expected} delivered, p50 {summary.p50:.0f} ms, p99 {summary.p99:.0f} ms")

    # --- e. mixed ---------------------------------------------------------------------------

    async def mixed(self) -> None:
        args = self.args
        events = self.events["mixed"] + self.events["mixed-hot"]
        hot = self.events["mixed-hot"][0]
        vus = args.mixed_users
        buyers = self.buyers[100:100 + vus] if len(self.buyers) >= 100 + vus else self.buyers[:vus]
        latencies: dict[str, list[float]] = defaultdict(list)
        codes: dict[str, Counter[str]] = defaultdict(Counter)
        measuring = False
        stop_at = 0.0
        max_ops = int(args.mixed_seconds * 20_000) + 10_000  # a hard bound on the loop
        done_ops = 0
        rng = random.Random(6)

        async with Client(self.base, vus) as client:
            async def op(name: str, query: str, variables: dict[str, Any], field_name: str,
                         headers: dict[str, str]) -> Outcome:
                nonlocal done_ops
                t0 = now()
                outcome = await client.call(body_of(query, variables), headers, field_name)
                if measuring:
                    latencies[name].append(now() - t0)
                    codes[name][outcome.code] += 1
                done_ops += 1
                return outcome

            async def user(buyer: Buyer) -> None:
                h = buyer.headers
                while now() < stop_at and done_ops < max_ops:
                    await op("read: events list", EVENTS, {"first": 20}, "events", h)
                    event_id = hot if rng.random() < 0.25 else rng.choice(events)
                    await op("read: event(id)", EVENT, {"id": event_id}, "event", h)
                    await op("read: event(id)", EVENT, {"id": event_id}, "event", h)
                    quantity = rng.choice((1, 1, 1, 2, 2, 3, 4))
                    reserved = await op("reserveSeats", RESERVE, {"input": {
                        "eventId": event_id, "quantity": quantity}}, "reserveSeats", h)
                    if not reserved.ok:
                        continue
                    booking_id = reserved.payload["booking"]["id"]
                    choice = rng.random()
                    if choice < 0.70:
                        confirmed = await op("confirmBooking", CONFIRM, {"input": {
                            "bookingId": booking_id, "paymentToken": "tok_visa"}}, "confirmBooking", h)
                        if confirmed.ok and rng.random() < 0.10:
                            await op("cancelBooking", CANCEL, {"input": {"bookingId": booking_id}},
                                     "cancelBooking", h)
                    elif choice < 0.90:
                        await op("cancelBooking", CANCEL, {"input": {"bookingId": booking_id}},
                                 "cancelBooking", h)
                    # else: abandoned hold, left to expire

            await client.warm()
            stop_at = now() + args.mixed_warmup
            await asyncio.wait_for(asyncio.gather(*(user(b) for b in buyers)), args.phase_timeout)
            measuring = True
            done_ops = 0
            await self.vacuum()
            async with self.cpu(f"e. mixed {args.mixed_seconds:.0f}s"):
                started = now()
                stop_at = started + args.mixed_seconds
                await asyncio.wait_for(asyncio.gather(*(user(b) for b in buyers)),
                                       args.mixed_seconds + args.phase_timeout)
                elapsed = now() - started

        total_faults = 0
        mixed_data = {}
        for name in ("read: events list", "read: event(id)", "reserveSeats", "confirmBooking", "cancelBooking"):
            c = codes[name]
            n = sum(c.values())
            faults = {k: v for k, v in c.items()
                      if k != "OK" and not (name == "reserveSeats" and k in harness.REAL_REASONS)}
            refused = sum(v for k, v in c.items() if k != "OK" and k not in faults)
            total_faults += sum(faults.values())
            summary = Summary.of(latencies[name])
            mixed_data[name] = {"n": n, "codes": dict(c), "throughput": n / elapsed, "latency_ms": summary.as_dict()}
            self.report.rows.append(Row(
                f"e. mixed {vus} users: {name}", f"{c['OK']} ok, {refused} sold out, {sum(faults.values())} faults",
                n / elapsed, summary, ", ".join(f"{k} {v}" for k, v in faults.items())))
            if faults:
                self.report.faults.append(f"mixed {name}: faults {faults}")
        all_ops = sum(sum(c.values()) for c in codes.values())
        self.report.rows.append(Row(f"e. mixed {vus} users: all operations", f"{total_faults} faults",
                                    all_ops / elapsed, None,
                                    f"{elapsed:.0f} s measured after {args.mixed_warmup:.0f} s warm-up"))
        for event_id in events:
            check = await self.inventory_check(event_id)
            if check["oversold"] or not check["consistent"]:
                self.report.problems.append(f"mixed event {event_id}: {check}")
        self.report.data["mixed"] = mixed_data
        self.log(f"mixed: {all_ops / elapsed:.0f} ops/s, faults {total_faults}")

    # --- run --------------------------------------------------------------------------------

    async def run(self) -> None:
        args = self.args
        await self.setup()
        self.log("events created; SQL ceilings (before the app's pools fill up)")
        await self.sql_ceilings()
        await self.register_buyers(max(args.flash_buyers, args.burst_buyers, 100 + args.mixed_users,
                                       args.concurrency))
        await self.framework_ceiling()
        await self.app_ceiling()
        await self.seed()
        await self.burst()
        await self.flash(args.rate, args.flash_buyers, args.flash_buyers // 4,
                         f"b. flash: {args.flash_buyers} x 1 / {args.flash_buyers // 4} @ {args.rate:.0f}/s",
                         target=False)
        # The same sale at a rate the app can sustain: --sat-fraction of the reserve ceiling,
        # with as many buyers as arrive in --sat-seconds (2,000 at most), a quarter of them winning.
        saturation = self.report.data["ceilings"]["app"]["median"]
        sat_rate = max(5.0, args.sat_fraction * saturation)
        n = max(40, min(args.flash_buyers, int(sat_rate * args.sat_seconds)))
        await asyncio.sleep(1)
        await self.flash(sat_rate, n, n // 4,
                         f"b. flash: {n} x 1 / {n // 4} @ {sat_rate:.0f}/s = {args.sat_fraction:.0%} of sat.",
                         target=True)
        await self.fanout()
        await self.mixed()
        ceilings = self.report.data["ceilings"]
        app, sql, fw = ceilings["app"]["median"], ceilings["sql"]["median"], ceilings["framework"]["median"]
        # The app's reserves take one place each: its reserves/s are its places/s.
        batched = ceilings["sql_batch"]["places_per_s"]
        self.report.data["ratios"] = {"app_over_sql": app / sql, "app_over_batch": app / batched,
                                      "app_over_framework": app / fw}
        self.report.targets.insert(0, ("reserve >= 0.5 x single-statement SQL ceiling", app / sql >= 0.5,
                                       f"{app / sql:.2f}"))
        self.report.targets.insert(1, ("reserve >= 0.5 x framework ceiling", app / fw >= 0.5, f"{app / fw:.2f}"))

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()


# --- output ---------------------------------------------------------------------------------

TABLE_HEADER = ("scenario", "result", "thr/s", "p50 ms", "p99 ms", "max ms", "notes")


def row_cells(row: Row) -> tuple[str, ...]:
    lat = row.latency
    return (row.scenario, row.result, "-" if row.throughput is None else f"{row.throughput:.0f}",
            fmt_ms(lat.p50) if lat else "-", fmt_ms(lat.p99) if lat else "-", fmt_ms(lat.max) if lat else "-",
            row.notes)


def table_lines(table: list[tuple[str, ...]]) -> list[str]:
    """The header and rows as aligned columns, the notes last and unpadded."""
    lines = []
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]) - 1)]
    for i, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                               for j, (c, w) in enumerate(zip(row[:-1], widths, strict=True))) + "  " + row[-1])
        if i == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths) + 5))
    return lines


def cpu_lines(cpu: list[tuple[str, dict[str, float]]]) -> list[str]:
    cpu_names = ["app server", "postgresql", "redis", "bench client", "other", "machine"]
    lines = ["CPU (cores busy, of 2): " + "  ".join(f"{n:>12}" for n in cpu_names) + "   wall s"]
    for phase, used in cpu:
        lines.append(f"  {phase:<34}" + "  ".join(f"{used.get(n, 0):12.2f}" for n in cpu_names)
                     + f"   {used['wall']:6.1f}")
    return lines


def render(report: Report, args: argparse.Namespace, elapsed: float) -> str:
    table = [TABLE_HEADER, *(row_cells(row) for row in report.rows)]
    if "ratios" in report.data:
        r = report.data["ratios"]
        table.append(("c. ratio app / SQL 1 per statement", f"{r['app_over_sql']:.2f}", "", "", "", "",
                      "reserves/s over statements/s; target >= 0.5"))
        table.append((f"c. ratio app / SQL {args.batch} per statement", f"{r['app_over_batch']:.2f}", "", "", "",
                      "", "places/s over places/s"))
        table.append(("c. ratio app / framework", f"{r['app_over_framework']:.2f}", "", "", "", "",
                      "reserves/s over { __typename }/s; target >= 0.5"))
    lines = [*table_lines(table), "", *cpu_lines(report.cpu), ""]
    lines.append("targets:")
    for name, met, value in report.targets:
        lines.append(f"  {'met   ' if met else 'MISSED'}  {name}: {value}")
    lines.append("")
    if report.problems:
        lines.append("CORRECTNESS PROBLEMS:")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("correctness: no oversell, every sale and inventory count matches the database")
    if report.faults:
        lines.append("FAULTS (answers that are not a real reason such as SOLD_OUT):")
        lines += [f"  - {p}" for p in report.faults]
    else:
        lines.append("faults: none")
    lines.append(f"workers {args.workers}, concurrency {args.concurrency}, runs {args.runs}, "
                 f"{'quick' if args.quick else 'full'} run in {elapsed:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.flash_sale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--quick", action="store_true", help="smaller, shorter run (~2 minutes)")
    parser.add_argument("--rate", type=float, default=1000, help="flash-sale arrival rate per second")
    parser.add_argument("--sat-fraction", type=float, default=0.7,
                        help="second flash sale at this fraction of the measured reserve saturation")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight for the ceilings")
    parser.add_argument("--runs", type=int, help="runs per ceiling, median reported (3; quick 2)")
    parser.add_argument("--subscribers", type=int, help="fan-out websocket subscribers (1000; quick 200)")
    parser.add_argument("--mixed-seconds", type=float, help="mixed-load duration (60; quick 10)")
    parser.add_argument("--mixed-users", type=int, default=32, help="mixed-load virtual users")
    parser.add_argument("--sat-seconds", type=float, help="arrival window of that sale (20; quick 6)")
    parser.add_argument("--requests", type=int, help="requests per ceiling run (default: ~--run-seconds worth)")
    parser.add_argument("--run-seconds", type=float, help="target length of one ceiling run (5; quick 2)")
    parser.add_argument("--flash-connections", type=int, default=500, help="client connections in the flash sale")
    parser.add_argument("--batch", type=int, default=50, help="reserves per statement in the batched SQL ceiling")
    parser.add_argument("--burst-buyers", type=int, default=2000,
                        help="buyers released at once in the burst (also with --quick)")
    parser.add_argument("--burst-places", type=int, default=500, help="places on sale in the burst")
    parser.add_argument("--json", default=str(harness.REPO_ROOT / "bench" / "results" / "latest.json"),
                        help="where to write the raw figures ('' for nowhere)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (2 if quick else 3)
    args.subscribers = args.subscribers if args.subscribers is not None else (200 if quick else 1000)
    args.mixed_seconds = args.mixed_seconds or (10.0 if quick else 60.0)
    args.mixed_warmup = 1.0 if quick else 3.0
    args.flash_buyers = 800 if quick else 2000
    args.warmup = 100 if quick else 200
    args.sat_seconds = args.sat_seconds or (6.0 if quick else 20.0)
    args.run_seconds = args.run_seconds or (2.0 if quick else 5.0)
    args.updates = 10 if quick else 20
    args.update_gap = 0.3 if quick else 0.5
    args.phase_timeout = 120.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = now()
    env = harness.server_env(harness.free_port(), args.workers)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    log(f"creating database {harness.DB_NAME}, migrating, creating admin")
    harness.prepare(env)
    server = harness.Server(env)
    server.stop_on_signals()
    report: Report | None = None
    try:
        server.start()
        log(f"server pid {server.pid} on {server.base_url} (log {server.log_path}), {args.workers} workers")
        asyncio.run(server.wait_ready())

        async def go() -> Report:
            bench = Bench(args, server)
            try:
                await bench.run()
            finally:
                await bench.close()
            return bench.report

        report = asyncio.run(go())
    finally:
        server.stop()
    problems = server.log_problems()
    # The limiter failing open (its pool exhausted, say) only warns: count it (target: none).
    skipped = server.log_count(RATE_LIMIT_SKIPPED)
    report.data["rate_limiting_skipped_lines"] = skipped
    report.rows.append(Row(f'server log: "{RATE_LIMIT_SKIPPED}" lines', str(skipped), notes=str(server.log_path)))
    report.targets.append((f'no "{RATE_LIMIT_SKIPPED}" line in the server log', skipped == 0, str(skipped)))
    if problems:
        report.faults.append(f"server log has {len(problems)} error lines, e.g. {problems[0][:200]} "
                               f"(see {server.log_path})")
    text = render(report, args, now() - started)
    print(text)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"args": vars(args), "rows": [
            {"scenario": r.scenario, "result": r.result, "throughput": r.throughput,
             "latency_ms": r.latency.as_dict() if r.latency else None, "notes": r.notes} for r in report.rows],
            "cpu": report.cpu, "targets": report.targets, "problems": report.problems, "faults": report.faults,
            "data": report.data}, indent=2, default=str))
    return 1 if report.problems else 0  # faults and missed targets are reported, not fatal


if __name__ == "__main__":
    sys.exit(main())
