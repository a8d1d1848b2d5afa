"""Publish/subscribe between instances, and fan-out to websocket subscribers in this process.

Shape (see DESIGN.md "Realtime"): per process, one `broadcaster` subscription per channel
feeds every local subscriber of that channel; each subscriber holds a latest-value slot,
not a queue, so a slow client skips to the newest state instead of growing a backlog.
Redis traffic grows with channels, not connections.

`broadcaster`'s own Redis backend delivers nothing with redis-py 8 and never reconnects,
so production uses `ReconnectingRedisBackend` below: it resubscribes after Redis comes
back and tells every channel to resynchronise (subscribers then send a fresh snapshot).
Publishing never fails a request: the commit already happened, and a missed message is
repaired by the snapshot that follows a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from broadcaster import Broadcast
from broadcaster._backends.base import BroadcastBackend
from broadcaster._base import Event as BroadcastEvent
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app import metrics

logger = logging.getLogger(__name__)

RESYNC = "__resync__"  # sent on every channel after the backend lost messages
Message = dict[str, Any]
Merge = Callable[[Message, Message], Message]
# (since, version) of a versioned message: it carries every change after `since` up to `version`.
Span = Callable[[Message], tuple[int, int]]


class ReconnectingRedisBackend(BroadcastBackend):
    """A broadcaster backend on redis.asyncio that survives Redis restarts."""

    def __init__(self, url: str, *, retry_seconds: float = 0.5) -> None:
        self._url = url
        self._retry_seconds = retry_seconds
        self._channels: set[str] = set()
        self._queue: asyncio.Queue[BroadcastEvent] = asyncio.Queue()
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        # After a Redis restart the pooled connection is dead, and redis-py does not retry by
        # default: one immediate retry on a fresh connection, or the first change after the
        # restart (subscribers have resynchronised already) would never reach anyone.
        self._publisher = aioredis.Redis.from_url(
            self._url, socket_timeout=2, socket_connect_timeout=2,
            retry=Retry(NoBackoff(), retries=1), retry_on_error=[RedisConnectionError])
        self._listener = asyncio.create_task(self._listen(), name="redis-pubsub-listener")

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._publisher.aclose()

    @property
    def listening(self) -> bool:
        return self._pubsub is not None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):  # the listener resubscribes on reconnect
                await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self._publisher.publish(channel, message)

    async def next_published(self) -> BroadcastEvent:
        return await self._queue.get()

    async def _listen(self) -> None:
        connected_before = False
        while True:
            # No silent reconnects inside redis-py (it would resubscribe by itself): a lost
            # connection must surface here, so that the channels resynchronise.
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=2, retry=Retry(NoBackoff(), retries=0))
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                # A dummy channel keeps the connection subscribed (and readable) while no
                # real channel is; real channels are (re)subscribed in one command.
                channels = set(self._channels)
                await pubsub.subscribe("bookmyevent:listener", *channels)
                self._pubsub = pubsub
                if added := self._channels - channels:  # subscribed while we were connecting
                    await pubsub.subscribe(*added)
                if connected_before:
                    logger.warning("Redis pub/sub reconnected; resynchronising %d channels",
                                   len(self._channels))
                connected_before = True
                # Channels subscribed while there was no connection (before the first one, or
                # since the last one dropped) may have missed messages: start them again from
                # a snapshot.
                for channel in list(self._channels):
                    self._queue.put_nowait(BroadcastEvent(channel, RESYNC))
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message["type"] == "message":
                        self._queue.put_nowait(BroadcastEvent(message["channel"].decode(),
                                                              message["data"].decode()))
            except (RedisError, OSError) as error:
                logger.warning("Redis pub/sub connection lost (%s); retrying", error)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(self._retry_seconds)


class _Shard:
    """One cluster node's pub/sub connection and the channels it owns."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.channels: set[str] = set()
        self.pubsub: Any = None  # set while connected and subscribed
        self.tried = asyncio.Event()  # the first connection attempt is over
        self.listener: asyncio.Task[None] | None = None

    async def connect(self) -> bool:
        """One attempt: a connection subscribed to every channel of this shard."""
        # No silent reconnects inside redis-py: a lost connection must surface, so that the
        # channels resynchronise (messages published meanwhile are gone).
        client = aioredis.Redis(host=self.host, port=self.port, socket_connect_timeout=2,
                                retry=Retry(NoBackoff(), retries=0))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.ping()  # connected even while no channel is subscribed
            subscribed: set[str] = set()
            while missing := self.channels - subscribed:  # channels may come while we subscribe
                for channel in missing:  # one command each: one SSUBSCRIBE takes one slot only
                    await pubsub.ssubscribe(channel)
                subscribed |= missing
        except (RedisError, OSError) as error:
            logger.warning("Redis shard %s:%d unreachable (%s)", self.host, self.port, error)
            await pubsub.aclose()
            await client.aclose()
            self.tried.set()
            return False
        self.pubsub = pubsub
        self.tried.set()
        return True

    async def disconnect(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await pubsub.connection_pool.disconnect()


class ShardedRedisBackend(BroadcastBackend):
    """A broadcaster backend on Redis Cluster (REDIS_CLUSTER=1; the URL names a seed node).

    Channels are sharded channels (SSUBSCRIBE/SPUBLISH): each lives on the shard that owns its
    hash slot, so an event's messages go to that one shard instead of every node of the
    cluster bus. One listening connection per shard that has channels of ours. A shard that
    drops it (restart, failover) is treated like a Redis restart in `ReconnectingRedisBackend`:
    after asking the cluster again who owns each of its channels (they may have moved), the
    channels are subscribed again and resynchronised."""

    def __init__(self, url: str, *, retry_seconds: float = 0.5) -> None:
        self._url = url
        self._retry_seconds = retry_seconds
        self._channels: set[str] = set()
        self._queue: asyncio.Queue[BroadcastEvent] = asyncio.Queue()
        self._shards: dict[str, _Shard] = {}  # by node name, host:port
        self._mapped = False  # the cluster's slots are known
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        # Publishing goes through the cluster client: it sends SPUBLISH to the channel's shard
        # and follows the cluster when slots move. One retry, as in ReconnectingRedisBackend.
        self._cluster = RedisCluster.from_url(
            self._url, socket_timeout=2, socket_connect_timeout=2,
            retry=Retry(NoBackoff(), retries=1), retry_on_error=[RedisConnectionError])
        self._spawn(self._map(), "redis-cluster-map")

    async def disconnect(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for shard in self._shards.values():
            await shard.disconnect()
        await self._cluster.aclose()

    @property
    def listening(self) -> bool:
        return self._mapped and all(shard.pubsub is not None for shard in self._shards.values())

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if self._mapped:
            await self._place(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        for shard in self._shards.values():
            if channel in shard.channels:
                shard.channels.discard(channel)
                if shard.pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await shard.pubsub.sunsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self._cluster.spublish(channel, message)

    async def next_published(self) -> BroadcastEvent:
        return await self._queue.get()

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _map(self) -> None:
        """Learn the cluster's slots (retrying while no node answers), then place the channels
        subscribed so far: they may have missed messages, so they resynchronise."""
        while True:
            try:
                await self._cluster.initialize()
                break
            except (RedisError, OSError) as error:
                logger.warning("Redis Cluster unreachable (%s); retrying", error)
                await asyncio.sleep(self._retry_seconds)
        self._mapped = True
        for channel in list(self._channels):
            await self._place(channel)
            self._queue.put_nowait(BroadcastEvent(channel, RESYNC))

    async def _place(self, channel: str) -> None:
        """Subscribe `channel` on the shard that owns it; returns once subscribed there, or once
        that shard has proved unreachable (its listener then resynchronises it later)."""
        node = self._cluster.get_node_from_key(channel)
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(node.host, node.port)
            shard.channels.add(channel)
            await shard.connect()
            shard.listener = self._spawn(self._listen(node.name, shard), f"redis-shard-{node.name}")
            return
        shard.channels.add(channel)
        await shard.tried.wait()
        if shard.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):  # the listener resubscribes on reconnect
                await shard.pubsub.ssubscribe(channel)

    async def _listen(self, name: str, shard: _Shard) -> None:
        while True:
            if shard.pubsub is not None:
                try:
                    while True:
                        message = await shard.pubsub.get_message(timeout=5.0)
                        if message is not None and message["type"] == "smessage":
                            self._queue.put_nowait(BroadcastEvent(message["channel"].decode(),
                                                                  message["data"].decode()))
                except (RedisError, OSError) as error:
                    logger.warning("Redis shard %s lost (%s); retrying", name, error)
                await shard.disconnect()
            await asyncio.sleep(self._retry_seconds)
            # Its slots may have gone to another node (a failover): ask the cluster again.
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.nodes_manager.initialize()
            moved = {channel for channel in shard.channels if self._cluster.get_node_from_key(channel).name != name}
            shard.channels -= moved
            for channel in moved:
                await self._place(channel)
                self._queue.put_nowait(BroadcastEvent(channel, RESYNC))
            if not shard.channels:  # nothing of ours lives there now: stop waiting for it
                del self._shards[name]
                return
            if await shard.connect():
                logger.warning("Redis shard %s reconnected; resynchronising %d channels", name, len(shard.channels))
                for channel in shard.channels:
                    self._queue.put_nowait(BroadcastEvent(channel, RESYNC))


class Delivery:
    """One message as every subscriber of a channel receives it. What subscribers derive from
    it (the GraphQL object, a rendered websocket frame) is cached here, so a change is turned
    into a message once per channel and per kind of subscriber, not once per subscriber."""

    __slots__ = ("derived", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.derived: dict[Any, Any] = {}

    def derive(self, key: Any, build: Callable[[], Any]) -> Any:
        try:
            return self.derived[key]
        except KeyError:
            value = self.derived[key] = build()
            return value


class Sequencer:
    """Puts one channel's versioned messages back in version order.

    Transactions commit in version order but publish after their commit, each on its own, so
    a later version may reach Redis first. A message that starts past the last version let
    through waits here, for at most `wait_seconds`, for the ones before it; then it goes
    anyway (the missing ones are lost: readers see the gap in `sinceVersion` and re-read).
    Messages already covered by what went out are dropped."""

    def __init__(self, span: Span, release: Callable[[Message], None], wait_seconds: float) -> None:
        self._span = span
        self._release = release
        self._wait_seconds = wait_seconds
        self._last: int | None = None  # newest version let through; None: not known yet
        self._parked: dict[int, Message] = {}  # by version, waiting for an earlier one
        self._timer: asyncio.TimerHandle | None = None

    def start_from(self, version: int) -> None:
        """A reader's snapshot shows `version`: if nothing has told where the channel stands
        yet, the next message to let through is the one after it. (Only then: a later
        snapshot must not skip what earlier readers still wait for.)"""
        if self._last is None:
            self._last = version
            self._drain()

    def push(self, message: Message) -> None:
        self._parked[self._span(message)[1]] = message
        self._drain()

    def reset(self) -> None:
        """Messages were lost: start again from the snapshots readers now take."""
        self.close()
        self._parked.clear()
        self._last = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drain(self) -> None:
        if self._last is not None:
            for version in sorted(self._parked):
                since = self._span(self._parked[version])[0]
                if version <= self._last:
                    del self._parked[version]
                elif since <= self._last:
                    self._last = version
                    self._release(self._parked.pop(version))
                else:
                    break  # a gap: wait for what fills it
        if not self._parked:
            self.close()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._wait_seconds, self._give_up)

    def _give_up(self) -> None:
        self._timer = None
        self._last = self._span(self._parked[min(self._parked)])[0]
        self._drain()


class Slot:
    """One subscriber's mailbox: the merged state of everything it has not read yet."""

    def __init__(self, merge: Merge, sequencer: Sequencer | None = None) -> None:
        self._merge = merge
        self._sequencer = sequencer
        self._pending: Delivery | None = None
        self._resync = False
        self._ready = asyncio.Event()
        self.coalesced = 0  # deliveries folded into a later one because the reader was behind

    def put(self, delivery: Delivery) -> None:
        if self._pending is None:
            self._pending = delivery  # shared with every other subscriber that keeps up
        else:
            self._pending = Delivery(self._merge(self._pending.message, delivery.message))
            self.coalesced += 1
            metrics.COALESCED_MESSAGES.inc()
        self._ready.set()

    def start_from(self, version: int) -> None:
        """This reader has read the state at `version` (see `Sequencer.start_from`)."""
        if self._sequencer is not None:
            self._sequencer.start_from(version)

    def resync(self) -> None:
        self._pending = None
        self._resync = True
        self._ready.set()

    async def next(self) -> Delivery | None:
        """The next merged delivery, or None when the subscriber must resend a snapshot."""
        # Look at the state, not at the event alone: a message put after a resync must still
        # be there on the call after the one that reports the resync.
        while self._pending is None and not self._resync:
            self._ready.clear()
            await self._ready.wait()
        if self._resync:
            self._resync = False
            return None
        delivery, self._pending = self._pending, None
        return delivery


@dataclass
class _Channel:
    merge: Merge
    sequencer: Sequencer | None = None  # versioned channels only
    slots: set[Slot] = field(default_factory=set)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    held: Message | None = None  # arrived during the coalescing window, merged
    window: asyncio.TimerHandle | None = None  # open from one delivery until the next may go

    def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.window is not None:
            self.window.cancel()
        if self.sequencer is not None:
            self.sequencer.close()


class Broker:
    """This process's connection to pub/sub: `memory://` in embedded mode, Redis otherwise.

    Changes of one channel reach its subscribers at most once per `coalesce_seconds`: the
    first change after a quiet spell goes out at once, the ones that follow within the
    window are merged and go out together when it closes. Under a flash sale a subscriber
    thus gets the latest state a few times a second instead of every change, and the work
    per change (building and rendering the message) is done once for the whole channel.
    Versioned channels are delivered in version order, whatever order publishers reached
    Redis in (`Sequencer`, waiting at most `reorder_seconds` for a missing version)."""

    def __init__(self, url: str, *, coalesce_seconds: float = 0.05, reorder_seconds: float = 1.0,
                 prefix: str = "", cluster: bool = False) -> None:
        self.url = url
        self._prefix = prefix  # on the wire only: callers name channels without it
        self.coalesce_seconds = coalesce_seconds
        self.reorder_seconds = reorder_seconds
        self._backend: ReconnectingRedisBackend | ShardedRedisBackend | None = None
        if url.startswith(("redis://", "rediss://")):
            self._backend = ShardedRedisBackend(url) if cluster else ReconnectingRedisBackend(url)
        self._broadcast = Broadcast(backend=self._backend) if self._backend else Broadcast(url)
        self._channels: dict[str, _Channel] = {}

    async def start(self) -> None:
        await self._broadcast.connect()

    async def stop(self) -> None:
        for channel in list(self._channels.values()):
            channel.close()
        await self._broadcast.disconnect()

    @property
    def listening(self) -> bool:
        """False while the Redis listener is (re)connecting: changes made meanwhile reach this
        process's subscribers only through the snapshot they get once it is back."""
        return self._backend is None or self._backend.listening

    @property
    def subscriber_count(self) -> int:
        return sum(len(channel.slots) for channel in self._channels.values())

    async def publish(self, channel: str, message: Message) -> None:
        try:
            await self._broadcast.publish(self._prefix + channel, json.dumps(message))
        except (RedisError, OSError) as error:
            logger.warning("Could not publish on %s (%s): subscribers resync on reconnect", channel, error)

    async def publish_all(self, messages: list[tuple[str, Message]]) -> None:
        for channel, message in messages:
            await self.publish(channel, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel_name: str, merge: Merge, span: Span | None = None) -> AsyncIterator[Slot]:
        """A slot that receives every message of the channel from now on, merged while unread
        (`merge` folds an older message and a newer one into one). With `span`, messages are
        versioned and delivered in version order; a reader tells its slot the version of its
        snapshot (`Slot.start_from`). A channel has one merge and one span, its first subscriber's.
        Returns once the channel is subscribed, so a snapshot read afterwards misses nothing."""
        channel = self._channels.get(channel_name)
        if channel is None:
            channel = self._channels[channel_name] = _Channel(merge)
            if span is not None:
                channel.sequencer = Sequencer(span, functools.partial(self._arrive, channel), self.reorder_seconds)
            channel.pump = asyncio.create_task(self._pump(channel_name, channel))
        slot = Slot(merge, channel.sequencer)
        channel.slots.add(slot)
        try:
            await channel.subscribed.wait()
            yield slot
        finally:
            channel.slots.discard(slot)
            if not channel.slots and self._channels.get(channel_name) is channel:
                del self._channels[channel_name]
                channel.close()

    async def _pump(self, channel_name: str, channel: _Channel) -> None:
        async with self._broadcast.subscribe(self._prefix + channel_name) as subscriber:
            channel.subscribed.set()
            async for event in subscriber:  # type: ignore[union-attr]
                assert event is not None
                if event.message == RESYNC:
                    channel.held = None  # the snapshot every subscriber now reads covers it
                    if channel.sequencer is not None:
                        channel.sequencer.reset()
                    for slot in list(channel.slots):
                        slot.resync()
                    continue
                message = json.loads(event.message)
                if channel.sequencer is None:
                    self._arrive(channel, message)
                else:
                    channel.sequencer.push(message)

    def _arrive(self, channel: _Channel, message: Message) -> None:
        if channel.window is None:
            self._deliver(channel, message)
        else:
            channel.held = message if channel.held is None else channel.merge(channel.held, message)

    def _deliver(self, channel: _Channel, message: Message) -> None:
        delivery = Delivery(message)
        for slot in list(channel.slots):
            slot.put(delivery)
        channel.window = asyncio.get_running_loop().call_later(
            self.coalesce_seconds, self._close_window, channel)

    def _close_window(self, channel: _Channel) -> None:
        channel.window = None
        if channel.held is not None:
            message, channel.held = channel.held, None
            self._deliver(channel, message)
