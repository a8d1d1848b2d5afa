"""Past one machine (issue #18): the service on the engines that scale it out, each started
here on a free port: PgBouncer in transaction pooling between the app and PostgreSQL, a
Redis Cluster for pub/sub, and HAProxy (deploy/haproxy.cfg) in front of three instances that
drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.exceptions import ConnectionClosed

from app.services import outbox
from app.services.ratelimit import RedisRateLimiter
from app.settings import Settings
from tests import test_batching, test_concurrency
from tests.conftest import POSTGRES_ADMIN_URL, POSTGRES_DB, REDIS_PREFIX, GraphQLClient, base_settings
from tests.factories import make_event, make_users, token_for
from tests.servers import (
    MESSAGE_TIMEOUT,
    AppProcess,
    HAProxyProcess,
    PgBouncerProcess,
    RedisClusterProcesses,
    app_processes,
    http_client,
    subscribe,
)
from tests.test_realtime import AVAILABILITY, reserve


@pytest.fixture(scope="session")
async def pgbouncer(postgres_database: str,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PgBouncerProcess]:
    admin = urlsplit(POSTGRES_ADMIN_URL)
    # Fewer server connections than the tests' pools hold client ones: transactions share them.
    bouncer = PgBouncerProcess(tmp_path_factory.mktemp("pgbouncer"), postgres_host=admin.hostname or "127.0.0.1",
                               postgres_port=admin.port or 5432, pool_size=8)
    await bouncer.start()
    yield bouncer
    await bouncer.stop()


# --- PgBouncer: the concurrency suite's core races through it -------------------------------

@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def database_url(pgbouncer: PgBouncerProcess) -> str:
    return pgbouncer.url(POSTGRES_DB)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return base_settings(database_url=database_url, db_pgbouncer=True)


# The same tests, collected here, so they take this module's fixtures: their sessions go
# through PgBouncer, and their truth is still read from the database.
test_25_buyers_of_2_places_against_100_all_succeed = \
    test_concurrency.test_25_buyers_of_2_places_against_100_all_succeed
test_1000_buyers_against_300_places_sell_exactly_300 = \
    test_concurrency.test_1000_buyers_against_300_places_sell_exactly_300
test_200_best_available_buyers_get_different_seats = test_concurrency.test_200_best_available_buyers_get_different_seats
test_50_buyers_racing_for_one_seat = test_concurrency.test_50_buyers_racing_for_one_seat
test_one_idempotency_key_raced_has_one_effect = test_concurrency.test_one_idempotency_key_raced_has_one_effect
test_confirm_racing_cancel_and_double_confirm_charge_once = \
    test_concurrency.test_confirm_racing_cancel_and_double_confirm_charge_once
test_buyers_that_arrive_together_share_one_transaction_and_one_message = \
    test_batching.test_buyers_that_arrive_together_share_one_transaction_and_one_message
test_mixed_quantities_racing_for_the_last_places_never_oversell_nor_refuse_a_fit = \
    test_batching.test_mixed_quantities_racing_for_the_last_places_never_oversell_nor_refuse_a_fit
test_a_batch_whose_transaction_fails_fails_every_buyer_and_leaves_nothing = \
    test_batching.test_a_batch_whose_transaction_fails_fails_every_buyer_and_leaves_nothing
batcher = test_batching.batcher
published = test_batching.published


# --- many instances behind HAProxy, draining on SIGTERM ------------------------------------

async def websockets_open(server: AppProcess) -> float:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        text = (await http.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("bookmyevent_websocket_connections"))


class Booker:
    """Reserves one place at a time through the balancer, each for another buyer, until
    stopped: every answer must be a booking."""

    def __init__(self, gql: GraphQLClient, tokens: list[str], event_id: int) -> None:
        self.gql, self.tokens, self.event_id = gql, tokens, event_id
        self.booked = 0
        self.failures: list[Any] = []
        self.stopping = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for token in self.tokens:
            if self.stopping:
                return
            try:
                payload = await reserve(self.gql, token, self.event_id, quantity=1)
            except Exception as error:  # an HTTP error through the balancer: booking stopped
                self.failures.append(error)
            else:
                if payload["errors"]:
                    self.failures.append(payload["errors"])
                else:
                    self.booked += 1
            await asyncio.sleep(0.2)

    async def stop(self) -> int:
        self.stopping = True  # the reserve under way finishes: its answer is counted
        await self.task
        assert self.failures == []
        return self.booked


async def test_a_subscriber_behind_haproxy_keeps_receiving_while_its_instance_drains_and_stops(
        pgbouncer: PgBouncerProcess, redis_url: str, settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    event = await make_event(sessionmaker, capacity=500)
    users = await make_users(sessionmaker, 300)
    # The whole path: HAProxy, three instances, PgBouncer, PostgreSQL; Redis between instances.
    env = {"DB_PGBOUNCER": "1", "TRUSTED_PROXIES": "127.0.0.1",
           "DRAIN_SECONDS": "8"}  # well past HAProxy's 2-3 s to mark an instance down
    async with app_processes(3, database_url=pgbouncer.url(POSTGRES_DB), redis_url=redis_url,
                             log_dir=tmp_path, env=env) as servers:
        balancer = HAProxyProcess(servers, tmp_path / "haproxy.log")
        await balancer.start()
        try:
            async with http_client(balancer.http_url) as gql:
                booker = Booker(gql, [token_for(user, settings) for user in users], event.id)
                async with subscribe(balancer.ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:
                    assert (await sub.next())["eventAvailability"]["snapshot"] is True
                    [victim] = [server for server in servers if await websockets_open(server) == 1]
                    assert victim.process is not None
                    victim.process.send_signal(signal.SIGTERM)
                    async with httpx.AsyncClient(base_url=victim.http_url) as http:
                        async with asyncio.timeout(MESSAGE_TIMEOUT):
                            while (answer := await http.get("/readyz")).status_code == 200:
                                await asyncio.sleep(0.05)
                        assert (answer.status_code, answer.json()) == (503, {"status": "draining"})
                    # Draining: the subscriber still gets changes booked through the others,
                    # until its instance closes the websocket with 1012 (service restart).
                    updates = 0
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            update = (await sub.next(timeout=MESSAGE_TIMEOUT + 8))["eventAvailability"]
                            assert update["snapshot"] is False
                            updates += 1
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
                    assert updates > 0
                await asyncio.to_thread(victim.process.wait, MESSAGE_TIMEOUT)
                # The client reconnects through the balancer: another instance, a snapshot, then
                # the changes that follow.
                async with subscribe(balancer.ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:
                    snapshot = (await sub.next())["eventAvailability"]
                    assert snapshot["snapshot"] is True
                    update = (await sub.next())["eventAvailability"]
                    assert (update["snapshot"], update["version"] > snapshot["version"]) == (False, True)
                booked = await booker.stop()
        finally:
            await balancer.stop()
    assert await test_concurrency.assert_inventory_truth(sessionmaker, event.id) == booked > 0


# --- Redis Cluster: sharded pub/sub between instances, a shard restart survived -------------

@pytest.fixture
async def redis_cluster(tmp_path: Path) -> AsyncIterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


async def test_rate_limits_count_on_every_shard_of_a_cluster(redis_cluster: RedisClusterProcesses) -> None:
    limiter = RedisRateLimiter(redis_cluster.url, prefix=REDIS_PREFIX, cluster=True)
    try:
        callers = [f"caller-{i}" for i in range(30)]  # their counters spread over the three shards
        # One loop turn, so one pipeline that the cluster client splits by shard.
        answers = await asyncio.gather(*(limiter.hit([(caller, 2), ("everyone", 1000)], window_seconds=60)
                                         for caller in callers for _ in range(3)))
        assert [answer is None for answer in answers] == [True, True, False] * 30
        # The refused calls took their counts back: everyone's counter is at 60 exactly.
        assert await limiter.hit([("everyone", 61)], window_seconds=60) is None
        assert await limiter.hit([("everyone", 61)], window_seconds=60) is not None
    finally:
        await limiter.close()


async def test_redis_cluster_carries_changes_between_instances_and_a_restarted_shard_resynchronises(
        pgbouncer: PgBouncerProcess, redis_cluster: RedisClusterProcesses, settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    event = await make_event(sessionmaker, capacity=10)
    tokens = [token_for(user, settings) for user in await make_users(sessionmaker, 4)]
    async with app_processes(2, database_url=pgbouncer.url(POSTGRES_DB), redis_url=redis_cluster.url, log_dir=tmp_path,
                             env={"DB_PGBOUNCER": "1", "REDIS_CLUSTER": "1"}) as [a, b], \
            http_client(b.http_url) as gql_b, \
            subscribe(a.ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:

        async def state() -> tuple[bool, int, int]:
            update = (await sub.next())["eventAvailability"]
            return update["snapshot"], update["availableSeats"], update["version"] - event.version

        async def book(token: str) -> None:
            assert (await reserve(gql_b, token, event.id, quantity=1))["errors"] == []

        assert await state() == (True, 10, 0)
        await book(tokens[0])  # on B, seen on A: through the shard that owns the channel
        assert await state() == (False, 9, 1)

        shard = redis_cluster.owner_of(f"{REDIS_PREFIX}{outbox.availability_channel(event.id)}")
        await shard.kill()
        await book(tokens[1])  # booking goes on; the change cannot be published
        await book(tokens[2])
        await shard.start()  # same port, same cluster config: it serves its slots again
        # A's listener subscribes again on the shard, and its subscriber gets a snapshot.
        assert await state() == (True, 7, 3)
        await book(tokens[3])
        assert await state() == (False, 6, 4)


async def test_a_failed_over_shard_hands_its_channels_to_the_promoted_replica(
        pgbouncer: PgBouncerProcess, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
        tmp_path: Path) -> None:
    event = await make_event(sessionmaker, capacity=10)
    tokens = [token_for(user, settings) for user in await make_users(sessionmaker, 3)]
    cluster = RedisClusterProcesses(tmp_path, replicas=1)
    try:
        await cluster.start()
        async with app_processes(2, database_url=pgbouncer.url(POSTGRES_DB), redis_url=cluster.url,
                                 log_dir=tmp_path, env={"DB_PGBOUNCER": "1", "REDIS_CLUSTER": "1"}) as [a, b], \
                http_client(b.http_url) as gql_b, \
                subscribe(a.ws_url, AVAILABILITY, {"id": str(event.id)}) as sub:

            async def state() -> tuple[bool, int]:
                update = (await sub.next())["eventAvailability"]
                return update["snapshot"], update["availableSeats"]

            async def book(token: str) -> None:
                assert (await reserve(gql_b, token, event.id, quantity=1))["errors"] == []

            assert await state() == (True, 10)
            await book(tokens[0])
            assert await state() == (False, 9)

            channel = f"{REDIS_PREFIX}{outbox.availability_channel(event.id)}"
            master = cluster.owner_of(channel)
            await master.kill()  # for good: its replica takes over its slots
            await book(tokens[1])
            async with asyncio.timeout(MESSAGE_TIMEOUT):  # the replica notices, is elected, takes the slots
                while cluster.owner_of(channel) is master:
                    await asyncio.sleep(0.1)
            # A's listener finds the channel on the promoted replica and resynchronises: a
            # snapshot (the change made meanwhile maybe announced as well, if B published it
            # to the new master after A subscribed there).
            seen = [await state()]
            while seen[-1][1] != 8:
                seen.append(await state())
            assert any(snapshot for snapshot, _ in seen), seen
            await book(tokens[2])
            assert await state() == (False, 7)
            # Nothing of A's is left on the dead node: A is ready again.
            async with httpx.AsyncClient(base_url=a.http_url) as http:
                async with asyncio.timeout(MESSAGE_TIMEOUT):
                    while (await http.get("/readyz")).status_code != 200:
                        await asyncio.sleep(0.1)
    finally:
        await cluster.stop()
