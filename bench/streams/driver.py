"""The driver: builds the world (Redis, Ray, producer, replica), runs each scenario's phases and
prints their figures and ratios."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors import ray_boot, supervisor
from actors.mailbox import Mailbox
from api.state import TAILERS_PER_PROCESS, AppState
from bench import Progress, Report, percentile
from bench.clients import ClientProcesses, split
from bench.streams import sse
from bench.streams.baseline import poll_xrange
from bench.streams.consumers import Samples, read_bus
from bench.streams.cpu import CLIENTS, CpuSnapshot, cpu_snapshot, cpu_text, idle_share
from bench.streams.plan import (
    CLIENTS_READY_TIMEOUT_S,
    CREATE_BATCH,
    DRAIN_TIMEOUT_S,
    IDLE_S,
    START_MARGIN_S,
    TARGET_P50_MS,
    TARGET_P99_MS,
    TARGET_RATIO,
    Mode,
    Path_,
    Plan,
    Produced,
    Scenario,
    StreamsOptions,
    Target,
    ms,
)
from bench.streams.producer import Producer
from bench.streams.replica import ApiReplica
from runtime.ids import new_id
from runtime.schemas.auth import DEFAULT_TENANT
from runtime.schemas.messages import Ping, utcnow
from runtime.schemas.requests import SendMessageRequest
from runtime.schemas.runs import RunView
from runtime.schemas.turns import TurnRequest
from runtime.settings import ECHO_MODEL_HANDLE, Settings
from runtime.store import keyspace
from runtime.store.embedded import EmbeddedRedis
from runtime.store.runs import UNFINISHED_RUN_TTL_S
from runtime.stream import wire
from runtime.stream.tailer import TailerPool


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
        pids = {"redis": [embedded.pid] if embedded else [], "producer": [producer_pid]}
        say(f"producer ready (Ray actor, pid {producer_pid}, nice {ray_nice} -> {nice})")
        if options.http:
            api = ApiReplica(settings, home, gcs)
            say(f"api     replica at {api.start()} (pid {api.pid})")
        pids |= {"api": [api.pid] if api and api.pid else [], "driver": [os.getpid()]}
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
    pids: dict[str, list[int]]
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
    pids: dict[str, list[int]],
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
        first = cpu_snapshot(pids)
        await asyncio.sleep(IDLE_S)
        last = cpu_snapshot(pids)
        idle = idle_share(first, last)
        shares = "  ".join(f"{n} {100 * v:.1f}" for n, v in idle.items())
        machine = 100 * (last.machine_busy_s - first.machine_busy_s) / (last.at_s - first.at_s)
        report.note(
            f"idle cpu, % of a core: {shares}  (taken out of the per-chunk costs below);"
            f" machine {machine:.0f} of {100 * (os.cpu_count() or 1)} before any traffic"
        )
        report.note("rest = every other process: Ray's daemons, the idle hosts, and whatever else runs on this machine")
        report.note(
            "over HTTP the SSE clients run in client processes of their own (clients: their CPU, never counted in"
            " the server's); on the bus paths the driver reads (driver: a TailerPool or the baseline's poller)"
        )
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
        if world is not None and not pids["redis"]:  # a shared Redis: leave it as we found it
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
    for line in cpu_text(*outcome.cpu, produced.measured, idle):
        report.add("", line)


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
    pids: dict[str, list[int]],
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
        accepted = await Mailbox(state.redis).accept(
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
    groups = {name: world.pids[name] for name in ("redis", "producer", "api")}
    samples = Samples()
    with ClientProcesses() as clients:
        async with contextlib.AsyncExitStack() as stack:
            if path == "http":
                deadlines = await _start_clients(world, clients, targets, options.clients_for(len(targets)))
                groups[CLIENTS] = clients.pids
                say(f"  {len(targets)} SSE readers ready in {len(clients.pids)} client process(es)")
            else:
                readers = await _start_readers(world, stack, targets, samples, mode)
                stack.push_async_callback(_cancel, readers)  # first out: readers stop before their pool closes
                groups["driver"] = world.pids["driver"]
                # What the driver holds now, its set-up and the readers, is frozen out of its
                # collections (an API replica freezes its start-up heap the same way); its collector
                # stays on: it hosts Convoy's TailerPool here, whose collections are Convoy's, as in
                # a replica. Undone after the phase, when it collects.
                gc.freeze()
                stack.callback(gc.unfreeze)
                say(f"  {len(targets)} readers ready")
            plan = Plan(mode, targets, scenario.rate_hz, options.warmup_s, options.measure_s)
            await world.producer.prepare.remote(plan)
            start_ns = time.perf_counter_ns() + int(START_MARGIN_S * 1e9)
            produced_ref = world.producer.produce.remote(start_ns)
            await _sleep_until(start_ns + int(options.warmup_s * 1e9))
            before = cpu_snapshot(groups)
            await _sleep_until(start_ns + int((options.warmup_s + options.measure_s) * 1e9))
            after = cpu_snapshot(groups)
            produced: Produced = await produced_ref
            say(f"  produced {produced.written} chunks, {produced.late} late ticks; draining readers")
            if path == "http":
                samples = await _finish_clients(clients, deadlines, report, label)
            else:
                await _drain(readers, report, label)
    report.errors += produced.errors
    latencies = [ms(v) for v in samples.latencies_ns]
    say(f"  p50 {percentile(latencies, 50):.2f} ms  p99 {percentile(latencies, 99):.2f} ms  (n={len(latencies)})")
    return Outcome(label, latencies, produced, samples, scenario.streams, (before, after))


async def _start_clients(world: World, clients: ClientProcesses, targets: list[Target], processes: int) -> list[Any]:
    """The SSE readers, ``processes`` client processes with a round-robin share of ``targets`` each
    (``bench.streams.sse``); back once every one has opened its streams. Returns the queues that
    will tell each process its drain deadline."""
    assert world.api is not None
    shares = split(targets, processes)
    ready = clients.queue()
    deadlines = [clients.queue() for _ in shares]
    clients.start(sse.consume, [(world.api.url, share, ready, d) for share, d in zip(shares, deadlines, strict=True)])
    for _ in shares:
        await asyncio.to_thread(ready.get, timeout=CLIENTS_READY_TIMEOUT_S)
    return deadlines


async def _finish_clients(clients: ClientProcesses, deadlines: list[Any], report: Report, label: str) -> Samples:
    """Give every client process until ``DRAIN_TIMEOUT_S`` from now for its terminal items, then
    merge what they received into one set of samples."""
    until_ns = time.perf_counter_ns() + int(DRAIN_TIMEOUT_S * 1e9)
    for deadline in deadlines:
        deadline.put(until_ns)
    shares: list[sse.Share] = await asyncio.to_thread(clients.gather, DRAIN_TIMEOUT_S + CLIENTS_READY_TIMEOUT_S)
    merged = Samples()
    for share in shares:
        merged.merge(share.samples)
        report.errors += [f"{label}: {error}" for error in share.errors]
    return merged


async def _start_readers(
    world: World,
    stack: contextlib.AsyncExitStack,
    targets: list[Target],
    samples: Samples,
    mode: Mode,
) -> list[asyncio.Task[None]]:
    """The bus readers, in the driver: a ``TailerPool`` subscription each, or the baseline's poller."""
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

    return [asyncio.create_task(reader(t)) for t in targets]


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
