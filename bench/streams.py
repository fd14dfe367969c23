"""``convoy bench streams``: what a chunk's trip from a conversation's writer to a client costs.

Every figure is a per-chunk latency: the producer stamps ``time.perf_counter_ns()`` into the item
right before handing it to the writer, and the consumer subtracts that from its own
``perf_counter_ns()`` when the bytes reach it. On Linux ``perf_counter`` is ``CLOCK_MONOTONIC``,
one clock for every process of the machine, so producer and consumer may live in different
processes (they do). The wall clock (``time_ns``) is carried too, for readers on other machines.

What runs, each in its own process and event loop, as in production (this matters on 2 cores):

- Redis: an embedded Valkey in a temporary home, unless ``CONVOY_REDIS_URL``;
- Ray: a local instance unless ``RAY_ADDRESS``, with the conversation hosts (idle: nothing is
  delivered to them; they are there so the replica's router sees live hosts, as in production;
  not started on a shared Redis, where they would take over the real hosts' conversations);
- the **producer**: a Ray actor pinned to this node, writing every stream of a phase from one
  event loop, as a conversation host does. Ray starts workers at nice 15; the producer puts itself
  back to 0 so that, on one shared machine, priority does not decide the figures;
- one **API replica**: ``convoy api`` (the real FastAPI app on uvicorn) in a subprocess;
- this process (the driver): creates the runs and consumes them.

Each scenario (S streams at R chunks/s each, steady, with random phases) is measured three ways:

- ``convoy, HTTP SSE``: the real ``ChunkWriter`` (fenced script, coalescing while a write is in
  flight) -> Redis -> the replica's ``TailerPool`` -> ``run_events`` -> uvicorn -> an httpx client
  per stream on ``GET /v1/runs/{id}/stream``. This is the product's path, client included;
- ``convoy, bus only``: the same writer -> a ``TailerPool`` subscription in the driver, no HTTP;
- ``baseline, bus only``: a Letta-style bus, written here: the writer buffers chunks and flushes
  them to the run's Redis stream when ``FLUSH_ITEMS`` are buffered, or when a background task
  (every ``FLUSH_CHECK_S``) finds ``FLUSH_AGE_S`` passed since the last flush; the reader polls
  ``XRANGE`` every ``POLL_INTERVAL_S``. It has no HTTP leg, so ``baseline / convoy HTTP`` is a
  lower bound of the end-to-end ratio, and ``baseline / convoy bus`` compares like with like.

Runs are created as ``api.turns.accept_turn`` creates them (``RunStore.index`` and
``Mailbox.accept``) but never delivered to a host: the producer owns them instead, with a fencing
epoch taken the way an activation takes one (``INCR`` of the conversation's epoch key). It moves
each run to ``running``, streams it, and ends it with ``RunStore.finish`` and the real terminal
sequence, so every SSE response ends with ``[DONE]``. Chunks are counted on both sides: a chunk
written and never received is reported.

Nothing is asserted. Figures go to stdout (also when interrupted), progress to stderr. The CPU each
process used during each measured window is printed with it, as a share of a core and per chunk
(net of what the process uses when idle, measured once before the first phase): on a small
machine a saturated process turns latency into queueing, and the figures say so rather than hide
it. That is also why the many-streams scenario defaults to a low rate per stream: its total is
what two cores can carry, not what a token stream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import ray
import redis.asyncio as aioredis
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors import ray_boot, supervisor
from api.state import TAILERS_PER_PROCESS, AppState
from bench import Progress, Report, percentile
from runtime import heap
from runtime.errors import ConvoyError
from runtime.ids import new_id, segment_otid
from runtime.schemas.auth import DEFAULT_TENANT
from runtime.schemas.messages import AssistantMessage, Ping, UsageStatistics, utcnow
from runtime.schemas.requests import SendMessageRequest
from runtime.schemas.runs import RunView
from runtime.schemas.turns import TurnRequest
from runtime.settings import ECHO_MODEL_HANDLE, Settings
from runtime.store import keyspace
from runtime.store.connection import connect
from runtime.store.embedded import EmbeddedRedis
from runtime.store.fencing import Fence
from runtime.store.runs import UNFINISHED_RUN_TTL_S, RunStore
from runtime.stream import wire
from runtime.stream.items import last_seq
from runtime.stream.tailer import TailerPool
from runtime.stream.writer import ChunkWriter

# The baseline bus (Letta-style): batched writes, polled reads.
FLUSH_ITEMS = 50
FLUSH_AGE_S = 0.5
FLUSH_CHECK_S = 0.5
POLL_INTERVAL_S = 0.1
XRANGE_COUNT = 1000

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_RATIO = 100.0

IDLE_S = 3.0
START_MARGIN_S = 0.5  # the producer starts this long after the driver says go
OPEN_CONCURRENCY = 64  # SSE requests being opened at once
CREATE_BATCH = 100
DRAIN_TIMEOUT_S = 30.0  # after the producer's end, every reader must have its terminal item by then
HTTP_TIMEOUT_S = 60.0
BUS_GET_TIMEOUT_S = 5.0
API_START_TIMEOUT_S = 90.0
API_STOP_TIMEOUT_S = 15.0
API_POLL_S = 0.2
LOG_TAIL_CHARS = 2000
TOKEN_TEXT = " token"
OWNER = "bench/producer"
_PR_SET_PDEATHSIG = 1

Mode = Literal["convoy", "baseline"]
Path_ = Literal["http", "bus"]

# Every benchmark chunk's payload starts with its stamps, then the real encoded message follows.
_MEASURED = b'{"bench_measured":true,"bench_sent_ns":'
_WARMUP = b'{"bench_measured":false,"bench_sent_ns":'


@dataclass(frozen=True)
class StreamsOptions:
    """The knobs of one run (defaults live in the CLI, ``api.cli``)."""

    streams: int
    rates_hz: tuple[float, ...]
    many: int
    many_rate_hz: float
    warmup_s: float
    measure_s: float
    http: bool = True
    baseline: bool = True

    def __post_init__(self) -> None:
        if self.streams < 1 or self.many < 0 or self.warmup_s < 0 or self.measure_s <= 0:
            raise ConvoyError(
                "bench streams: --streams and --measure-s must be positive, --many and --warmup-s not negative"
            )
        if any(rate <= 0 for rate in (*self.rates_hz, self.many_rate_hz)):
            raise ConvoyError("bench streams: rates must be positive")

    def scenarios(self) -> list[Scenario]:
        found = [Scenario(self.streams, rate) for rate in self.rates_hz]
        if self.many:
            found.append(Scenario(self.many, self.many_rate_hz))
        return found


@dataclass(frozen=True)
class Scenario:
    streams: int
    rate_hz: float

    @property
    def title(self) -> str:
        return (
            f"{self.rate_hz:g} chunks/s per stream, {self.streams} concurrent stream(s)"
            f"  ({self.streams * self.rate_hz:g} chunks/s in all)"
        )


def _ms(ns: float) -> float:
    return ns / 1e6


# -- the producer: a Ray actor, like a conversation host --------------------------------------------


@dataclass(frozen=True)
class Target:
    """One run being streamed, with the fencing epoch its producer writes under."""

    conversation_id: str
    run_id: str
    entry_id: str
    epoch: int

    @property
    def stream_key(self) -> str:
        return keyspace.run_stream(self.conversation_id, self.run_id)


@dataclass(frozen=True)
class Plan:
    mode: Mode
    targets: list[Target]
    rate_hz: float
    warmup_s: float
    measure_s: float


@dataclass
class Produced:
    """What the producer did in one phase."""

    written: int = 0
    measured: int = 0
    late: int = 0  # ticks that fired more than one period late: the producer could not keep up
    errors: list[str] = field(default_factory=list)


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


@ray.remote(num_cpus=0)
class Producer:
    """Writes every stream of a phase from one process and one event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ray_nice = os.getpriority(os.PRIO_PROCESS, 0)
        _renice(0)
        self._phase: _ProducerPhase | None = None
        heap.freeze()  # as a conversation host does once it is set up (runtime.heap)

    def pid(self) -> tuple[int, int, int]:
        """Process id, niceness Ray gave it, niceness now."""
        return os.getpid(), self._ray_nice, os.getpriority(os.PRIO_PROCESS, 0)

    async def prepare(self, plan: Plan) -> None:
        """Take ownership of every run (created -> running) and open its writer, before any clock starts."""
        redis = connect(self._settings)
        runs = RunStore(redis, ttl_s=self._settings.stream_ttl_s, maxlen=self._settings.stream_maxlen)
        writers: list[ChunkWriter | BatchedWriter] = []
        for start in range(0, len(plan.targets), CREATE_BATCH):
            chunk = plan.targets[start : start + CREATE_BATCH]
            await asyncio.gather(*(runs.start(_fence(t), t.run_id) for t in chunk))
            if plan.mode == "convoy":
                writers += await asyncio.gather(*(self._chunk_writer(redis, t) for t in chunk))
            else:
                writers += [self._batched_writer(redis, t) for t in chunk]
        self._phase = _ProducerPhase(plan, redis, runs, writers)

    async def produce(self, start_ns: int) -> Produced:
        """Stream every run from ``start_ns`` (``perf_counter_ns``) for warm-up + measure, then end them."""
        phase, self._phase = self._phase, None
        assert phase is not None
        plan = phase.plan
        done = Produced()
        period_ns = int(1e9 / plan.rate_hz)
        warm_end_ns = start_ns + int(plan.warmup_s * 1e9)
        end_ns = warm_end_ns + int(plan.measure_s * 1e9)
        batched = [w for w in phase.writers if isinstance(w, BatchedWriter)]
        flusher = asyncio.create_task(_flush_stale(batched)) if batched else None
        try:
            await asyncio.gather(
                *(
                    self._stream(
                        phase, t, w, start_ns + random.randrange(period_ns), period_ns, warm_end_ns, end_ns, done
                    )
                    for t, w in zip(plan.targets, phase.writers, strict=True)
                )
            )
        finally:
            if flusher is not None:
                flusher.cancel()
            await phase.redis.aclose()
        return done

    async def _chunk_writer(self, redis: aioredis.Redis, target: Target) -> ChunkWriter:
        """A run's writer, opened exactly as a conversation activation opens it."""
        return ChunkWriter(
            redis,
            stream_key=target.stream_key,
            epoch_key=keyspace.epoch(target.conversation_id),
            epoch=target.epoch,
            next_seq=await last_seq(redis, target.stream_key) + 1,
            maxlen=self._settings.stream_maxlen,
            ttl_s=self._settings.stream_ttl_s,
            patience_s=self._settings.store_outage_s,
        )

    def _batched_writer(self, redis: aioredis.Redis, target: Target) -> BatchedWriter:
        settings = self._settings
        return BatchedWriter(redis, target.stream_key, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s)

    async def _stream(
        self,
        phase: _ProducerPhase,
        target: Target,
        writer: ChunkWriter | BatchedWriter,
        first_ns: int,
        period_ns: int,
        warm_end_ns: int,
        end_ns: int,
        done: Produced,
    ) -> None:
        """One run: a chunk every ``period_ns`` (never in bursts to catch up), then its end."""
        message_id = f"message-{target.run_id[4:]}"
        message = AssistantMessage(id=message_id, otid=segment_otid(message_id, 0), content=TOKEN_TEXT)
        message.run_id = target.run_id
        seq = 2  # the baseline's own count (its entry ids are Redis's); 1 is the accept ping
        next_ns = first_ns
        try:
            while True:
                delay_ns = next_ns - time.perf_counter_ns()
                if delay_ns > 0:
                    await asyncio.sleep(delay_ns / 1e9)
                tick_ns = time.perf_counter_ns()
                if tick_ns >= end_ns:
                    break
                if tick_ns - next_ns > period_ns:
                    done.late += 1
                    next_ns = tick_ns
                measured = tick_ns >= warm_end_ns
                message.seq_id = writer.reserve() if isinstance(writer, ChunkWriter) else seq
                body = wire.encode(message)
                sent_ns = time.perf_counter_ns()
                head = _MEASURED if measured else _WARMUP
                await writer.write("data", head + b'%d,"bench_sent_wall_ns":%d,' % (sent_ns, time.time_ns()) + body[1:])
                seq += 1
                done.written += 1
                done.measured += measured
                next_ns += period_ns
            await self._finish(phase.runs, target, writer)
        except Exception as exc:  # measured, not hidden: reported with the figures
            done.errors.append(f"producer {target.run_id}: {type(exc).__name__}: {exc}")

    async def _finish(self, runs: RunStore, target: Target, writer: ChunkWriter | BatchedWriter) -> None:
        """End the run as its owner would: the terminal items and status in one fenced step (the
        baseline's entry ids are Redis's own, so its end marker goes through its own writer, and
        its run, which nothing else reads, is left as it is)."""
        if isinstance(writer, BatchedWriter):
            await writer.write("done", wire.DONE_PAYLOAD)
            await writer.flush()
            return
        await writer.flush()
        await runs.end(
            target.run_id,
            conversation_id=target.conversation_id,
            ending=wire.Completed("end_turn", UsageStatistics(run_ids=[target.run_id])),
            fence=_fence(target),
            next_seq=writer.reserve(),
            mailbox_entry=target.entry_id,
        )


@dataclass(frozen=True)
class _ProducerPhase:
    plan: Plan
    redis: aioredis.Redis
    runs: RunStore
    writers: list[ChunkWriter | BatchedWriter]


def _fence(target: Target) -> Fence:
    return Fence(target.conversation_id, target.epoch, OWNER)


def _renice(nice: int) -> None:
    """Ray starts workers at nice 15; on one shared machine that lets the API replica and the
    clients (nice 0) starve the writer, a priority effect rather than a cost of the bus. Linux
    keeps niceness per thread, so every thread of the process is set."""
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)


async def _flush_stale(writers: Sequence[BatchedWriter]) -> None:
    while True:
        await asyncio.sleep(FLUSH_CHECK_S)
        await asyncio.gather(*(w.flush_if_stale() for w in writers), return_exceptions=True)


# -- the consumers (in the driver) ------------------------------------------------------------------


@dataclass
class Samples:
    """What the readers of one phase received."""

    latencies_ns: list[int] = field(default_factory=list)
    received: int = 0
    finished: int = 0

    def take(self, payload: bytes, now_ns: int) -> None:
        measured = payload.startswith(_MEASURED)
        if not measured and not payload.startswith(_WARMUP):
            return  # the accept ping, stop_reason, usage_statistics
        self.received += 1
        if measured:
            start = len(_MEASURED)
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


def _process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    at_s: float
    processes: dict[str, float]
    machine_busy_s: float


def _cpu_snapshot(pids: dict[str, int | None]) -> CpuSnapshot:
    known = {name: _process_cpu_s(pid) for name, pid in pids.items() if pid is not None}
    return CpuSnapshot(time.monotonic(), known, _machine_busy_s())


def _idle_share(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Each process's CPU share (cores) between two snapshots."""
    span = max(1e-9, b.at_s - a.at_s)
    return {n: (b.processes[n] - a.processes[n]) / span for n in a.processes}


def _cpu_text(a: CpuSnapshot, b: CpuSnapshot, chunks: int, idle: dict[str, float]) -> tuple[str, str]:
    """CPU used between two snapshots: in % of one core (the machine has ``os.cpu_count()``), and
    in CPU microseconds per chunk of the window, per process, net of what it uses when idle."""
    span = max(1e-9, b.at_s - a.at_s)
    used = {n: b.processes[n] - a.processes[n] for n in a.processes}
    machine = 100 * (b.machine_busy_s - a.machine_busy_s) / span
    shares = "  ".join(f"{n} {100 * v / span:.0f}" for n, v in used.items())
    rest = max(0.0, machine - 100 * sum(used.values()) / span)
    per_chunk_us = {n: max(0.0, 1e6 * (v - idle.get(n, 0.0) * span) / max(1, chunks)) for n, v in used.items()}
    cost = "  ".join(f"{n} {v:.0f}" for n, v in per_chunk_us.items())
    total_us = sum(per_chunk_us.values())
    return (
        f"cpu, % of a core: {shares}  | machine {machine:.0f} of {100 * (os.cpu_count() or 1)}, rest {rest:.0f}",
        f"cpu per chunk, us, net of idle: {cost}  | all {total_us:.0f} us = {1e6 / max(1e-9, total_us):.0f} chunks/s per core",
    )


# -- the API replica ---------------------------------------------------------------------------------


class ApiReplica:
    """``convoy api`` in a subprocess, on a free loopback port, against our Redis and Ray.

    It dies with this process (parent-death signal) and in its own session, so a Ctrl-C reaches
    the driver only, which then stops it first, before Ray and Redis."""

    def __init__(self, settings: Settings, home: Path, ray_address: str) -> None:
        self._settings = settings
        self._home = home
        self._ray_address = ray_address
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = home / "api.log"
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> str:
        port = _free_port()
        env = {
            **os.environ,
            "CONVOY_HOME": str(self._home),
            "CONVOY_REDIS_URL": self._settings.redis_url or "",
            "RAY_ADDRESS": self._ray_address,
            "CONVOY_RAY_NAMESPACE": self._settings.ray_namespace,
            "CONVOY_LOG_LEVEL": "WARNING",
        }
        boot = (
            "import ctypes, signal, sys\n"
            f"ctypes.CDLL('libc.so.6').prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
            "from api.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        command = [sys.executable, "-c", boot, "api", "--host", "127.0.0.1", "--port", str(port)]
        with open(self._log, "wb") as log_file:
            self._proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + API_START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise ConvoyError(f"the API replica exited with code {self._proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/metrics").status_code == 200:
                        return
                time.sleep(API_POLL_S)
        raise ConvoyError(f"the API replica did not answer within {API_START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, then the lifespan's
        try:
            proc.wait(timeout=API_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the driver: start, measure, stop ---------------------------------------------------------------


def run(settings: Settings, options: StreamsOptions) -> int:
    """Start Redis, Ray, a producer and an API replica, measure every scenario, stop them again."""
    say = Progress("bench")
    report = Report()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    previous_term = signal.getsignal(signal.SIGTERM)
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-streams-"))
    # A private home always: it holds the Ray token of the Ray we start (never clobber ~/.convoy's).
    settings = settings.model_copy(update={"home": home})
    embedded: EmbeddedRedis | None = None
    api: ApiReplica | None = None
    producer: ActorHandle[Any] | None = None
    started_ray = not settings.ray_address
    hosts_started = False
    complete = False
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis(home)
            settings = settings.model_copy(update={"redis_url": embedded.start()})
            say(f"redis   embedded at {settings.redis_url} (temporary home {home})")
        else:
            say(f"redis   {settings.redis_url} (shared: the benchmark deletes its own keys at the end)")
        if not started_ray:
            # Someone else's Ray: private hosts, so theirs never see our Redis (and ours end with us).
            namespace = f"{settings.ray_namespace}-bench-{uuid.uuid4().hex[:8]}"
            settings = settings.model_copy(update={"ray_namespace": namespace})
        gcs = ray_boot.connect(settings, start_local=True)
        # After Ray (it installs its own SIGTERM handler): stopped like Ctrl-C, everything cleaned up.
        signal.signal(signal.SIGTERM, _interrupt)
        say(f"ray     {'local instance' if started_ray else 'cluster'} at {gcs}")
        if embedded is not None:
            # The replica in its normal state: its router watches live hosts (none runs our runs).
            # Never on a shared Redis: hosts with the usual names would take over the real ones' conversations.
            supervisor.ensure_hosts(settings)
            hosts_started = True
            say(f"hosts   {len(supervisor.host_names(settings))} idle conversation host(s) ready")
        else:
            say("hosts   none (shared Redis): the replica's router finds no host, as when all are down")
        producer = Producer.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        ).remote(settings)
        producer_pid, ray_nice, nice = ray.get(producer.pid.remote())
        pids = {"redis": embedded.pid if embedded else None, "producer": producer_pid}
        say(f"producer ready (Ray actor, pid {producer_pid}, nice {ray_nice} -> {nice})")
        if options.http:
            api = ApiReplica(settings, home, gcs)
            say(f"api     replica at {api.start()} (pid {api.pid})")
        pids |= {"api": api.pid if api else None, "client": os.getpid()}
        setup = f"producer: Ray actor at nice {nice} (Ray gave it {ray_nice}); API replica: `convoy api`, own process"
        asyncio.run(_measure(settings, options, producer, api, pids, setup, report, say))
        complete = True
        return 0
    finally:
        report.print(complete=complete)
        if api is not None:
            api.stop()
        if producer is not None and ray.is_initialized():
            with contextlib.suppress(Exception):
                ray.kill(producer)
        if hosts_started and not started_ray and ray.is_initialized():
            supervisor.kill_hosts(settings)
        if started_ray:
            ray_boot.disconnect()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(home, ignore_errors=True)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        say("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass
class World:
    """What every phase uses."""

    settings: Settings
    state: AppState
    producer: ActorHandle[Any]
    api: ApiReplica | None
    pids: dict[str, int | None]
    agent_id: str
    conversations: list[tuple[str, int]]  # (conversation id, epoch)
    made_runs: list[Target] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    label: str
    latencies_ms: list[float]
    produced: Produced
    samples: Samples
    streams: int
    cpu: tuple[CpuSnapshot, CpuSnapshot]

    def dist(self) -> str:
        values = self.latencies_ms
        return (
            f"p50 {percentile(values, 50):8.2f} ms   p99 {percentile(values, 99):8.2f} ms"
            f"   max {max(values, default=float('nan')):8.2f} ms   (n={len(values)})"
        )


async def _measure(
    settings: Settings,
    options: StreamsOptions,
    producer: ActorHandle[Any],
    api: ApiReplica | None,
    pids: dict[str, int | None],
    setup: str,
    report: Report,
    say: Progress,
) -> None:
    state = AppState.build(settings)
    world: World | None = None
    try:
        world = await _world(state, options, producer, api, pids, say)
        info = await state.redis.info("server")
        server = (
            f"valkey {info['valkey_version']}" if "valkey_version" in info else f"redis {info.get('redis_version')}"
        )
        report.section(
            f"convoy bench streams   ray={ray.__version__}  cpus={os.cpu_count()}  {server}"
            f"  load avg (1 min) at start {os.getloadavg()[0]:.2f}"
        )
        report.note(setup)
        report.note(
            f"warm-up {options.warmup_s:g} s, then {options.measure_s:g} s measured per phase; latency = consumer"
            " receive - producer write (CLOCK_MONOTONIC, one machine)"
        )
        report.note(
            f"targets: convoy p50 < {TARGET_P50_MS:g} ms and p99 < {TARGET_P99_MS:g} ms (quiet machine);"
            f" baseline p50 >= {TARGET_RATIO:g}x convoy's"
        )
        say(f"idle: {IDLE_S:g} s of nothing, to know what each process costs at rest")
        first = _cpu_snapshot(pids)
        await asyncio.sleep(IDLE_S)
        last = _cpu_snapshot(pids)
        idle = _idle_share(first, last)
        shares = "  ".join(f"{n} {100 * v:.1f}" for n, v in idle.items())
        machine = 100 * (last.machine_busy_s - first.machine_busy_s) / (last.at_s - first.at_s)
        report.note(
            f"idle cpu, % of a core: {shares}  (taken out of the per-chunk costs below);"
            f" machine {machine:.0f} of {100 * (os.cpu_count() or 1)} before any traffic"
        )
        report.note("rest = every other process: Ray's daemons, the idle hosts, and whatever else runs on this machine")
        outcomes: dict[Scenario, dict[str, Outcome]] = {}
        for scenario in options.scenarios():
            report.section(scenario.title)
            found = outcomes.setdefault(scenario, {})
            phases: list[tuple[str, Mode, Path_]] = [("convoy, bus only (ChunkWriter -> TailerPool)", "convoy", "bus")]
            if options.http:
                phases.insert(0, ("convoy, HTTP SSE (ChunkWriter -> replica -> httpx)", "convoy", "http"))
            if options.baseline:
                phases.append(("baseline, bus only (batched writer -> XRANGE poll)", "baseline", "bus"))
            for label, mode, path in phases:
                say(f"{scenario.streams} x {scenario.rate_hz:g}/s: {label}")
                outcome = await _phase(world, options, scenario, label, mode, path, report, say)
                found[f"{mode}-{path}"] = outcome
                _print_outcome(report, outcome, scenario, options, mode, idle)
        _compare(outcomes, report)
    finally:
        if world is not None and pids.get("redis") is None:  # a shared Redis: leave it as we found it
            await _forget(world)
        await state.redis.aclose()


def _print_outcome(
    report: Report, outcome: Outcome, scenario: Scenario, options: StreamsOptions, mode: Mode, idle: dict[str, float]
) -> None:
    target = f"   target p50 < {TARGET_P50_MS:g}, p99 < {TARGET_P99_MS:g}" if mode == "convoy" else ""
    report.add(outcome.label, outcome.dist() + target)
    produced, samples = outcome.produced, outcome.samples
    wanted = scenario.streams * scenario.rate_hz * options.measure_s
    lost = produced.written - samples.received
    report.add(
        "  chunks",
        f"measured {produced.measured} of {wanted:.0f} scheduled ({100 * produced.measured / max(1, wanted):.0f}%),"
        f" late ticks {produced.late}, written {produced.written}, not received {lost},"
        f" streams ended {samples.finished}/{outcome.streams}",
    )
    share, cost = _cpu_text(*outcome.cpu, produced.measured, idle)
    report.add("", share)
    report.add("", cost)


def _compare(outcomes: dict[Scenario, dict[str, Outcome]], report: Report) -> None:
    report.section(f"baseline / convoy (target: p50 >= {TARGET_RATIO:g}x)")
    for scenario, found in outcomes.items():
        base = found.get("baseline-bus")
        if base is None or not base.latencies_ms:
            continue
        for key, what in (("convoy-bus", "bus / bus"), ("convoy-http", "bus / HTTP, lower bound")):
            mine = found.get(key)
            if mine is None or not mine.latencies_ms:
                continue
            p50 = percentile(base.latencies_ms, 50) / percentile(mine.latencies_ms, 50)
            p99 = percentile(base.latencies_ms, 99) / percentile(mine.latencies_ms, 99)
            label = f"{scenario.streams} x {scenario.rate_hz:g}/s ({what})"
            report.add(label, f"p50 {p50:8.0f} x   p99 {p99:8.0f} x")


async def _world(
    state: AppState,
    options: StreamsOptions,
    producer: ActorHandle[Any],
    api: ApiReplica | None,
    pids: dict[str, int | None],
    say: Progress,
) -> World:
    """One agent and as many conversations as the largest scenario needs, each with an epoch."""
    agent = await state.agents.create(tenant=DEFAULT_TENANT, name="bench-streams", model=ECHO_MODEL_HANDLE, system="")
    count = max(s.streams for s in options.scenarios())
    world = World(state.settings, state, producer, api, pids, agent.id, [])
    for start in range(0, count, CREATE_BATCH):
        batch = min(CREATE_BATCH, count - start)
        convs = await asyncio.gather(*(state.conversations.create(agent) for _ in range(batch)))
        epochs = await asyncio.gather(*(state.redis.incr(keyspace.epoch(c.id)) for c in convs))
        world.conversations += [(c.id, int(e)) for c, e in zip(convs, epochs, strict=True)]
    say(f"created {count} conversations (agent {agent.id}), each with a fencing epoch")
    return world


async def _open_runs(world: World, count: int) -> list[Target]:
    """A new run in each of the first ``count`` conversations, accepted like ``accept_turn`` does
    (index, then run hash + first item + mailbox entry in one step), never delivered to a host."""
    state = world.state

    async def one(conversation_id: str, epoch: int) -> Target:
        run_id = new_id("run")
        view = RunView(
            id=run_id,
            agent_id=world.agent_id,
            conversation_id=conversation_id,
            status="created",
            background=True,
            created_at=utcnow(),
            metadata={"run_type": "streaming"},
        )
        body = SendMessageRequest(input="bench streams")
        turn = TurnRequest(
            run_id=run_id,
            agent_id=world.agent_id,
            conversation_id=conversation_id,
            messages=body.input_messages(),
            accepted_at_ns=time.time_ns(),
        )
        await state.runs.index(view)
        accepted = await state.mailbox.accept(
            conversation_id,
            run_id,
            turn.model_dump_json().encode(),
            on_busy="queue",
            run_fields=state.runs.initial_fields(view),
            first_item=wire.encode(Ping(id=f"ping-{run_id[4:]}", run_id=run_id, seq_id=1)),
            stream_ttl_s=state.settings.stream_ttl_s,
            run_ttl_s=UNFINISHED_RUN_TTL_S,
        )
        assert accepted.entry_id is not None
        return Target(conversation_id, run_id, accepted.entry_id, epoch)

    targets: list[Target] = []
    for start in range(0, count, CREATE_BATCH):
        chunk = world.conversations[start : min(count, start + CREATE_BATCH)]
        targets += await asyncio.gather(*(one(c, e) for c, e in chunk))
    world.made_runs += targets
    return targets


async def _phase(
    world: World,
    options: StreamsOptions,
    scenario: Scenario,
    label: str,
    mode: Mode,
    path: Path_,
    report: Report,
    say: Progress,
) -> Outcome:
    targets = await _open_runs(world, scenario.streams)
    samples = Samples()
    gate = Gate(scenario.streams)
    async with contextlib.AsyncExitStack() as stack:
        readers = await _start_readers(world, stack, targets, samples, gate, mode, path)
        stack.push_async_callback(_cancel, readers)  # first out: readers stop before their client or pool closes
        await gate.wait()
        say(f"  {len(targets)} readers ready")
        # What this process holds now, its set-up and the readers, is frozen out of its collections
        # (an API replica freezes its start-up heap the same way). Over HTTP this process is only the client, and its own
        # collections are not Convoy's latency (logged per process: in the phases at 1,000 streams,
        # every pause over 2 ms was the client's, 5-37 ms each, none the replica's), so its collector
        # stays off while the phase runs. On the bus path it hosts Convoy's TailerPool, whose
        # collections are Convoy's: the collector runs there as it does in a replica. Both undone
        # after the phase, when it collects.
        gc.freeze()
        stack.callback(gc.unfreeze)
        if path == "http":
            gc.disable()
            stack.callback(gc.enable)
        plan = Plan(mode, targets, scenario.rate_hz, options.warmup_s, options.measure_s)
        await world.producer.prepare.remote(plan)
        start_ns = time.perf_counter_ns() + int(START_MARGIN_S * 1e9)
        produced_ref = world.producer.produce.remote(start_ns)
        await _sleep_until(start_ns + int(options.warmup_s * 1e9))
        before = _cpu_snapshot(world.pids)
        await _sleep_until(start_ns + int((options.warmup_s + options.measure_s) * 1e9))
        after = _cpu_snapshot(world.pids)
        produced: Produced = await produced_ref
        say(f"  produced {produced.written} chunks, {produced.late} late ticks; draining readers")
        await _drain(readers, report, label)
    report.errors += produced.errors
    latencies = [_ms(v) for v in samples.latencies_ns]
    say(f"  p50 {percentile(latencies, 50):.2f} ms  p99 {percentile(latencies, 99):.2f} ms  (n={len(latencies)})")
    return Outcome(label, latencies, produced, samples, scenario.streams, (before, after))


async def _start_readers(
    world: World,
    stack: contextlib.AsyncExitStack,
    targets: list[Target],
    samples: Samples,
    gate: Gate,
    mode: Mode,
    path: Path_,
) -> list[asyncio.Task[None]]:
    if path == "http":
        assert world.api is not None
        limits = httpx.Limits(max_connections=len(targets) + 8, max_keepalive_connections=len(targets) + 8)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=world.api.url, timeout=HTTP_TIMEOUT_S, limits=limits)
        )
        opening = asyncio.Semaphore(OPEN_CONCURRENCY)
        return [asyncio.create_task(read_sse(client, t, samples, gate, opening)) for t in targets]
    reader: Callable[[Target], Coroutine[Any, Any, None]]
    if mode == "convoy":
        # Built as an API replica builds its own (api.state.AppState).
        pool = TailerPool(world.state.redis, block_ms=world.settings.read_block_ms, size=TAILERS_PER_PROCESS)
        await pool.start()
        stack.push_async_callback(pool.stop)

        def reader(t: Target) -> Coroutine[Any, Any, None]:
            return read_bus(pool, t, samples)
    else:

        def reader(t: Target) -> Coroutine[Any, Any, None]:
            return poll_xrange(world.state.redis, t, samples)

    tasks: list[asyncio.Task[None]] = [asyncio.create_task(reader(t)) for t in targets]
    for _ in targets:
        gate.ready()
    return tasks


async def _drain(readers: list[asyncio.Task[None]], report: Report, label: str) -> None:
    """Wait for every reader's terminal item (bounded); record the ones that failed."""
    _, pending = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT_S)
    await _cancel(list(pending))
    for task in readers:
        if task.cancelled():
            report.errors.append(f"{label}: a reader had no terminal item {DRAIN_TIMEOUT_S:g} s after the end")
        elif (exc := task.exception()) is not None:
            report.errors.append(f"{label}: reader failed: {type(exc).__name__}: {exc}")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _sleep_until(perf_ns: int) -> None:
    await asyncio.sleep(max(0.0, (perf_ns - time.perf_counter_ns()) / 1e9))


async def _forget(world: World) -> None:
    """On a shared Redis: delete every key this benchmark created."""
    redis = world.state.redis
    async with redis.pipeline(transaction=False) as pipe:
        for target in world.made_runs:
            pipe.delete(keyspace.run(target.conversation_id, target.run_id), target.stream_key)  # one hash slot
            pipe.delete(keyspace.run_ref(target.run_id))
            pipe.zrem(keyspace.runs_index(DEFAULT_TENANT), target.run_id)
        for conversation_id, _ in world.conversations:
            pipe.delete(
                keyspace.conversation(conversation_id),
                keyspace.mailbox(conversation_id),
                keyspace.epoch(conversation_id),
                keyspace.conversation_runs(conversation_id),
            )
            pipe.zrem(keyspace.conversations_index(DEFAULT_TENANT), conversation_id)
        pipe.delete(
            keyspace.agent(world.agent_id), keyspace.agent_conversations(world.agent_id), keyspace.agent_runs(world.agent_id)
        )
        pipe.zrem(keyspace.agents_index(DEFAULT_TENANT), world.agent_id)
        await pipe.execute()
