"""Reading run streams for clients: many subscriptions per process, pushed to, with Redis as the truth.

Pub/sub connections (``runtime.stream.listener``: one, or one per primary of a Redis Cluster) listen
to the streams of every subscription of a tailer. A published item (``runtime.stream.writer``) that
directly follows a subscription's cursor is handed to it at once; any other case (a gap, an empty
message: "read me") marks the stream, and the next non-blocking ``XREAD`` round reads every marked
stream after its subscriptions' cursor: in one command on a single Redis; on a cluster, one command
per slot (a command's keys must share one), all of a primary's in one write. So the work per item
does not grow with the number of streams watched. On a cluster each primary's streams (as
redis-py's map of the slots places them) are read by a queue of their own (``_PrimaryReads``: one
read in flight, on connections of its own, with its own backoff), as the writer's appends are sent
(``runtime.stream.writer``): a primary that cannot answer (frozen, unreachable, or the refresh of
the map that follows its failure waiting on it) holds back only the reads of its own streams, never
those of the others. A stream is also read when a subscription starts,
when the server confirms a (re)subscription (after a reconnect or a move to another primary too, so
nothing published while it was away is missed), when a paused subscription resumes, and by a sweep
that reads every stream once each ``block_ms`` (a slice at a time), which bounds the delay should a
message ever be lost. The reading connections are ``runtime.store.direct``'s (no pool, no
per-command machinery). A read that fails (Redis, or a cluster's primary, away) is tried again with
backoff; the items it missed are still in the stream, so it misses nothing.

A subscription's buffer is bounded (``SUBSCRIPTION_BUFFER_BYTES`` of payload, or one item if that
is larger); a consumer that falls behind is paused at its cursor (Redis keeps the data) and resumed
once it drains, so a slow client never slows the loop or the other clients, costs the process a
bounded amount of memory however long its run, and loses nothing while Redis still holds its
items. A stream is capped (``XADD MAXLEN ~``): a reader paused long enough for the run to write past
the cap finds the items after its cursor trimmed away. Seq ids are contiguous, so a read whose first
new item is not the one right after a subscription's cursor proves the loss; that subscription gets
no more items, and its ``get`` raises ``ItemsTrimmedError`` once it has taken what arrived before the
gap (a reader is never moved silently past items it did not get).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.background import stop_tasks
from runtime.errors import StreamGoneError
from runtime.store.connection import SLOT_UNAVAILABLE, is_cluster, reraise_if_cancelling
from runtime.store.direct import Direct, primary_of
from runtime.stream.items import StoredItem, kind_of, raw_item
from runtime.stream.listener import Listeners

log = logging.getLogger(__name__)

SUBSCRIPTION_BUFFER_BATCHES = 64
SUBSCRIPTION_BUFFER_BYTES = 256 * 1024  # payload a subscription holds before it is paused
XREAD_COUNT = 512
SWEEP_SLICE = 64  # streams marked per step of the periodic sweep
RECONNECT_BACKOFF_MIN_S = 0.05
RECONNECT_BACKOFF_MAX_S = 2.0
UNREAD_LOG_PERIOD_S = 1.0  # while a primary is away, its streams' failed reads are logged this often


class ItemsTrimmedError(StreamGoneError):
    """The items right after a subscription's cursor were trimmed from its stream (``MAXLEN``)
    before it read them: items ``after + 1`` to ``first - 1`` are lost to it, ``first`` is the
    lowest one still held after its cursor."""

    def __init__(self, key: str, after: int, first: int) -> None:
        super().__init__(f"items {after + 1}..{first - 1} of stream {key} were trimmed before they were read")
        self.key = key
        self.after = after
        self.first = first


@dataclass(eq=False)
class Subscription:
    """One reader's view of one run stream, fed by a ``StreamTailer``.

    Waiting costs no timer per item: ``get`` records its deadline, and one timer per subscription,
    armed once, re-arms itself while items keep moving the deadline on and ends the wait only once
    it has passed. (A timeout per ``get`` scheduled and cancelled a timer for every batch, and the
    cancelled ones piled up in the event loop's heap until their time came: at 1,000 streams that
    was most of what the garbage collector had to walk.)"""

    key: str
    cursor: int
    _tailer: StreamTailer
    paused: bool = False
    closed: bool = False
    trimmed: ItemsTrimmedError | None = None  # set once items after the cursor were found trimmed
    _batches: list[list[StoredItem]] = field(default_factory=list)
    _buffered_bytes: int = 0
    _waiter: asyncio.Future[None] | None = None
    _deadline: float = 0.0  # loop time at which the waiting ``get`` gives up
    _timer: asyncio.TimerHandle | None = None

    @property
    def buffered_bytes(self) -> int:
        """Payload received for this reader and not yet taken by it."""
        return self._buffered_bytes

    @property
    def active(self) -> bool:
        """Whether the tailer still reads for this subscription (not paused, closed or trimmed)."""
        return not (self.paused or self.closed or self.trimmed is not None)

    async def get(self, timeout_s: float) -> list[StoredItem] | None:
        """Every item after the cursor that has arrived (waiting for one if none has), or None
        after ``timeout_s`` of silence; ``ItemsTrimmedError`` once the items that arrived are taken
        if the next ones were trimmed before they could be read (module docstring)."""
        if not self._batches and self.trimmed is not None:
            raise self.trimmed
        if not self._batches:
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + timeout_s
            if self._timer is not None and self._timer.when() > self._deadline:
                self._timer.cancel()  # a shorter wait than the one it was armed for
                self._timer = None
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._expire)
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if not self._batches:
                if self.trimmed is not None:
                    raise self.trimmed
                return None
        batches, self._batches = self._batches, []
        batch = batches[0] if len(batches) == 1 else [item for b in batches for item in b]
        self._buffered_bytes = 0
        if self.paused:
            self._tailer._resume(self)
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._tailer._remove(self)

    def _push(self, batch: list[StoredItem]) -> None:
        self._batches.append(batch)
        self._wake()

    def _lost(self, first: int) -> None:
        """The items after the cursor up to ``first`` are gone: end this subscription's reading."""
        self.trimmed = ItemsTrimmedError(self.key, self.cursor, first)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self) -> None:
        """The subscription's one timer: ends a wait whose deadline has passed, else follows it."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next ``get`` arms it again
        loop = waiter.get_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
        else:
            waiter.set_result(None)


class StreamTailer:
    """Multiplexes many subscriptions over one pub/sub connection and one reading connection (on a
    cluster, one of each per primary); see the module docstring."""

    def __init__(self, redis: aioredis.Redis, *, block_ms: int, name: str = "tailer") -> None:
        self._block_s = block_ms / 1000
        self._name = name
        self._cluster: RedisCluster | None = redis if is_cluster(redis) else None
        self._subs: dict[str, set[Subscription]] = {}
        self._dirty: set[str] = set()  # streams to read in the next round
        self._wake = asyncio.Event()  # set when ``_dirty`` gains a stream
        self._listeners = Listeners(
            redis, wanted=self._subs, block_s=self._block_s, name=name, on_message=self._published, on_subscribed=self._mark
        )
        self._reader = Direct(redis)  # one server's: private connections, reads never queue behind the pool
        self._primaries: dict[str, _PrimaryReads] = {}  # a cluster's reads, by primary (``_hand_out``)
        self._sweep: deque[str] = deque()  # streams the current sweep pass has yet to mark
        self._sweep_ends = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.reads = 0  # XREAD rounds done: subscriptions, gaps, resumes and sweep steps

    @property
    def subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        if not self._tasks:
            await self._listeners.start()
            self._tasks = [asyncio.create_task(self._read(), name=f"{self._name}-read")]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(*tasks)
        primaries, self._primaries = self._primaries, {}
        for reads in primaries.values():
            await reads.stop()
        await self._listeners.stop()
        await self._reader.close()

    def subscribe(self, key: str, after: int) -> Subscription:
        sub = Subscription(key=key, cursor=after, _tailer=self)
        subs = self._subs.setdefault(key, set())
        if not subs:
            self._listeners.changed(key)
        subs.add(sub)
        self._mark(key)  # what is already there is read at once, before any notification
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
                self._listeners.changed(sub.key)

    def _resume(self, sub: Subscription) -> None:
        sub.paused = False
        if sub.active:
            self._mark(sub.key)

    def _mark(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    # -- notifications in -------------------------------------------------------------------------

    def _published(self, key: str, message: bytes) -> None:
        """Hand a published item to the subscriptions it directly continues; read the stream for
        any other (a gap means an item was missed, e.g. by a paused subscription)."""
        subs = self._subs.get(key)
        if not subs:
            return
        try:
            seq, kind, payload = message.split(b" ", 2)
            item = StoredItem(int(seq), kind_of(kind), payload)
        except ValueError:  # an empty message ("read me"), or one not in the item format: read the stream
            self._mark(key)
            return
        for sub in subs:
            if not sub.active or sub.cursor >= item.seq:
                continue
            if sub.cursor + 1 == item.seq:
                _offer(sub, [item])
            else:
                self._mark(key)

    # -- the reader: one XREAD of the marked streams per round -----------------------------------

    async def _read(self) -> None:
        """Wait for a marked stream (or the sweep's next step), then read the marked streams: here,
        on one server; on a cluster each goes to its primary's reads (``_hand_out``), and this loop
        never waits for a primary."""
        backoff_s = RECONNECT_BACKOFF_MIN_S
        next_sweep = time.monotonic() + self._block_s
        while True:
            cursors: dict[str, int] = {}
            try:
                reraise_if_cancelling()  # redis-py can swallow a cancellation that lands mid-command
                if not self._dirty:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, next_sweep - time.monotonic())):
                            await self._wake.wait()
                if (now := time.monotonic()) >= next_sweep:
                    next_sweep = self._sweep_step(now)
                if self._cluster is not None:
                    self._hand_out(self._cluster)
                    continue
                dirty, self._dirty = self._dirty, set()
                cursors = self._cursors(dirty)
                if not cursors:
                    continue
                await self._read_round(self._reader, cursors)  # one server: a failure is raised, none returned
                backoff_s = RECONNECT_BACKOFF_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must never die: log, read those streams again, go on
                reraise_if_cancelling()
                if isinstance(exc, _AWAY):
                    log.warning("stream tailer lost Redis, reconnecting", extra={"error": str(exc)})
                else:
                    log.exception("stream tailer step failed")
                self._dirty.update(cursors)
                await self._reader.close()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)

    async def _read_round(self, reader: Direct, cursors: dict[str, int]) -> list[str]:
        """One read of the streams of ``cursors`` after their cursors (a command per slot on a
        cluster), the items handed to their subscriptions (``_dispatch``); returns the streams
        whose primary could not be reached (a cluster's only: on one server that is raised)."""
        groups = self._by_slot(cursors) if self._cluster is not None else [cursors]
        commands: list[tuple[str | int, ...]] = [
            ("XREAD", "COUNT", XREAD_COUNT, "STREAMS", *g, *(f"0-{c}" for c in g.values())) for g in groups
        ]
        replies = await reader.execute(commands, [next(iter(g)) for g in groups], partial=True)
        unread: list[str] = []
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, (RedisConnectionError, RedisTimeoutError, OSError)):
                unread.extend(group)  # its primary is away: read again (``_PrimaryReads``)
                continue
            if isinstance(reply, Exception):
                raise reply
            self._dispatch(reply, group)
        self.reads += 1
        return unread

    def _hand_out(self, cluster: RedisCluster) -> None:
        """Give each marked stream to the reads of the primary serving its slot, as redis-py's map
        has it; one whose slot nobody serves for the moment to reads of no primary (``""``): its
        read fails, and is tried again once the map is corrected (the listeners ask for that)."""
        by_primary: dict[str, list[str]] = {}
        for key in self._dirty:
            try:
                name = primary_of(cluster, key).name
            except SlotNotCoveredError:
                name = ""
            by_primary.setdefault(name, []).append(key)
        self._dirty = set()
        for name, keys in by_primary.items():
            reads = self._primaries.get(name)
            if reads is None:
                reads = self._primaries[name] = _PrimaryReads(self, cluster, name)
            reads.submit(keys)

    def _remark(self, keys: list[str]) -> None:
        for key in keys:
            if key in self._subs:
                self._mark(key)

    def _sweep_step(self, now: float) -> float:
        """Mark the next slice of the periodic sweep; returns when the step after it is due.

        A pass takes every stream subscribed when it starts and marks them ``SWEEP_SLICE`` at a
        time, evenly over ``block_ms``, so each stream is read at least once a period (twice the
        period for one subscribed mid-pass, which its subscription read at once anyway) and no
        single read covers thousands of streams: at 1,000 streams, one read of them all held the
        event loop for about 10 ms (measured), the p99 of every chunk arriving meanwhile."""
        if not self._sweep:
            self._sweep.extend(self._subs)
            self._sweep_ends = now + self._block_s
        for _ in range(min(SWEEP_SLICE, len(self._sweep))):
            key = self._sweep.popleft()
            if key in self._subs:
                self._dirty.add(key)
        steps_left = -(-len(self._sweep) // SWEEP_SLICE)
        return now + max(0.0, self._sweep_ends - now) / (steps_left + 1) if steps_left else max(now, self._sweep_ends)

    @staticmethod
    def _by_slot(cursors: dict[str, int]) -> list[dict[str, int]]:
        """``cursors`` split by hash slot: on a cluster one command's keys must share one."""
        groups: dict[int, dict[str, int]] = {}
        for key, cursor in cursors.items():
            groups.setdefault(key_slot(key.encode()), {})[key] = cursor
        return list(groups.values())

    def _cursors(self, keys: Iterable[str]) -> dict[str, int]:
        """Each of ``keys``' lowest cursor among its active subscriptions (one with none: left out)."""
        cursors: dict[str, int] = {}
        for key in keys:
            active = [s.cursor for s in self._subs.get(key, ()) if s.active]
            if active:
                cursors[key] = min(active)
        return cursors

    def _dispatch(self, reply: object, read_from: dict[str, int]) -> None:
        """Hand each subscription the items right after its cursor (``reply``: XREAD's raw reply,
        a list of ``[key, entries]`` in RESP2, a map in RESP3; None when nothing was new; or, for a
        read redirected by the cluster, redis-py's parsed one, each entry's fields a dict). A
        subscription that joined while this read was in flight, with a cursor before the position
        read from, gets nothing now: joining marked its stream, so the next round reads from its
        cursor and it misses nothing. A subscription whose next item is missing from the reply
        while a later one is there lost it to trimming, and is told (``Subscription.get``)."""
        streams: Iterable[Any] = reply.items() if isinstance(reply, dict) else reply if isinstance(reply, list) else ()
        for raw_key, entries in streams:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if len(entries) >= XREAD_COUNT:
                self._mark(key)  # there may be more
            items = [raw_item(eid, fields) for eid, fields in entries]
            start = read_from.get(key, 0)
            for sub in list(self._subs.get(key, ())):
                if not sub.active or sub.cursor < start:
                    continue
                fresh = [it for it in items if it.seq > sub.cursor]
                if not fresh:
                    continue
                if fresh[0].seq == sub.cursor + 1:
                    _offer(sub, fresh)
                else:  # seq ids are contiguous: the ones between were trimmed (module docstring)
                    sub._lost(fresh[0].seq)


_AWAY = (RedisConnectionError, RedisTimeoutError, OSError, *SLOT_UNAVAILABLE)  # Redis, or the key's primary, away


class _PrimaryReads:
    """The reads of the streams one primary of a cluster serves (module docstring): the streams
    handed to it, read by a task of its own while any is waiting, one read at a time, on
    connections of its own (``Direct``: each command still goes where redis-py's map sends its
    key, so a stream whose slot moved is read right, in this queue until it is marked again). Its
    failures, the refresh of the map that follows one, and its backoff are its own: a primary that
    cannot answer keeps its own streams waiting, no one else's. As the writer's pipeliners, the task
    lives only while there is something to read. Should a slot move, its stream may be read by two
    queues at once: harmless, as each reply holds the items right after its own cursor and
    ``_dispatch`` hands a subscription only those after its current one, so a late reply adds
    nothing and never looks like a gap."""

    def __init__(self, tailer: StreamTailer, cluster: RedisCluster, name: str) -> None:
        self._tailer = tailer
        self._name = name
        self._reader = Direct(cluster)
        self._keys: set[str] = set()  # streams to read in the next round
        self._task: asyncio.Task[None] | None = None
        self._backoff_s = RECONNECT_BACKOFF_MIN_S
        self._unread_logged_at = -UNREAD_LOG_PERIOD_S

    def submit(self, keys: Iterable[str]) -> None:
        self._keys.update(keys)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self._tailer._name}-read-{self._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_tasks(task)
        await self._reader.close()

    async def _run(self) -> None:
        try:
            while self._keys:
                keys, self._keys = self._keys, set()
                unread = await self._read(keys)
                if unread:
                    await self._back_off(unread)
                else:
                    self._backoff_s = RECONNECT_BACKOFF_MIN_S
        finally:
            self._task = None

    async def _read(self, keys: set[str]) -> list[str]:
        """One round of ``keys``; returns those not read (their primary away, or a failure)."""
        cursors: dict[str, int] = {}
        try:
            reraise_if_cancelling()  # redis-py can swallow a cancellation that lands mid-command
            cursors = self._tailer._cursors(keys)
            return await self._tailer._read_round(self._reader, cursors) if cursors else []
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the reads must never die: read those streams again
            reraise_if_cancelling()
            if not isinstance(exc, _AWAY):
                log.exception("stream tailer read failed", extra={"node": self._name})
            await self._reader.close()
            return list(cursors)

    async def _back_off(self, unread: list[str]) -> None:
        """Wait (doubling from ``RECONNECT_BACKOFF_MIN_S`` up to ``RECONNECT_BACKOFF_MAX_S`` while
        reads keep failing), then mark ``unread`` again: routed anew, should the map have changed."""
        now = time.monotonic()
        if now - self._unread_logged_at >= UNREAD_LOG_PERIOD_S:
            self._unread_logged_at = now
            log.warning(
                "stream tailer could not reach a primary; reading its streams again", extra={"streams": len(unread), "node": self._name}
            )
        await asyncio.sleep(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
        self._tailer._remark(unread)


def _offer(sub: Subscription, items: list[StoredItem]) -> None:
    """Queue the items that directly follow ``sub``'s cursor, as many as its buffer takes: up to
    ``SUBSCRIPTION_BUFFER_BYTES`` of payload (at least one item, however large), in at most
    ``SUBSCRIPTION_BUFFER_BATCHES`` batches. If any is left over, pause it at its cursor."""
    room = SUBSCRIPTION_BUFFER_BYTES - sub._buffered_bytes
    if room <= 0 or len(sub._batches) >= SUBSCRIPTION_BUFFER_BATCHES:
        sub.paused = True
        return
    taken, size = 0, 0
    for item in items:
        if taken and size + len(item.payload) > room:
            break
        taken, size = taken + 1, size + len(item.payload)
    sub._push(items if taken == len(items) else items[:taken])
    sub._buffered_bytes += size
    sub.cursor = items[taken - 1].seq
    if taken < len(items):
        sub.paused = True


class TailerPool:
    """A few tailers per process; a stream always goes to the same one."""

    def __init__(self, redis: aioredis.Redis, *, block_ms: int, size: int = 2) -> None:
        self._tailers = [StreamTailer(redis, block_ms=block_ms, name=f"tailer-{i}") for i in range(size)]

    async def start(self) -> None:
        for tailer in self._tailers:
            await tailer.start()

    async def stop(self) -> None:
        for tailer in self._tailers:
            await tailer.stop()

    def subscribe(self, key: str, after: int) -> Subscription:
        return self._tailers[hash(key) % len(self._tailers)].subscribe(key, after)

    @property
    def subscriptions(self) -> int:
        return sum(t.subscriptions for t in self._tailers)

    @property
    def reads(self) -> int:
        return sum(t.reads for t in self._tailers)
