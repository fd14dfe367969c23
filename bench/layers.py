"""``convoy bench layers``: a conversation host's CPU per streamed token, layer by layer.

A token's way through a host, each layer measured with the ones before it, in this process (its
main thread's CPU only), against the bench's OpenAI Chat Completions upstream in a process of its
own and the embedded Redis:

1. **sdk**: the ``openai`` SDK's read of the stream alone (aiohttp, its SSE decoder, JSON), as the
   adapter sends the request;
2. **adapter**: Convoy's OpenAI Chat adapter over it (``runtime.providers.openai_chat``): chunks to
   provider-neutral events;
3. **guarded**: with the deadlines and the retry policy (``runtime.providers.stream``), what a step
   reads (``Model.stream``);
4. **assembler**: each event made a Letta item (``runtime.agent.step.StepAssembler``);
5. **writer**: each item written to its run's Redis stream (``runtime.stream.writer.ChunkWriter``,
   with the default write window), flushed at the end.

``--streams`` streams at a time, each ``--tokens`` tokens at ``--rate`` tokens/s, the layers
alternated round by round; each layer's median over ``--rounds`` rounds, and what it adds to the one
before. A turn's fixed costs (the take, the reads, the request's build, the history, the run's end)
and the other processes (Redis, the API) are not in it: ``convoy bench turns`` measures the whole.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from bench import Progress, Report
from bench.scale.upstream import MODEL, StampingUpstream
from runtime.agent.step import StepAssembler
from runtime.ids import new_id
from runtime.providers.events import ChatMessage, LLMRequest
from runtime.providers.registry import Model, Providers
from runtime.providers.stream import Attempts
from runtime.schemas.messages import WireItem
from runtime.settings import CompatibleProvider, Settings
from runtime.store import keyspace
from runtime.store.connection import connect
from runtime.store.embedded import EmbeddedRedis
from runtime.stream.writer import ChunkWriter

UPSTREAM_START_S = 60.0


@dataclass(frozen=True)
class LayersOptions:
    streams: int = 20
    tokens: int = 200
    rate_hz: float = 400.0
    rounds: int = 5


def _serve_upstream(tokens: int, rate_hz: float, url: Queue[str]) -> None:
    url.put(StampingUpstream(tokens, rate_hz).start().url)
    threading.Event().wait()  # until the benchmark ends this process


@dataclass(frozen=True)
class _Path:
    """What every stream of a measurement shares: the model, the Redis client, the conversation
    whose runs the writer layer appends to (one epoch key), the write window."""

    model: Model
    redis: Any
    conversation: str
    window_s: float
    written: list[tuple[str, int]] = field(default_factory=list)  # each written stream: its key, its items


Read = Callable[[_Path], Coroutine[Any, Any, int]]


def _request() -> LLMRequest:
    return LLMRequest(model=MODEL, system="be brief", messages=[ChatMessage(role="user", content="go")])


async def _sdk(path: _Path) -> int:
    adapter: Any = path.model.adapter  # the OpenAI Chat adapter: its client and body, as it sends them
    from openai import AsyncStream
    from openai.types.chat import ChatCompletion
    from pydantic_core import to_json

    stream: AsyncStream[Any] = await adapter._client.post(
        "/chat/completions", content=to_json(adapter.payload(_request())), cast_to=ChatCompletion, stream=True, stream_cls=AsyncStream[object]
    )
    read = 0
    async for _ in stream:
        read += 1
    return read


async def _adapter(path: _Path) -> int:
    return sum([1 async for _ in path.model.adapter.stream(_request())])


async def _guarded(path: _Path) -> int:
    return sum([1 async for _ in path.model.stream(_request(), Attempts())])


async def _assembled(path: _Path, *, write: bool) -> int:
    run = new_id("run")
    writer = ChunkWriter(
        path.redis,
        stream_key=keyspace.run_stream(path.conversation, run),
        epoch_key=keyspace.epoch(path.conversation),
        epoch=1,
        next_seq=2,
        maxlen=10_000,
        ttl_s=60,
        patience_s=5.0,
        window_s=path.window_s,
    )

    async def emit(item: WireItem) -> None:
        item.run_id = run
        if write:
            await writer.write_item(item)

    assembler = StepAssembler(message_id=new_id("message"), step_id=new_id("step"), run_id=run, stream_tokens=True, emit=emit)
    read = 0
    async for event in path.model.stream(_request(), Attempts()):
        read += 1
        await assembler.feed(event)
    await assembler.close()
    await writer.flush()
    if write:
        path.written.append((keyspace.run_stream(path.conversation, run), writer.last_seq - 1))
    return read


async def _assembler(path: _Path) -> int:
    return await _assembled(path, write=False)


async def _writer(path: _Path) -> int:
    return await _assembled(path, write=True)


READS: dict[str, Read] = {"sdk": _sdk, "adapter": _adapter, "guarded": _guarded, "assembler": _assembler, "writer": _writer}
LAYERS = tuple(READS)  # in the order measured, each on top of the ones before


async def _check_written(path: _Path) -> None:
    """Every item the writer layer wrote is in Redis (a writer that wrote nothing would be cheap)."""
    for key, items in path.written:
        stored = await path.redis.xlen(key)
        if items < 1 or stored != items:
            raise RuntimeError(f"the writer layer wrote {items} items to {key}, Redis holds {stored}")
    path.written.clear()


async def _measure(options: LayersOptions, upstream_url: str, redis_url: str, say: Progress) -> dict[str, list[float]]:
    settings = Settings(redis_url=redis_url, providers={"bench": CompatibleProvider(base_url=f"{upstream_url}/v1")})
    path = _Path(Providers(settings).model(f"bench/{MODEL}"), connect(settings), new_id("conv"), settings.stream_write_window_ms / 1000)
    await path.redis.set(keyspace.epoch(path.conversation), 1)
    per_token: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    try:
        await asyncio.gather(*(_writer(path) for _ in range(4)))  # connections, imports, scripts
        for n in range(1, options.rounds + 1):
            say(f"round {n} of {options.rounds}: {options.streams} streams of {options.tokens} tokens, each layer")
            for layer in LAYERS:
                cpu = time.thread_time()
                read = await asyncio.gather(*(READS[layer](path) for _ in range(options.streams)))
                per_token[layer].append(1e6 * (time.thread_time() - cpu) / sum(read))
            await _check_written(path)
    finally:
        adapter: Any = path.model.adapter
        await adapter._client.close()
        await path.redis.aclose()
    return per_token


def run(options: LayersOptions) -> int:
    say = Progress("bench")
    report = Report()
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-layers-"))
    redis = EmbeddedRedis(home)
    context = multiprocessing.get_context("spawn")
    url: Queue[str] = context.Queue()
    upstream = context.Process(target=_serve_upstream, args=(options.tokens, options.rate_hz, url), daemon=True)
    complete = False
    try:
        redis_url = redis.start()
        upstream.start()
        say("upstream starting in a process of its own")
        per_token = asyncio.run(_measure(options, url.get(timeout=UPSTREAM_START_S), redis_url, say))
        report.note("convoy bench layers   a host's CPU per streamed token, layer by layer (this process's main thread)")
        report.section(f"{options.streams} streams at a time, {options.tokens} tokens at {options.rate_hz:g}/s each, {options.rounds} rounds")
        before = 0.0
        for layer in LAYERS:
            median = statistics.median(per_token[layer])
            each = ", ".join(f"{v:.1f}" for v in per_token[layer])
            report.add(f"{layer}, us per token", f"median {median:6.1f}   adds {median - before:+6.1f}   ({each})")
            before = median
        complete = True
    finally:
        report.print(complete=complete)
        upstream.terminate()
        upstream.join(timeout=10)
        redis.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0
