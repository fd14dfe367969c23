"""A tailer's notifications: sharded pub/sub (``SSUBSCRIBE``) on one connection per primary.

Each run stream has a shard channel of its own name, published to by every append
(``runtime.stream.writer``). On a single Redis all of a tailer's channels share one connection; on a
Redis Cluster a shard channel can only be subscribed to on the primary that serves its slot, so there
is one connection per primary (a ``_Shard``) and each channel goes to its slot's, as redis-py's
cluster client maps the slots (one ``SSUBSCRIBE`` per slot: a command's channels must share one). When that map is wrong (a resharding or a failover moved a slot),
the primary says so: it refuses the subscription (``MOVED``), or it ends it itself (an unasked-for
``sunsubscribe``), or its connection fails. Any of these makes the listeners refresh redis-py's map
and move every channel whose slot changed primary; a channel (re)subscribed is reported
(``on_subscribed``) so that its stream is read once, and nothing published meanwhile is missed.

Hot path: published messages are read raw (RESP2: plain arrays; redis-py's RESP3 push path formats
each one into a debug log line, logged or not), with no timer per message: a watchdog per connection
PINGs after ``block_s`` of silence and drops a connection that stays silent another ``block_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.background import stop_tasks
from runtime.store.connection import is_cluster, reraise_if_cancelling
from runtime.store.direct import own_connection_of
from runtime.store.mux import own_connection
from runtime.store.slots import by_slot

log = logging.getLogger(__name__)

SUBSCRIBE_BATCH = 1000  # channels per SSUBSCRIBE command when (re)subscribing everything
RECONNECT_BACKOFF_MIN_S = 0.05
RECONNECT_BACKOFF_MAX_S = 2.0
ONE_SERVER = ""  # the shard's name on a single Redis
REROUTE_PAUSE_S = 0.1


class _Shard:
    """One pub/sub connection and the channels it serves."""

    def __init__(self, owner: Listeners, name: str, connect: Callable[[], AbstractConnection]) -> None:
        self.owner = owner
        self.name = name
        self._connect = connect
        self.assigned: set[str] = set()  # the channels this shard serves
        self._listening: set[str] = set()  # what its connection asked the server for
        self._conn: AbstractConnection | None = None
        self.heard = 0  # messages received (the watchdog tells silence by it)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name=f"{self.owner.name}-listen-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_tasks(task)

    async def sync(self) -> None:
        """Send the (un)subscriptions that make the server's channels match ``assigned``."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return  # the listener subscribes to everything when it (re)connects
        add = list(self.assigned - self._listening)
        drop = list(self._listening - self.assigned)
        self._listening = set(self.assigned)
        commands = [*self._batches("SSUBSCRIBE", add), *self._batches("SUNSUBSCRIBE", drop)]
        if commands:
            with contextlib.suppress(Exception):
                # One write, and no reconnect: a broken connection is the listener's to replace.
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _batches(self, command: str, channels: list[str]) -> list[tuple[str, ...]]:
        """``command`` for ``channels``: up to ``SUBSCRIBE_BATCH`` channels each on one server; on a
        cluster one per hash slot (the channels of one command must share one, as keys do)."""
        if self.name == ONE_SERVER:
            return [(command, *channels[i : i + SUBSCRIBE_BATCH]) for i in range(0, len(channels), SUBSCRIBE_BATCH)]
        return [(command, *group) for group in by_slot(channels, lambda channel: channel)]

    async def _listen(self) -> None:
        backoff_s = RECONNECT_BACKOFF_MIN_S
        while True:
            conn = self._connect()
            watchdog: asyncio.Task[None] | None = None
            try:
                await conn.connect()
                self._conn = conn
                self._listening = set(self.assigned)
                batches = self._batches("SSUBSCRIBE", list(self._listening))
                if batches:
                    await conn.send_packed_command(conn.pack_commands(batches), check_health=False)
                backoff_s = RECONNECT_BACKOFF_MIN_S
                watchdog = asyncio.create_task(self._watch(conn), name=f"{self.owner.name}-watchdog-{self.name}")
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                reraise_if_cancelling()
                log.warning("stream tailer lost its notifications, reconnecting", extra={"error": str(exc), "node": self.name})
                self.owner.topology_changed()
            except Exception:  # the loop must never die: log and go on
                reraise_if_cancelling()
                log.exception("stream tailer listener failed")
            finally:
                self._conn = None
                if watchdog is not None:
                    watchdog.cancel()
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)

    async def _read(self, conn: AbstractConnection) -> None:
        owner = self.owner
        while True:
            # No timeout per message (a timer each): silence is the watchdog's to notice.
            try:
                message = await conn.read_response(timeout=math.inf)
            except ResponseError as exc:  # MOVED: this primary does not serve that channel's slot (any more)
                log.info("a subscription was refused; refreshing the map of slots", extra={"error": str(exc), "node": self.name})
                owner.topology_changed()
                continue
            reraise_if_cancelling()  # redis-py can swallow a cancellation that lands mid-read
            self.heard += 1
            if not isinstance(message, list):
                continue
            kind = message[0]
            if kind == b"smessage":
                owner.on_message(message[1].decode(), message[2])
            elif kind == b"ssubscribe":
                # From here on every append to that stream is published to us, so reading it now
                # misses nothing.
                owner.on_subscribed(message[1].decode())
            elif kind == b"sunsubscribe" and message[1].decode() in self._listening:
                # Not asked for: the server dropped it (its slot moved to another primary).
                self._listening.discard(message[1].decode())
                owner.topology_changed()

    async def _watch(self, conn: AbstractConnection) -> None:
        """After ``block_s`` of silence, PING (a subscribed connection answers with a "pong"
        message); if another ``block_s`` passes without a word, the connection is dead: closing it
        ends the listener's read, and the listener connects again."""
        block_s = self.owner.block_s
        while True:
            heard = self.heard
            await asyncio.sleep(block_s)
            if self.heard != heard:
                continue
            with contextlib.suppress(Exception):
                await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
            await asyncio.sleep(block_s)
            if self.heard == heard:
                log.warning("stream tailer heard nothing within %.1f s of a PING; reconnecting", block_s)
                await conn.disconnect(nowait=True)
                return


class Listeners:
    """The shard channels of a tailer's streams, on one connection per primary (see the module
    docstring). ``wanted`` holds the channels to listen to (the tailer's subscriptions, by stream);
    ``changed(channel)`` after it gained or lost one."""

    def __init__(
        self,
        redis: Any,
        *,
        wanted: Mapping[str, object],
        block_s: float,
        name: str,
        on_message: Callable[[str, bytes], None],
        on_subscribed: Callable[[str], None],
    ) -> None:
        self._redis = redis
        self._cluster = is_cluster(redis)
        self._wanted = wanted
        self.block_s = block_s
        self.name = name
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self._shards: dict[str, _Shard] = {}
        self._where: dict[str, _Shard] = {}  # channel -> the shard serving it
        self._changed: set[str] = set()
        self._sync_task: asyncio.Task[None] | None = None
        self._rerouting: asyncio.Task[None] | None = None
        self._syncing = asyncio.Lock()  # one routing of channels at a time (``_sync``)

    @property
    def heard(self) -> int:
        """Messages received on every connection so far (pongs included)."""
        return sum(shard.heard for shard in self._shards.values())

    async def start(self) -> None:
        if self._cluster:
            await self._redis.initialize()  # the map of slots
        else:
            self._shard(ONE_SERVER).start()

    async def stop(self) -> None:
        await stop_tasks(self._sync_task, self._rerouting)
        for shard in list(self._shards.values()):
            await shard.stop()

    def changed(self, channel: str) -> None:
        self._changed.add(channel)
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync())

    def topology_changed(self) -> None:
        """A primary refused or dropped a channel, or a connection failed: refresh redis-py's map of
        the slots and move the channels whose primary changed (one refresh at a time)."""
        if self._cluster and (self._rerouting is None or self._rerouting.done()):
            self._rerouting = asyncio.get_running_loop().create_task(self._reroute())

    async def _reroute(self) -> None:
        await asyncio.sleep(REROUTE_PAUSE_S)  # what else fails meanwhile is answered by this one refresh
        try:
            await self._redis.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - the current map keeps serving; the next failure asks again
            log.warning("could not refresh the cluster's map of slots", extra={"error": repr(exc)})
        self._changed.update(self._wanted)
        async with self._syncing:
            await self._sync_rounds()
            for shard in list(self._shards.values()):  # channels a primary dropped that stay with it
                await shard.sync()

    async def _sync(self) -> None:
        """Route every changed channel and send what its shard must (un)subscribe, until no change
        is left: a change made while this waits for a send is taken by its next round (``changed``
        starts no second task while one runs; a channel left behind would be heard of only by the
        tailer's sweep, up to ``block_s`` late, every time). One at a time: a refresh of the map
        (``_reroute``) routes the same channels, and two of these at once would both drop the
        same unneeded shard (a ``KeyError``), or one would drop a shard the other just gave a
        channel to (a channel nobody listens to any more)."""
        async with self._syncing:
            await self._sync_rounds()

    async def _sync_rounds(self) -> None:
        while self._changed:
            await self._sync_round()

    async def _sync_round(self) -> None:
        changed, self._changed = self._changed, set()
        touched: set[_Shard] = set()
        for channel in changed:
            current = self._where.get(channel)
            try:
                target = self._route(channel) if channel in self._wanted else None
            except SlotNotCoveredError:  # nobody serves its slot for the moment: try again after a refresh
                self.topology_changed()
                target = None
            if current is target:
                continue
            if current is not None:
                current.assigned.discard(channel)
                touched.add(current)
                del self._where[channel]
            if target is not None:
                target.assigned.add(channel)
                touched.add(target)
                self._where[channel] = target
        for shard in touched:
            shard.start()
            await shard.sync()
        if self._cluster:  # a primary nobody needs any more (gone, or holding no channel of ours)
            for shard in [s for s in self._shards.values() if not s.assigned]:
                del self._shards[shard.name]
                await shard.stop()

    def _route(self, channel: str) -> _Shard:
        if not self._cluster:
            return self._shard(ONE_SERVER)
        node = self._redis.get_node_from_key(channel)
        return self._shard(node.name, node)

    def _shard(self, name: str, node: Any = None) -> _Shard:
        shard = self._shards.get(name)
        if shard is None:
            if node is None:
                pool = self._redis.connection_pool
                shard = _Shard(self, name, lambda: own_connection(pool, protocol=2))
            else:
                shard = _Shard(self, name, lambda: own_connection_of(node, protocol=2))
            self._shards[name] = shard
        return shard
