"""The HTTP SSE consumers, in client processes of their own (``bench.clients``): each reads its share
of a phase's streams from the API replica and sends back what it received.

Spread over processes so that at 1,000+ streams, or 10,000 chunks/s, what is measured is Convoy's
limit, not one client event loop's: a single process reading every stream pegs a core, and its
queue adds to the latency of the last streams it gets to. Each chunk's latency is still taken
against the producer's stamp (``CLOCK_MONOTONIC``, one clock for every process of the machine),
so samples from every process merge into one distribution.

A phase, for each process: open every SSE request of its share (at most ``OPEN_CONCURRENCY`` at
once), freeze what it holds out of its collections and switch its collector off (its pauses are
the client's, not Convoy's), say it is ready, read until every stream has its ``[DONE]`` or the
deadline the driver sends once the producer has ended passes, then put a ``Share`` on the results.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

import httpx

from bench.clients import sse_frames
from bench.streams.consumers import Samples
from bench.streams.plan import HTTP_TIMEOUT_S, OPEN_CONCURRENCY, Target


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


@dataclass
class Share:
    """What one client process received, and how it ended."""

    samples: Samples
    errors: list[str] = field(default_factory=list)


def consume(url: str, targets: list[Target], ready: Queue[Any], deadline: Queue[Any], results: Queue[Any]) -> None:
    """A client process's whole phase (``ClientProcesses.start``'s target): puts one ``Share``."""
    results.put(asyncio.run(_consume(url, targets, ready, deadline)))


async def _consume(url: str, targets: list[Target], ready: Queue[Any], deadline: Queue[Any]) -> Share:
    share = Share(Samples())
    gate = Gate(len(targets))
    # A client per stream, as each user has their own: one pool of hundreds of connections costs
    # httpcore time quadratic in its size. One TLS context for all (unused over http://).
    tls = ssl.create_default_context()
    clients = [httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, verify=tls) for _ in targets]
    try:
        opening = asyncio.Semaphore(OPEN_CONCURRENCY)
        readers = [asyncio.create_task(read_sse(c, t, share.samples, gate, opening)) for c, t in zip(clients, targets, strict=True)]
        await gate.wait()
        gc.freeze()
        gc.disable()
        ready.put(len(targets))
        until_ns: int = await asyncio.to_thread(deadline.get)  # perf_counter_ns: the producer has ended
        _, pending = await asyncio.wait(readers, timeout=max(0.0, (until_ns - time.perf_counter_ns()) / 1e9))
        for task in pending:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    for task in readers:
        if task in pending:
            share.errors.append("a reader had no terminal item by the drain deadline")
        elif (exc := task.exception()) is not None:
            share.errors.append(f"reader failed: {type(exc).__name__}: {exc}")
    return share


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
        async for now_ns, frames in sse_frames(response):
            for frame in frames:
                data = frame[frame.find(b"data: ") + 6 :]
                if data == b"[DONE]":
                    samples.finished += 1
                    return
                samples.take(data, now_ns)
    finally:
        await response.aclose()
