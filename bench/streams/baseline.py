"""The baseline: a Letta-style bus, batched writes (``FLUSH_ITEMS`` or ``FLUSH_AGE_S``) and polled reads
(``XRANGE`` every ``POLL_INTERVAL_S``), written here to measure Convoy against in the same run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from bench.streams.consumers import Samples
from bench.streams.plan import FLUSH_AGE_S, FLUSH_CHECK_S, FLUSH_ITEMS, POLL_INTERVAL_S, XRANGE_COUNT, Target

# The baseline bus (Letta-style): batched writes, polled reads.


class BatchedWriter:
    """The baseline's writer: buffers items and appends them in one pipeline when ``FLUSH_ITEMS``
    are buffered or when ``flush_if_stale`` finds ``FLUSH_AGE_S`` passed since the last flush.
    A lock keeps batches in order (two pipelines in flight could land out of order)."""

    def __init__(self, redis: aioredis.Redis, key: str, *, maxlen: int, ttl_s: int) -> None:
        self._redis = redis
        self._key = key
        self._maxlen = maxlen
        self._ttl_s = ttl_s
        self._buffer: list[tuple[str, bytes]] = []
        self._last_flush = time.monotonic()
        self._lock = asyncio.Lock()

    async def write(self, kind: str, payload: bytes) -> None:
        self._buffer.append((kind, payload))
        if len(self._buffer) >= FLUSH_ITEMS:
            await self.flush()

    async def flush_if_stale(self) -> None:
        if self._buffer and time.monotonic() - self._last_flush >= FLUSH_AGE_S:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
            if not batch:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, payload in batch:
                    pipe.xadd(self._key, {"k": kind, "p": payload}, maxlen=self._maxlen, approximate=True)
                pipe.expire(self._key, self._ttl_s)
                await pipe.execute()


async def flush_stale(writers: Sequence[BatchedWriter]) -> None:
    while True:
        await asyncio.sleep(FLUSH_CHECK_S)
        await asyncio.gather(*(w.flush_if_stale() for w in writers), return_exceptions=True)


async def poll_xrange(redis: aioredis.Redis, target: Target, samples: Samples) -> None:
    """The baseline's reader: ``XRANGE`` after its cursor every ``POLL_INTERVAL_S``."""
    cursor = "0-1"
    while True:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(  # type: ignore[assignment]
            target.stream_key, min=f"({cursor}", count=XRANGE_COUNT
        )
        now_ns = time.perf_counter_ns()
        for _, fields in entries:
            if fields.get(b"k") == b"done":
                samples.finished += 1
                return
            samples.take(fields.get(b"p", b""), now_ns)
        if entries:
            cursor = entries[-1][0].decode()
        await asyncio.sleep(POLL_INTERVAL_S)


# -- CPU readings (Linux /proc; zeros elsewhere) -----------------------------------------------------
