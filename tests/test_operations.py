"""What operators rely on: health, metrics, request ids, masked errors, body limits, sales."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.logs import JsonFormatter, RequestIdFilter, request_id
from app.models import Role
from app.services import catalogue
from app.settings import Settings
from app.web import YOUNG_OBJECTS_PER_COLLECTION
from tests.conftest import GraphQLClient, free_port, running_app
from tests.factories import make_event, make_user, token_for
from tests.servers import MESSAGE_TIMEOUT, STARTUP_TIMEOUT, AppProcess
from tests.test_bookings import Buyer


async def test_health_and_readiness(gql: GraphQLClient) -> None:
    assert (await gql.http.get("/healthz")).json() == {"status": "ok"}
    ready = await gql.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


async def test_a_worker_collects_young_garbage_less_often_than_pythons_default(gql: GraphQLClient) -> None:
    # Set at startup: at the default of 700, concurrent requests kept the collector busy.
    assert gc.get_threshold()[0] == YOUNG_OBJECTS_PER_COLLECTION > 700


async def test_readiness_reports_an_unreachable_redis(settings: Settings, engine: AsyncEngine) -> None:
    # The app starts without Redis (publishing and limits degrade); readiness tells the truth.
    broken = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_app(broken) as (_, gql):
        ready = await gql.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"].startswith("unavailable")


async def test_metrics_count_outcomes_by_error_code(gql: GraphQLClient, settings: Settings,
                                                    sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = (await gql.http.get("/metrics")).text
    event = await make_event(sessionmaker, capacity=1)
    buyer = Buyer(gql, token_for(await make_user(sessionmaker), settings))
    await buyer.reserve(event.id, quantity=1)
    await buyer.reserve(event.id, quantity=1)
    after = (await gql.http.get("/metrics")).text
    for outcome in ("ok", "SOLD_OUT"):
        labels = {"mutation": "reserveSeats", "outcome": outcome}
        assert sample(after, "bookmyevent_mutations_total", **labels) == \
            sample(before, "bookmyevent_mutations_total", **labels) + 1
    assert sample(after, "bookmyevent_operation_seconds_count", operation="reserveSeats") >= 2


async def test_request_ids_are_returned_and_in_masked_errors(
        gql: GraphQLClient, monkeypatch: pytest.MonkeyPatch) -> None:
    response = await gql.http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    made_up = (await gql.http.get("/healthz", headers={"X-Request-ID": "bad id\n"})).headers["x-request-id"]
    assert made_up != "bad id\n" and len(made_up) == 16

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("connection to secret-db.internal:5432 refused")

    monkeypatch.setattr(catalogue, "list_events", broken)
    response = await gql.http.post("/graphql", json={"query": "{ events { totalCount } }"})
    body = response.text
    assert "secret-db" not in body and "RuntimeError" not in body and "Traceback" not in body
    [error] = response.json()["errors"]
    assert error["message"] == f"Internal server error (request id {response.headers['x-request-id']})"
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"


def test_json_logs_carry_the_request_id() -> None:
    record = logging.LogRecord("app", logging.ERROR, __file__, 1, "boom %s", ("now",), None)
    token = request_id.set("req-42")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["request_id"], line["level"]) == ("boom now", "req-42", "ERROR")


async def test_oversized_bodies_are_refused(gql: GraphQLClient) -> None:
    huge = {"query": "{ __typename }", "variables": {"padding": "x" * 300_000}}
    assert (await gql.http.post("/graphql", json=huge)).status_code == 413


async def test_event_sales_for_admins(gql: GraphQLClient, settings: Settings,
                                      sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    event = await make_event(sessionmaker, capacity=10, price_cents=1000)
    buyer = Buyer(gql, token_for(await make_user(sessionmaker), settings))
    admin = token_for(await make_user(sessionmaker, role=Role.ADMIN), settings)
    paid = (await buyer.reserve(event.id, quantity=3))["booking"]
    await buyer.confirm(paid["id"])
    await buyer.reserve(event.id, quantity=2)
    dropped = (await buyer.reserve(event.id, quantity=1))["booking"]
    await buyer.cancel(dropped["id"])
    query = """query($id: ID!) { eventSales(eventId: $id) { capacity placesSold placesHeld placesFree
      revenueCents currency holdsCreated holdsConfirmed conversionRate cancellations expiredHolds
      waitlistLength } }"""
    sales = (await gql(query, {"id": str(event.id)}, admin))["eventSales"]
    assert sales == {"capacity": 10, "placesSold": 3, "placesHeld": 2, "placesFree": 5, "revenueCents": 3000,
                     "currency": "USD", "holdsCreated": 3, "holdsConfirmed": 1, "conversionRate": 1 / 3,
                     "cancellations": 1, "expiredHolds": 0, "waitlistLength": 0}
    refused = await gql.raw(query, {"id": str(event.id)}, buyer.token)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def tcp_sockets_of(pid: int, port: int) -> dict[str, int]:
    """The process's TCP sockets on local `port` (IPv4), counted by state: LISTEN, ESTABLISHED..."""
    names = {"01": "ESTABLISHED", "0A": "LISTEN"}
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    counts: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[9] in inodes:
            state = names.get(fields[3], fields[3])
            counts[state] = counts.get(state, 0) + 1
    return counts


async def test_each_worker_accepts_on_its_own_socket_and_new_connections_spread_evenly(
        postgres_database: str, redis_url: str, tmp_path: Path) -> None:
    """app/workers.py: with one shared listening socket, whichever worker was idle took a burst
    of new connections (up to two thirds of 2,000 on one of two workers). Each worker listens
    on a socket of its own (SO_REUSEPORT) and the kernel spreads connections by address hash."""
    server = AppProcess(database_url=postgres_database, redis_url=redis_url, log_path=tmp_path / "server.log",
                        env={"WORKERS": "2"})
    try:
        await server.start()
        assert server.process is not None
        supervisor = server.process.pid

        def workers() -> list[int]:
            return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
                    if _parent_of(stat) == supervisor and tcp_sockets_of(int(stat.parent.name), server.port)]

        async with asyncio.timeout(STARTUP_TIMEOUT):  # the second worker may still be starting
            while len(workers()) < 2:
                await asyncio.sleep(0.1)
        assert [tcp_sockets_of(pid, server.port).get("LISTEN") for pid in workers()] == [1, 1]
        assert "LISTEN" not in tcp_sockets_of(supervisor, server.port)  # bound only, to hold the port
        connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]
        try:
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                while sum(tcp_sockets_of(pid, server.port).get("ESTABLISHED", 0) for pid in workers()) < 200:
                    await asyncio.sleep(0.05)
            shares = sorted(tcp_sockets_of(pid, server.port).get("ESTABLISHED", 0) for pid in workers())
            assert shares[0] >= 50, shares  # an even hash gives 100 each, give or take 7
        finally:
            for _, writer in connections:
                writer.close()
    finally:
        await server.stop()


def _parent_of(stat: Path) -> int | None:
    with contextlib.suppress(OSError):
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return None


async def test_metrics_add_up_every_worker(postgres_database: str, redis_url: str, tmp_path: Path) -> None:
    server = AppProcess(database_url=postgres_database, redis_url=redis_url, log_path=tmp_path / "server.log")
    server.env["WORKERS"] = "2"

    async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
        text = (await http.get("/metrics")).text
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "bookmyevent_workers":
                    samples["workers"] = sample.value
                elif sample.name == "bookmyevent_mutations_total" and sample.labels["mutation"] == "login":
                    samples["logins"] = samples.get("logins", 0) + sample.value
        return samples

    try:
        await server.start()
        async with httpx.AsyncClient(base_url=server.http_url, timeout=MESSAGE_TIMEOUT) as http:
            async with asyncio.timeout(STARTUP_TIMEOUT):  # the second worker may still be starting
                while (await scrape(http)).get("workers") != 2:
                    await asyncio.sleep(0.1)
        logins = 30
        for _ in range(logins):  # a connection each, so both workers answer some
            async with httpx.AsyncClient(base_url=server.http_url, timeout=MESSAGE_TIMEOUT) as http:
                await GraphQLClient(http).raw(
                    'mutation { login(input: {email: "nobody@example.com", password: "wrong"}) { accessToken } }')
        for _ in range(5):  # whichever worker answers, it reports the whole instance
            async with httpx.AsyncClient(base_url=server.http_url, timeout=MESSAGE_TIMEOUT) as http:
                assert await scrape(http) == {"workers": 2, "logins": logins}
    finally:
        await server.stop()
