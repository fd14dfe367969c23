"""The chunk bus: one Redis stream per run, written by the conversation's owner, tailed by any API replica.

Entries carry their seq id as the stream entry id (``0-<seq>``), so:

- seq ids are per run, start at 1, and can never be reused: Redis refuses an id that is not
  greater than the last one, which also stops a stale owner from writing into a run a newer
  owner already continued;
- a resume cursor *is* a stream id, and ``XREAD`` after it yields exactly the later items.

Writer (``ChunkWriter``): each item is queued and sent at once; while one write is in flight,
items produced meanwhile are coalesced into the next pipeline, never delayed by a timer. Every
write goes through a script that checks the owner's fencing epoch first.

Reader (``StreamTailer``): one blocking ``XREAD`` loop serves every subscription of a process,
reading all of their streams in one command. A subscription's buffer is bounded; a consumer that
falls behind is paused at its cursor (Redis keeps the data) and resumed once it drains, so a slow
client never slows the loop or the other clients, and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.errors import FencedError
from runtime.redis_client import reraise_if_cancelling

log = logging.getLogger(__name__)

ItemKind = Literal["data", "error", "done"]

# One script call appends a batch of items after checking the writer still owns the conversation.
# KEYS: epoch key, stream key. ARGV: epoch, maxlen, ttl_s, then (seq, kind, payload) triples.
_FENCED_XADD = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return redis.error_reply('FENCED epoch ' .. tostring(current) .. ' is not ' .. ARGV[1])
end
for i = 4, #ARGV, 3 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. ARGV[i], 'k', ARGV[i + 1], 'p', ARGV[i + 2])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return (#ARGV - 3) / 3
"""

WRITE_BACKLOG_MAX = 512
SUBSCRIPTION_BUFFER_BATCHES = 64
XREAD_COUNT = 512
RECONNECT_BACKOFF_MAX_S = 2.0
WAKE_KEY_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class StreamItem:
    seq: int
    kind: ItemKind
    payload: bytes

    @property
    def terminal(self) -> bool:
        return self.kind == "done"


def seq_of(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[1])


def _item(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamItem:
    kind = fields.get(b"k", b"data").decode()
    return StreamItem(seq=seq_of(entry_id), kind=kind, payload=fields.get(b"p", b""))  # type: ignore[arg-type]


async def last_seq(redis: aioredis.Redis, key: str) -> int:
    """The highest seq written to ``key`` (0 if the stream does not exist)."""
    entries = await redis.xrevrange(key, count=1)
    return seq_of(entries[0][0]) if entries else 0


async def first_seq(redis: aioredis.Redis, key: str) -> int | None:
    """The lowest seq still held (None if the stream does not exist or is empty)."""
    entries = await redis.xrange(key, count=1)
    return seq_of(entries[0][0]) if entries else None


async def read_after(redis: aioredis.Redis, key: str, after: int, count: int = 1000) -> list[StreamItem]:
    entries = await redis.xrange(key, min=f"(0-{after}", count=count)
    return [_item(eid, fields) for eid, fields in entries]


class ChunkWriter:
    """Appends one run's items in order, fenced by the owner's epoch; see the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream_key: str,
        epoch_key: str,
        epoch: int,
        next_seq: int,
        maxlen: int,
        ttl_s: int,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_FENCED_XADD)
        self._keys = [epoch_key, stream_key]
        self._head = [str(epoch), str(maxlen), str(ttl_s)]
        self._next_seq = next_seq
        self._pending: list[tuple[int, ItemKind, bytes]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def reserve(self) -> int:
        """The seq the next item will get (for payloads that carry their own seq_id)."""
        return self._next_seq

    async def write(self, kind: ItemKind, payload: bytes) -> int:
        """Queue one item and start sending it; waits only when the backlog is full."""
        if self._failure is not None:
            raise self._failure
        seq = self._next_seq
        self._next_seq += 1
        self._pending.append((seq, kind, payload))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        if len(self._pending) >= WRITE_BACKLOG_MAX:
            await self.flush()
        return seq

    async def flush(self) -> None:
        """Wait until everything written so far is in Redis (re-raises a write failure)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._failure is not None:
            raise self._failure

    async def _flush_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            args = list(self._head)
            for seq, kind, payload in batch:
                args.extend((str(seq), kind, payload))
            try:
                await self._script(keys=self._keys, args=args)
            except ResponseError as exc:
                text = str(exc)
                if "FENCED" in text or "equal or smaller" in text:
                    self._failure = FencedError(f"stream write refused: {text}")
                else:
                    self._failure = exc
                self._pending.clear()
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._failure = exc
                self._pending.clear()
                return


@dataclass(eq=False)
class Subscription:
    """One reader's view of one run stream, fed by a ``StreamTailer``."""

    key: str
    cursor: int
    _tailer: StreamTailer
    _queue: asyncio.Queue[list[StreamItem]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=SUBSCRIPTION_BUFFER_BATCHES)
    )
    paused: bool = False
    closed: bool = False

    async def get(self, timeout_s: float) -> list[StreamItem] | None:
        """The next batch of items after the cursor, or None after ``timeout_s`` of silence."""
        try:
            batch = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if self.paused and self._queue.empty():
            self._tailer._resume(self)
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._tailer._remove(self)


class StreamTailer:
    """Multiplexes many subscriptions over one blocking ``XREAD`` connection.

    Every read also watches a private wake stream; a new (or resumed) subscription appends to it,
    so a blocked read returns at once and the next one includes the new stream. Appending (rather
    than ``CLIENT UNBLOCK``) cannot be lost to a race: if the append lands before the read is
    issued, the read sees it and returns immediately.
    """

    def __init__(self, redis: aioredis.Redis, *, block_ms: int, wake_key: str, name: str = "tailer") -> None:
        self._redis = redis
        self._block_ms = block_ms
        self._name = name
        self._wake_key = wake_key
        self._wake_cursor = "0-0"
        self._wake_pending = False
        self._subs: dict[str, set[Subscription]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader: aioredis.Redis | None = None

    @property
    def subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        if self._task is None:
            await self._redis.delete(self._wake_key)
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_reader()
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await self._redis.delete(self._wake_key)

    def subscribe(self, key: str, after: int) -> Subscription:
        sub = Subscription(key=key, cursor=after, _tailer=self)
        self._subs.setdefault(key, set()).add(sub)
        self._poke()
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    def _resume(self, sub: Subscription) -> None:
        sub.paused = False
        if not sub.closed:
            self._poke()

    def _poke(self) -> None:
        self._wake.set()
        if not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().create_task(self._append_wake())

    async def _append_wake(self) -> None:
        self._wake_pending = False
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": 1}, maxlen=16, approximate=False)
                pipe.expire(self._wake_key, WAKE_KEY_TTL_S)
                await pipe.execute()

    def _cursors(self) -> dict[str, str]:
        cursors: dict[str, str] = {}
        for key, subs in self._subs.items():
            active = [s.cursor for s in subs if not s.paused and not s.closed]
            if active:
                cursors[key] = f"0-{min(active)}"
        return cursors

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.aclose()
                await reader.connection_pool.disconnect()

    async def _run(self) -> None:
        backoff_s = 0.05
        while True:
            try:
                if self._reader is None:
                    # A private connection: a blocked read must never hold one of the shared pool's.
                    pool = aioredis.ConnectionPool(**self._redis.connection_pool.connection_kwargs)
                    self._reader = aioredis.Redis(connection_pool=pool, single_connection_client=True)
                self._wake.clear()
                cursors = self._cursors()
                if not cursors:
                    await self._wake.wait()
                    continue
                read_from = {key: int(cursor.split("-")[1]) for key, cursor in cursors.items()}
                cursors[self._wake_key] = self._wake_cursor
                reply = await self._reader.xread(cursors, count=XREAD_COUNT, block=self._block_ms)
                self._dispatch(reply, read_from)
                backoff_s = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                reraise_if_cancelling()
                log.warning("stream tailer lost Redis, reconnecting", extra={"error": str(exc)})
                await self._close_reader()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
            except Exception:  # the loop must never die: log and go on
                reraise_if_cancelling()
                log.exception("stream tailer step failed")
                await self._close_reader()
                await asyncio.sleep(backoff_s)

    def _dispatch(
        self,
        reply: Iterable[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
        read_from: dict[str, int],
    ) -> None:
        """Hand each subscription the items right after its cursor. A subscription that joined
        while this read was in flight, with a cursor before the position read from, gets nothing
        now: the next read starts from its cursor, so it misses nothing."""
        for raw_key, entries in reply or ():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if key == self._wake_key:
                self._wake_cursor = entries[-1][0].decode()
                continue
            items = [_item(eid, fields) for eid, fields in entries]
            start = read_from.get(key, 0)
            for sub in list(self._subs.get(key, ())):
                if sub.paused or sub.closed or sub.cursor < start:
                    continue
                fresh = [it for it in items if it.seq > sub.cursor]
                if not fresh:
                    continue
                try:
                    sub._queue.put_nowait(fresh)
                except asyncio.QueueFull:
                    sub.paused = True
                    continue
                sub.cursor = fresh[-1].seq


class TailerPool:
    """A few tailers per process; a stream always goes to the same one."""

    def __init__(self, redis: aioredis.Redis, *, block_ms: int, wake_key_prefix: str, size: int = 2) -> None:
        self._tailers = [
            StreamTailer(redis, block_ms=block_ms, wake_key=f"{wake_key_prefix}:{i}", name=f"tailer-{i}")
            for i in range(size)
        ]

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
