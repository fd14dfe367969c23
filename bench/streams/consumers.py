"""The consumers: an httpx SSE client per stream, a ``TailerPool`` subscription, or the baseline's
poller; each records every chunk's latency (``Samples``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from bench.streams.plan import BUS_GET_TIMEOUT_S, MEASURED, WARMUP, Target
from runtime.stream.tailer import TailerPool


@dataclass
class Samples:
    """What the readers of one phase received."""

    latencies_ns: list[int] = field(default_factory=list)
    received: int = 0
    finished: int = 0

    def take(self, payload: bytes, now_ns: int) -> None:
        measured = payload.startswith(MEASURED)
        if not measured and not payload.startswith(WARMUP):
            return  # the accept ping, stop_reason, usage_statistics
        self.received += 1
        if measured:
            start = len(MEASURED)
            self.latencies_ns.append(now_ns - int(payload[start : payload.index(b",", start)]))


class Gate:
    """Counts readers that are ready (or gave up), so the producer starts only after all are."""

    def __init__(self, expected: int) -> None:
        self._left = expected
        self._event = asyncio.Event()
        if expected <= 0:
            self._event.set()

    def ready(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


async def read_sse(
    client: httpx.AsyncClient, target: Target, samples: Samples, gate: Gate, opening: asyncio.Semaphore
) -> None:
    """One client on the replica's ``GET /v1/runs/{id}/stream``, parsing SSE frames as they come."""
    params: dict[str, str | int] = {"starting_after": 1, "include_pings": "false"}
    try:
        async with opening:
            request = client.build_request("GET", f"/v1/runs/{target.run_id}/stream", params=params)
            response = await client.send(request, stream=True)
    finally:
        gate.ready()  # open, or given up: either way the phase may go on
    try:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        tail = b""
        async for chunk in response.aiter_raw():
            now_ns = time.perf_counter_ns()
            frames = (tail + chunk).split(b"\n\n")
            tail = frames.pop()
            for frame in frames:
                data = frame[frame.find(b"data: ") + 6 :]
                if data == b"[DONE]":
                    samples.finished += 1
                    return
                samples.take(data, now_ns)
    finally:
        await response.aclose()


async def read_bus(pool: TailerPool, target: Target, samples: Samples) -> None:
    """One subscription on a ``TailerPool``: what an API replica's SSE handler gets, minus HTTP."""
    sub = pool.subscribe(target.stream_key, after=1)
    try:
        while True:
            batch = await sub.get(timeout_s=BUS_GET_TIMEOUT_S)
            now_ns = time.perf_counter_ns()
            for item in batch or ():
                if item.terminal:
                    samples.finished += 1
                    return
                samples.take(item.payload, now_ns)
    finally:
        sub.close()
