"""BookMyEvent on-sale benchmark (issue 14): a waiting room in front of a high-demand sale.

    .venv/bin/python -m bench.onsale [--quick] [--buyers N] [--places P] [--admit-per-minute R] ...

Creates its own database (bookmyevent_bench or $BENCH_DATABASE, dropped and recreated), starts
`bookmyevent serve` (`--workers` 2, admission every `--admission-interval` s, rate limits lifted), writes the
buyers straight into `users` and signs their access tokens with the server's secret (20,000
registrations through argon2 would take minutes), then creates an event of `--places` places
with a waiting room (`--admit-per-minute`) and `salesStartAt` `--early-seconds` after the
first join. Every buyer, open loop spread evenly over `--join-seconds`:

  1. joinQueue (latency from its intended send time);
  2. waits for admission: the first `--subscribers` (spread over the arrivals) on their own
     queueStatus websocket, the others polling myQueueTicket every `--poll-seconds` (+-50%);
  3. once ADMITTED: reserveSeats of 1 place, then confirmBooking; told SOLD_OUT by the queue,
     or refused SOLD_OUT by the reserve, it stops.

The admission latency is measured two ways: from the admission time (admittedUntil minus the
room's admissionSeconds: the start of the admitting transaction) and from the arrival at this
process of the admission message on Redis (just after the commit). Subscriptions per worker
are counted from /proc (the workers' sockets to the subscribers' ports). After the sale the
database is checked: sold == capacity, none oversold, every booking made by an admitted buyer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import jwt

from app.services.queue import LATE_RANK, queue_channel
from bench import harness, wsclient
from bench.fanout import worker_pids
from bench.flash_sale import (
    CONFIRM,
    CREATE_EVENT,
    CREATE_VENUE,
    LOGIN,
    PUBLISH,
    RESERVE,
    TABLE_HEADER,
    Row,
    cpu_lines,
    row_cells,
    table_lines,
)
from bench.harness import Client
from bench.stats import CpuMeter, Summary, find_roots, fmt_ms

now = time.perf_counter

JOIN = "mutation($id: ID!) { joinQueue(eventId: $id) { ticket { status position } errors { code message } } }"
MY_TICKET = "query($id: ID!) { myQueueTicket(eventId: $id) { status position admittedUntil } }"
QUEUE_STATUS = ("subscription($id: ID!) { queueStatus(eventId: $id) "
                "{ status position estimatedWaitSeconds admittedUntil } }")
TERMINAL = ("ADMITTED", "SOLD_OUT")


def busy_for(outcome: harness.Outcome) -> float | None:
    """The retryAfterSeconds of an answer turned away by the waiting room's gate (HTTP 429,
    RATE_LIMITED), or None."""
    if outcome.code != "HTTP_429":
        return None
    return float(((outcome.payload or [{}])[0].get("extensions") or {}).get("retryAfterSeconds", 1))


@dataclass
class Buyer:
    user_id: int
    token: str
    socket: bool                      # waits on a queueStatus websocket (else polls)
    join_s: float | None = None       # joinQueue latency from the intended send
    told: str = ""                    # ADMITTED or SOLD_OUT, as the buyer learnt it
    via: str = ""                     # "socket" (pushed), "snapshot" (first message), "poll" or "join"
    told_at: float = 0.0              # perf_counter at receipt
    admitted_at: float | None = None  # perf_counter of the admission (from admittedUntil)
    messages: int = 0                 # queueStatus messages after the first
    reserve_s: float | None = None
    confirm_s: float | None = None
    outcome: str = "unfinished"


@dataclass
class Sale:
    event_id: int = 0
    sales_start_wall: float = 0.0
    buyers: list[Buyer] = field(default_factory=list)
    published: dict[int, float] = field(default_factory=dict)  # user -> admission message arrival
    sold_out_published: float | None = None
    socket_failures: Counter[str] = field(default_factory=Counter)
    peak_per_worker: list[int] = field(default_factory=list)
    join_retries: int = 0             # joins told RATE_LIMITED (the room busy), sent again after retryAfterSeconds
    polls_busy: int = 0               # myQueueTicket polls told RATE_LIMITED


class QueueMessages(harness.ChannelListener):
    """Stamps, on arrival from Redis, each user's first admission message and the first sold out."""

    def __init__(self, sale: Sale) -> None:
        super().__init__(queue_channel(sale.event_id))
        self.sale = sale

    def on_message(self, body: Any, arrived: float) -> None:
        for user in body["users"]:
            self.sale.published.setdefault(user, arrived)
        if body["soldOut"] and self.sale.sold_out_published is None:
            self.sale.sold_out_published = arrived


def held_per_worker(pids: list[int], port: int, client_ports: set[int]) -> list[int]:
    """Established connections each worker holds to the given client ports (the subscribers)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pids[0]}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port \
                    and int(remote.rsplit(":", 1)[1], 16) in client_ports:
                inodes.add(f"socket:[{inode}]")
    counts = []
    for pid in pids:
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    held += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        counts.append(held)
    return counts


class OnSale:
    def __init__(self, args: argparse.Namespace, server: harness.Server) -> None:
        self.args = args
        self.server = server
        self.host, self.port = "127.0.0.1", server.port
        self.sale = Sale()
        self.rows: list[Row] = []
        self.cpu: list[tuple[str, dict[str, float]]] = []
        self.targets: list[tuple[str, bool, str]] = []
        self.problems: list[str] = []
        self.faults: list[str] = []
        self.data: dict[str, Any] = {}
        self.meter = CpuMeter({"app server": [server.pid], "redis": find_roots("redis-server")})
        self.db: asyncpg.Connection | None = None
        self.client_ports: set[int] = set()
        self.connecting = asyncio.Semaphore(64)  # websocket handshakes in flight
        self.rng = random.Random(14)
        self.offset = time.time() - now()  # wall clock = perf_counter + offset (one machine)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    # --- setup --------------------------------------------------------------------------

    async def buyers(self) -> list[Buyer]:
        """Users written straight into the table, with access tokens signed as
        app/services/accounts.py issue_access_token signs them; the sockets spread evenly."""
        args = self.args
        assert self.db is not None
        tag = os.urandom(3).hex()
        rows = await self.db.fetch(
            "INSERT INTO users (email, name, password_hash, role, created_at) "
            "SELECT 'onsale' || g || '-' || $2 || '@bench.example.com', 'Buyer ' || g, '!', 'USER', now() "
            "FROM generate_series(1, $1) AS g RETURNING id", args.buyers, tag)
        issued = datetime.now(UTC)
        claims = {"role": "USER", "typ": "access", "iat": issued, "exp": issued + timedelta(hours=1)}
        step = args.buyers / max(1, min(args.subscribers, args.buyers))
        sockets = {int(k * step) for k in range(min(args.subscribers, args.buyers))}
        return [Buyer(row["id"], jwt.encode({**claims, "sub": str(row["id"])}, harness.JWT_SECRET,
                                            algorithm="HS256"), i in sockets)
                for i, row in enumerate(rows)]

    async def event(self, client: Client, token: str) -> int:
        """The sale: SCHEDULED until `--early-seconds` from now, behind a waiting room."""
        args = self.args

        async def admin(query: str, variables: dict[str, Any], name: str) -> Any:
            out = await client.op(query, variables, name, token)
            if not out.ok:
                raise RuntimeError(f"{name} failed: {out}")
            return out.payload

        venue = await admin(CREATE_VENUE, {"input": {
            "name": "On-sale Arena", "address": "1 Loopback Road", "city": "Localhost", "country": "Nowhere",
            "capacity": args.places}}, "createVenue")
        starts = datetime.now(UTC) + timedelta(days=30)
        sales_start = datetime.now(UTC) + timedelta(seconds=args.early_seconds)
        created = await admin(CREATE_EVENT, {"input": {
            "venueId": venue["venue"]["id"], "name": "Bench on-sale", "category": "concert",
            "startsAt": starts.isoformat(), "endsAt": (starts + timedelta(hours=3)).isoformat(),
            "capacity": args.places, "priceCents": 4500, "maxTicketsPerBooking": 1, "maxTicketsPerUser": 1,
            "salesStartAt": sales_start.isoformat(),
            "waitingRoom": {"admitPerMinute": args.admit_per_minute,
                            "admissionSeconds": args.admission_seconds}}}, "createEvent")
        event_id = created["event"]["id"]
        published = await admin(PUBLISH, {"id": event_id}, "publishEvent")
        if published["event"]["status"] != "SCHEDULED":
            raise RuntimeError(f"event is {published['event']['status']}, not SCHEDULED: too slow a setup")
        self.sale.sales_start_wall = sales_start.timestamp()
        return int(event_id)

    # --- one buyer ----------------------------------------------------------------------

    async def buyer(self, buyer: Buyer, intended: float, queue: Client, shop: Client) -> None:
        variables = {"id": str(self.sale.event_id)}
        joined = await queue.op(JOIN, variables, "joinQueue", buyer.token)
        while (wait := busy_for(joined)) is not None:  # the room is busy: back after that, as the page is
            self.sale.join_retries += 1
            await asyncio.sleep(wait * self.rng.uniform(1, 1.5))
            joined = await queue.op(JOIN, variables, "joinQueue", buyer.token)
        buyer.join_s = now() - intended
        if not joined.ok:
            buyer.outcome = f"joinQueue {joined.code}"
            return
        status = joined.payload["ticket"]["status"]
        if status not in TERMINAL:
            if buyer.socket:
                await self.watch(buyer)
            if not buyer.told:
                await self.poll(buyer, queue)
        else:
            buyer.told, buyer.via, buyer.told_at = status, "join", now()
        if buyer.told == "SOLD_OUT":
            buyer.outcome = f"told SOLD_OUT ({buyer.via})"
            return
        t0 = now()
        reserved = await shop.op(RESERVE, {"input": {"eventId": variables["id"], "quantity": 1}},
                                 "reserveSeats", buyer.token)
        buyer.reserve_s = now() - t0
        if not reserved.ok:
            buyer.outcome = ("admitted, refused SOLD_OUT" if reserved.code in harness.REAL_REASONS
                             else f"reserveSeats {reserved.code}")
            return
        t0 = now()
        confirmed = await shop.op(CONFIRM, {"input": {"bookingId": reserved.payload["booking"]["id"],
                                                      "paymentToken": "tok_visa"}}, "confirmBooking", buyer.token)
        buyer.confirm_s = now() - t0
        buyer.outcome = "bought" if confirmed.ok else f"confirmBooking {confirmed.code}"

    def _learnt(self, buyer: Buyer, ticket: dict[str, Any], via: str, at: float) -> None:
        buyer.told, buyer.via, buyer.told_at = ticket["status"], via, at
        if ticket["status"] == "ADMITTED" and ticket.get("admittedUntil"):
            until = datetime.fromisoformat(ticket["admittedUntil"]).timestamp()
            buyer.admitted_at = until - self.args.admission_seconds - self.offset

    async def watch(self, buyer: Buyer) -> None:
        """Wait on a queueStatus websocket for ADMITTED or SOLD_OUT; a socket that cannot
        be opened or is lost leaves the buyer to polling, as a page would."""
        told: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()

        def on_next(at: float, message: dict[str, Any]) -> None:
            buyer.messages += 1
            ticket = (message["payload"].get("data") or {}).get("queueStatus")
            if ticket and ticket["status"] in TERMINAL and not told.done():
                told.set_result((at, ticket))

        payload = {"query": QUEUE_STATUS, "variables": {"id": str(self.sale.event_id)}}
        try:
            async with self.connecting:
                opened, first = await wsclient.subscribe(self.host, self.port, payload, on_next, timeout=60,
                                                         init={"Authorization": f"Bearer {buyer.token}"})
        except Exception as error:  # any failure to subscribe is counted; the buyer then polls
            self.sale.socket_failures[f"open: {type(error).__name__}"] += 1
            return
        assert opened.transport is not None
        client_port = opened.transport.get_extra_info("sockname")[1]
        self.client_ports.add(client_port)
        try:
            ticket = (first["payload"].get("data") or {}).get("queueStatus")
            if ticket is None:
                self.sale.socket_failures["first message has no ticket"] += 1
                return
            if ticket["status"] in TERMINAL:  # already admitted (or sold out) when the socket opened: no push
                self._learnt(buyer, ticket, "snapshot", now())
                return
            await asyncio.wait([told, opened.closed], timeout=self.args.phase_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if told.done():
                at, ticket = told.result()
                self._learnt(buyer, ticket, "socket", at)
            else:
                self.sale.socket_failures["closed or timed out before an answer"] += 1
        finally:
            self.client_ports.discard(client_port)
            opened.close()

    async def poll(self, buyer: Buyer, queue: Client) -> None:
        variables = {"id": str(self.sale.event_id)}
        deadline = now() + self.args.phase_timeout
        while now() < deadline:
            await asyncio.sleep(self.args.poll_seconds * self.rng.uniform(0.5, 1.5))
            out = await queue.op(MY_TICKET, variables, "myQueueTicket", buyer.token)
            if busy_for(out) is not None:
                self.sale.polls_busy += 1
            elif out.ok and out.payload and out.payload["status"] in TERMINAL:
                self._learnt(buyer, out.payload, "poll", now())
                return

    # --- the sale -----------------------------------------------------------------------

    async def sample_sockets(self, pids: list[int]) -> None:
        """The peak of the subscribers' connections held by each worker, sampled every second."""
        while True:
            counts = await asyncio.to_thread(held_per_worker, pids, self.port, set(self.client_ports))
            if sum(counts) > sum(self.sale.peak_per_worker):
                self.sale.peak_per_worker = counts
            await asyncio.sleep(1)

    async def run(self) -> None:
        args = self.args
        self.db = await asyncpg.connect(harness.ASYNCPG_DSN)
        self.log(f"writing {args.buyers} buyers and signing their tokens")
        buyers = self.sale.buyers = await self.buyers()
        await self.db.execute("VACUUM (ANALYZE)")  # this PostgreSQL runs with autovacuum off
        async with Client(self.server.base_url, args.connections, timeout=args.phase_timeout) as queue, \
                Client(self.server.base_url, args.shop_connections, timeout=args.phase_timeout) as shop:
            login = await shop.op(LOGIN, {"input": {"email": harness.ADMIN_EMAIL,
                                                    "password": harness.ADMIN_PASSWORD}}, "login")
            if not login.ok:
                raise RuntimeError(f"admin login failed: {login}")
            await asyncio.gather(queue.warm(min(args.connections, 200)), shop.warm())
            # Created last, so that salesStartAt falls --early-seconds into the joins.
            self.sale.event_id = await self.event(shop, login.payload["accessToken"])
            messages = QueueMessages(self.sale)
            await messages.start()
            # The supervisor's children, less multiprocessing's resource tracker.
            workers = [pid for pid in worker_pids(self.server.pid, args.workers)
                       if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
            sampler = asyncio.create_task(self.sample_sockets(workers))
            self.log(f"event {self.sale.event_id}: {args.places} places, {args.buyers} buyers joining over "
                     f"{args.join_seconds:.0f} s, sales start after {args.early_seconds:.0f} s")
            started = now()
            self.meter.start(await harness.pg_pids(self.db))
            tasks = []
            start = now() + 0.02
            for i, buyer in enumerate(buyers):
                intended = start + i * args.join_seconds / len(buyers)
                if (delay := intended - now()) > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.buyer(buyer, intended, queue, shop)))
            done, pending = await asyncio.wait(tasks, timeout=args.phase_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.cpu.append((f"on-sale {args.buyers} buyers", self.meter.stop(await harness.pg_pids(self.db))))
        elapsed = now() - started
        sampler.cancel()
        await messages.stop()
        for task in done:
            if task.exception() is not None:
                self.faults.append(f"a buyer failed: {task.exception()!r}")
                break
        self.log(f"sale over in {elapsed:.1f} s")
        await self.summarise(elapsed)
        await self.db.close()

    # --- report -------------------------------------------------------------------------

    async def truth(self) -> dict[str, Any]:
        """What the database says: inventory, bookings, queue tickets, order and timing."""
        assert self.db is not None
        event_id = self.sale.event_id
        row = await self.db.fetchrow("SELECT capacity, available, status FROM events WHERE id = $1", event_id)
        bookings = await self.db.fetchrow(
            "SELECT coalesce(sum(quantity) FILTER (WHERE status IN ('PENDING', 'CONFIRMED')), 0) AS taken, "
            "count(*) FILTER (WHERE status = 'CONFIRMED') AS confirmed, "
            "extract(epoch FROM max(created_at) FILTER (WHERE status IN ('PENDING', 'CONFIRMED'))"
            " - (SELECT sales_start_at FROM events WHERE id = $1)) AS sold_out_after "
            "FROM bookings WHERE event_id = $1", event_id)
        # A booking made without an admission that was already there when it was made.
        unadmitted = await self.db.fetchval(
            "SELECT count(*) FROM bookings b WHERE b.event_id = $1 AND NOT EXISTS ("
            "SELECT 1 FROM queue_tickets q WHERE q.event_id = b.event_id AND q.user_id = b.user_id "
            "AND q.admitted_at IS NOT NULL AND q.admitted_at <= b.created_at)", event_id)
        tickets = {r["status"]: r["n"] for r in await self.db.fetch(
            "SELECT status, count(*) AS n FROM queue_tickets WHERE event_id = $1 GROUP BY status", event_id)}
        order = await self.db.fetchrow(
            "SELECT count(*) FILTER (WHERE rank < $2) AS early, "
            "max(admitted_at) FILTER (WHERE rank < $2) AS early_last, "
            "min(admitted_at) FILTER (WHERE rank >= $2) AS late_first, "
            "count(*) FILTER (WHERE rank < $2 AND admitted_at IS NULL) AS early_never, "
            "count(*) FILTER (WHERE rank >= $2 AND admitted_at IS NOT NULL) AS late_admitted, "
            "count(admitted_at) AS admitted, "
            "extract(epoch FROM min(admitted_at) - (SELECT sales_start_at FROM events WHERE id = $1)) AS first_after, "
            "extract(epoch FROM max(admitted_at) - min(admitted_at)) AS admitting_s "
            "FROM queue_tickets WHERE event_id = $1", event_id, LATE_RANK)
        # Early joiners (random ranks) come before late ones, but a join's rank is fixed at its
        # start: one that began before salesStartAt and committed late can still come after.
        early_after_late = await self.db.fetchval(
            "SELECT count(*) FROM queue_tickets WHERE event_id = $1 AND rank < $2 AND admitted_at > $3",
            event_id, LATE_RANK, order["late_first"]) if order["late_first"] is not None else 0
        taken = int(bookings["taken"])
        return {"capacity": row["capacity"], "available": row["available"], "status": row["status"],
                "taken": taken, "oversold": max(0, taken - row["capacity"]),
                "consistent": taken == row["capacity"] - row["available"], "confirmed": bookings["confirmed"],
                "sold_out_after_s": float(bookings["sold_out_after"] or "nan"),
                "unadmitted_bookings": unadmitted, "tickets": tickets, "early_joiners": order["early"],
                "admitted": order["admitted"], "first_admission_after_s": float(order["first_after"] or "nan"),
                "admitting_s": float(order["admitting_s"] or 0), "early_admitted_after_a_late": early_after_late}

    async def summarise(self, elapsed: float) -> None:
        args, sale = self.args, self.sale
        buyers = sale.buyers
        db = await self.truth()
        self.data["db"] = db
        outcomes = Counter(b.outcome for b in buyers)
        self.data["outcomes"] = dict(outcomes)
        joins = [b.join_s for b in buyers if b.join_s is not None]
        join_faults = sum(n for o, n in outcomes.items() if o.startswith("joinQueue"))
        self.rows.append(Row(
            f"joinQueue: {args.buyers} over {args.join_seconds:.0f} s", f"{len(joins) - join_faults} ok",
            len(joins) / args.join_seconds, Summary.of(joins),
            f"open loop, from the intended send (retries included); {db['early_joiners']} joined before "
            f"salesStartAt (random order), {len(joins) - db['early_joiners']} after; {sale.join_retries} "
            f"RATE_LIMITED retries (room busy); {sale.polls_busy} polls told RATE_LIMITED"))

        sockets = [b for b in buyers if b.via == "socket" and b.told == "ADMITTED" and b.admitted_at is not None]
        from_admission = Summary.of(b.told_at - b.admitted_at for b in sockets if b.admitted_at is not None)
        from_publish = Summary.of(b.told_at - sale.published[b.user_id] for b in sockets
                                  if b.user_id in sale.published)
        with_socket = sum(b.socket for b in buyers)
        per_socket = [b.messages for b in buyers if b.via == "socket"]
        snapshots = sum(b.via == "snapshot" for b in buyers)
        self.rows.append(Row(
            "queueStatus: ADMITTED pushed to the socket", f"{len(sockets)} pushed", None,
            from_admission, f"from the admission time (admittedUntil - admissionSeconds); "
            f"{with_socket} sockets ({snapshots} already admitted or sold out when subscribed), "
            f"failures {dict(sale.socket_failures) or 0}; "
            f"{sum(per_socket) / max(1, len(per_socket)):.1f} messages each after the first"))
        self.rows.append(Row("queueStatus: ADMITTED, from the Redis message", "", None, from_publish,
                             "from the admission message's arrival here (after the admitter's commit)"))
        sold_out_told = [b.told_at - sale.sold_out_published for b in buyers
                         if b.via == "socket" and b.told == "SOLD_OUT" and sale.sold_out_published is not None]
        self.rows.append(Row("queueStatus: SOLD_OUT reaches the socket", f"{len(sold_out_told)} told", None,
                             Summary.of(sold_out_told), "from the sold-out message's arrival here"))
        polled = [b.told_at - b.admitted_at for b in buyers
                  if b.via == "poll" and b.told == "ADMITTED" and b.admitted_at is not None]
        self.rows.append(Row("myQueueTicket polls: ADMITTED noticed", f"{len(polled)} admitted by polling", None,
                             Summary.of(polled), f"from the admission time; a poll every {args.poll_seconds:.0f} s "
                             "+-50% (the poll period bounds it)"))

        reserves = Summary.of(b.reserve_s for b in buyers if b.reserve_s is not None)
        self.rows.append(Row(
            "reserveSeats by admitted buyers", f"{outcomes['bought']} bought, "
            f"{outcomes['admitted, refused SOLD_OUT']} SOLD_OUT", None, reserves,
            f"admitting {args.admit_per_minute}/min ({args.admit_per_minute / 60:.0f}/s)"))
        self.rows.append(Row("confirmBooking", f"{db['confirmed']} confirmed", None,
                             Summary.of(b.confirm_s for b in buyers if b.confirm_s is not None), "tok_visa"))
        rate = (db["admitted"] - 1) / db["admitting_s"] * 60 if db["admitting_s"] > 0 else float("nan")
        self.rows.append(Row(
            "sale: salesStartAt -> sold out", f"{db['sold_out_after_s']:.1f} s", None, None,
            f"last sale's booking time; first admission {db['first_admission_after_s']:.1f} s after the start; "
            f"{db['admitted']} admitted at {rate:.0f}/min (room {args.admit_per_minute}/min)"))
        peak = sale.peak_per_worker or [0]
        self.rows.append(Row("queueStatus subscriptions held per worker", " / ".join(map(str, peak)), None, None,
                             f"peak, {args.workers} workers, counted from /proc"))
        self.rows.append(Row("outcomes", "", None, None, ", ".join(f"{o} {n}" for o, n in outcomes.most_common())))
        self.rows.append(Row(
            "database truth", f"{db['taken']} sold of {db['capacity']}, oversold {db['oversold']}", None, None,
            f"bookings without a prior admission {db['unadmitted_bookings']}; early joiners admitted after a "
            f"late one {db['early_admitted_after_a_late']} (joins that committed late); tickets {db['tickets']}"))
        self.data.update(peak_per_worker=peak, elapsed_s=elapsed, socket_failures=dict(sale.socket_failures),
                         rows={r.scenario: r.latency.as_dict() for r in self.rows if r.latency})

        if db["taken"] != db["capacity"] or db["oversold"] or not db["consistent"]:
            self.problems.append(f"inventory: {db['taken']} sold of {db['capacity']}, available {db['available']}")
        if db["unadmitted_bookings"]:
            self.problems.append(f"{db['unadmitted_bookings']} bookings by buyers not admitted from the queue")
        stray = {o: n for o, n in outcomes.items() if o not in (
            "bought", "admitted, refused SOLD_OUT", "told SOLD_OUT (socket)", "told SOLD_OUT (snapshot)",
            "told SOLD_OUT (poll)", "told SOLD_OUT (join)")}
        if stray:
            self.faults.append(f"buyers without a real answer: {stray}")
        self.targets += [
            ("reserve p99 <= 150 ms for admitted buyers", reserves.p99 <= 150, f"{fmt_ms(reserves.p99)} ms"),
            ("every buyer answered: bought, SOLD_OUT from the reserve or told SOLD_OUT by the queue",
             not stray, str(stray or "all")),
            ("sold == capacity, none oversold, every booking admitted from the queue", not self.problems,
             f"{db['taken']}/{db['capacity']}, unadmitted {db['unadmitted_bookings']}"),
        ]

    def render(self, total: float) -> str:
        lines = [*table_lines([TABLE_HEADER, *(row_cells(row) for row in self.rows)]), "", *cpu_lines(self.cpu), "",
                 "targets:"]
        lines += [f"  {'met   ' if met else 'MISSED'}  {name}: {value}" for name, met, value in self.targets]
        lines.append("")
        lines += ["CORRECTNESS PROBLEMS:", *(f"  - {p}" for p in self.problems)] if self.problems else [
            "correctness: sold == capacity, none oversold, every booking by an admitted buyer"]
        lines += ["FAULTS:", *(f"  - {f}" for f in self.faults)] if self.faults else ["faults: none"]
        a = self.args
        lines.append(f"{a.buyers} buyers, {a.places} places, {a.subscribers} sockets, workers {a.workers}, "
                     f"admission every {a.admission_interval} s; {'quick' if a.quick else 'full'} run in {total:.0f} s")
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.onsale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 buyers, 400 places, 2,000 sockets (~2 minutes)")
    parser.add_argument("--buyers", type=int, help="buyers (20,000; quick 4,000)")
    parser.add_argument("--places", type=int, help="places on sale (2,000; quick 400)")
    parser.add_argument("--subscribers", type=int, help="buyers waiting on a websocket (5,000; quick 2,000)")
    parser.add_argument("--join-seconds", type=float, default=10, help="joins spread over this long (10)")
    parser.add_argument("--early-seconds", type=float, default=3, help="salesStartAt this long after the first join")
    parser.add_argument("--admit-per-minute", type=int, default=6000, help="the waiting room's rate (6,000)")
    parser.add_argument("--admission-seconds", type=int, default=300, help="how long an admission lasts (300)")
    parser.add_argument("--admission-interval", type=float, default=0.5, help="ADMISSION_INTERVAL_SECONDS (0.5)")
    parser.add_argument("--poll-seconds", type=float, help="myQueueTicket poll period of buyers without a socket "
                                                           "(20; quick 10)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (2)")
    parser.add_argument("--connections", type=int, default=400, help="client connections for joins and polls")
    parser.add_argument("--shop-connections", type=int, default=100, help="client connections for reserve/confirm")
    parser.add_argument("--phase-timeout", type=float, help="bound on the sale (600; quick 300)")
    parser.add_argument("--json", default=str(harness.REPO_ROOT / "bench" / "results" / "onsale.json"),
                        help="where to write the raw figures ('' for nowhere)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.buyers = args.buyers or (4000 if quick else 20_000)
    args.places = args.places or (400 if quick else 2000)
    args.subscribers = args.subscribers if args.subscribers is not None else (2000 if quick else 5000)
    args.poll_seconds = args.poll_seconds or (10.0 if quick else 20.0)
    args.phase_timeout = args.phase_timeout or (300.0 if quick else 600.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = now()
    env = harness.server_env(harness.free_port(), args.workers)
    env.update({
        "ADMISSION_INTERVAL_SECONDS": str(args.admission_interval),
        # One client address holds every buyer's joins.
        "QUEUE_JOIN_RATE_LIMIT_PER_MINUTE": "1000000",
        "QUEUE_JOIN_IP_RATE_LIMIT_PER_MINUTE": "1000000",
    })
    print(f"[{time.strftime('%H:%M:%S')}] creating database {harness.DB_NAME}, migrating", file=sys.stderr)
    harness.prepare(env)
    server = harness.Server(env)
    server.stop_on_signals()
    try:
        server.start()
        asyncio.run(server.wait_ready())

        async def go() -> OnSale:
            bench = OnSale(args, server)
            try:
                await bench.run()
            finally:
                if bench.db is not None and not bench.db.is_closed():
                    await bench.db.close()
            return bench

        bench = asyncio.run(go())
    finally:
        server.stop()
    problems = server.log_problems()
    if problems:
        bench.faults.append(f"server log has {len(problems)} error lines, e.g. {problems[0][:200]} "
                            f"(see {server.log_path})")
    print(bench.render(now() - started))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"args": vars(args), "rows": [
            {"scenario": r.scenario, "result": r.result, "notes": r.notes,
             "latency_ms": r.latency.as_dict() if r.latency else None} for r in bench.rows],
            "cpu": bench.cpu, "targets": bench.targets, "problems": bench.problems, "faults": bench.faults,
            "data": bench.data}, indent=2, default=str))
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
