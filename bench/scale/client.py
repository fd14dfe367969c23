"""``convoy bench scale``'s clients: processes of their own (so the client is never the bottleneck),
each spreading its requests over the API replicas in turn, as a round-robin load balancer would.

- ``create``: conversations of one agent, ``concurrency`` requests in flight per process.
- ``stream``: one stream per conversation, turn after turn (``stream_tokens``) until the phase
  ends. The upstream writes each token as its own wall-clock time in ns (``bench.scale.upstream``),
  so a token's latency is when it was read minus that stamp (one machine, one clock): the whole
  trip, model adapter, host, Redis, API replica and SSE included. Time to first token is from
  sending the request to reading the first token.

Each process returns what it saw through a queue; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

import httpx

from bench.clients import ClientProcesses, counted, split, sse_frames

REQUEST_TIMEOUT_S = 120.0
ERRORS_KEPT = 20
TICK = 1000  # conversations created between two progress ticks
CREATE_CONCURRENCY = 16  # creations in flight per client process


@dataclass
class Seen:
    """What one client process saw (its share of the phase)."""

    created: list[str] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    items: int = 0  # SSE items read inside the measured window
    tokens: int = 0  # of which tokens
    turns: int = 0  # turns ended inside the measured window
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    cpu_s: float = 0.0  # this process's CPU time, when it is done

    @staticmethod
    def merged(parts: list[Seen]) -> Seen:
        """What several client processes saw, as one."""
        whole = Seen()
        for part in parts:
            whole.created += part.created
            whole.lags_ms += part.lags_ms
            whole.ttfts_ms += part.ttfts_ms
            whole.items += part.items
            whole.tokens += part.tokens
            whole.turns += part.turns
            whole.errors += part.errors
            whole.error_count += part.error_count
            whole.cpu_s += part.cpu_s
        return whole

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(text)


def _limits(n: int) -> httpx.Limits:
    return httpx.Limits(max_connections=n, max_keepalive_connections=n)


def create_from(processes: int, urls: list[str], agent_id: str, count: int, say: Callable[[str], None], *, timeout_s: float) -> Seen:
    """Create ``count`` conversations of ``agent_id`` from ``processes`` client processes, saying how
    far they have got every ``bench.clients.PROGRESS_EVERY_S``; what they saw, as one ``Seen``."""
    with ClientProcesses() as creators:
        ticks = creators.queue()
        shares = split(range(count), processes)
        creators.start(create, [(urls, agent_id, len(share), CREATE_CONCURRENCY, ticks) for share in shares])
        with counted(ticks, count, "created", say):
            return Seen.merged(creators.gather(timeout_s=timeout_s))


def create(urls: list[str], agent_id: str, count: int, concurrency: int, ticks: Queue[int], out: Queue[Any]) -> None:
    """Create ``count`` conversations of ``agent_id``; puts ``TICK`` on ``ticks`` for every ``TICK``
    of them (``bench.clients.counted``), then a ``Seen`` with their ids on ``out``."""
    seen = asyncio.run(_create(urls, agent_id, count, concurrency, ticks))
    seen.cpu_s = time.process_time()
    out.put(seen)


async def _create(urls: list[str], agent_id: str, count: int, concurrency: int, ticks: Queue[int]) -> Seen:
    seen = Seen()
    turn = itertools.cycle(urls)
    left = iter(range(count))
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=_limits(concurrency * len(urls))) as http:

        async def worker() -> None:
            for _ in left:
                try:
                    reply = await http.post(f"{next(turn)}/v1/conversations", params={"agent_id": agent_id})
                    if reply.status_code == 200:
                        seen.created.append(reply.json()["id"])
                        if len(seen.created) % TICK == 0:
                            ticks.put(TICK)
                    else:
                        seen.error(f"create: HTTP {reply.status_code} {reply.text[:200]}")
                except httpx.HTTPError as exc:
                    seen.error(f"create: {exc!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


def stream(
    urls: list[str], conversations: list[str], start_at: float, ramp_s: float, measure: tuple[float, float], out: Queue[Any]
) -> None:
    """Stream turns on each of ``conversations``, the first ones started evenly over ``ramp_s`` from
    wall time ``start_at``, until ``measure[1]``; samples only inside ``measure``."""
    out.put(asyncio.run(_streams(urls, conversations, start_at, ramp_s, measure)))


async def _streams(urls: list[str], conversations: list[str], start_at: float, ramp_s: float, measure: tuple[float, float]) -> Seen:
    seen = Seen()
    turn = itertools.cycle(urls)
    # A client per conversation, as each user has their own: one pool of hundreds of connections
    # costs httpcore time quadratic in its size, and the client would be what is measured.
    clients = [httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) for _ in conversations]
    try:
        gc.freeze()  # what is set up stays out of the collections made while measuring
        runs = [
            _one(http, turn, conv, start_at + ramp_s * i / len(conversations), measure, seen)
            for i, (http, conv) in enumerate(zip(clients, conversations, strict=True))
        ]
        # The turns still streaming when the window closes are left (their runs are cancelled).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, measure[1] + 1.0 - time.time())):
                await asyncio.gather(*runs)
    finally:
        await asyncio.gather(*(http.aclose() for http in clients), return_exceptions=True)
    return seen


async def _one(
    http: httpx.AsyncClient, turn: itertools.cycle[str], conversation: str, start_at: float, measure: tuple[float, float], seen: Seen
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    begin, end = measure
    body = {"messages": [{"role": "user", "content": "go"}], "stream_tokens": True}
    while time.time() < end:
        sent = time.time()
        first = True
        try:
            async with http.stream("POST", f"{next(turn)}/v1/conversations/{conversation}/messages", json=body) as reply:
                if reply.status_code != 200:
                    seen.error(f"send: HTTP {reply.status_code} {(await reply.aread())[:200]!r}")
                    await asyncio.sleep(1.0)
                    continue
                async for now_ns, frames in sse_frames(reply, time.time_ns):
                    now = now_ns / 1e9
                    inside = begin <= now <= end
                    for frame in frames:
                        if inside:
                            seen.items += 1
                        if b"event: error" in frame:
                            seen.error(f"run failed: {frame.decode(errors='replace')[:300]}")
                        elif b'"assistant_message"' in frame:
                            content = json.loads(frame.split(b"data: ", 1)[1])["content"]
                            if first and begin <= sent <= end:
                                seen.ttfts_ms.append((now - sent) * 1e3)
                            first = False
                            if inside:
                                # Tokens that reached the host together come as one item: each
                                # token's stamp is a word of it.
                                stamps = content.split()
                                seen.tokens += len(stamps)
                                with contextlib.suppress(ValueError):
                                    seen.lags_ms += [(now_ns - int(stamp)) / 1e6 for stamp in stamps]
            if begin <= time.time() <= end:
                seen.turns += 1
        except httpx.HTTPError as exc:
            seen.error(f"stream: {exc!r}")
            await asyncio.sleep(1.0)
