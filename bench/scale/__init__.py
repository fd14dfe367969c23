"""``convoy bench scale``: Convoy deployed as across machines, on this one, with one Redis shard and
with several, in the same run.

Per phase (one per ``--shards`` value; 1 is one Redis server, N a Redis Cluster of N primaries):
``bench.scale.deploy`` starts Redis, a two-node Ray cluster, ``convoy serve`` (the conversation hosts
and API replica 1) and ``convoy api`` (replica 2). Client processes (``bench.scale.client``) spread
every request over the two replicas, round-robin as a load balancer would, and

1. create ``--conversations`` conversations of one agent and leave them idle: the memory each one
   costs (Redis ``used_memory`` and the replicas' and hosts' RSS, per conversation);
2. stream turns on ``--streams`` of them at once (their first turns started evenly over a turn's
   length, so turns go on starting at a steady rate), each turn ``--tokens`` tokens at ``--rate``
   tokens/s from a local upstream (``bench.scale.upstream``) that stamps every token with its write time:
   per-token latency (upstream write -> client read) p50/p99, time to first token, items/s, and the
   CPU each kind of process spent per item (API replicas, hosts, Redis, clients, and the upstream,
   which runs in this process), from /proc, over the measured window.

Nothing is asserted: the figures, the targets and whether they were met are printed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import KIB, Progress, Report, machine_busy_s, percentile, process_cpu_s, process_memory
from bench.clients import ClientProcesses, busiest, split
from bench.scale import client
from bench.scale.deploy import Deployment
from bench.scale.upstream import MODEL, StampingUpstream

SPAWN_S = 5.0  # client processes start this long after being spawned (imports, connections)
TARGET_P99_MS = 50.0
KINDS = ("api", "host", "redis", "client", "upstream")


@dataclass(frozen=True)
class ScaleOptions:
    conversations: int = 100_000
    streams: int = 1_000
    tokens: int = 10
    rate_hz: float = 0.2
    shards: tuple[int, ...] = (1, 3)
    clients: int = 4
    warmup_s: float = 10.0
    measure_s: float = 30.0


@dataclass
class Phase:
    shards: int
    created: int = 0
    create_s: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)  # bytes per idle conversation, by kind
    seen: client.Seen = field(default_factory=client.Seen)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds in the measured window, by kind
    client_peak: float = 0.0  # the busiest client process's share of a core
    window_s: float = 0.0
    create_cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds spent creating, by kind
    machine_busy: float = 0.0  # cores busy on the whole machine just before streaming (others' work included)


def _machine_busy(seconds: float = 2.0) -> float:
    """Cores busy on the whole machine over ``seconds`` (/proc/stat), whoever uses them."""
    (busy0, at0), _ = (machine_busy_s(), time.monotonic()), time.sleep(seconds)
    return (machine_busy_s() - busy0) / max(1e-9, time.monotonic() - at0)


def _phase(home: Path, shards: int, upstream: StampingUpstream, opts: ScaleOptions, say: Progress) -> Phase:
    phase = Phase(shards)
    deployment = Deployment(home / f"shards-{shards}", shards, upstream.url)
    try:
        deployment.start(say)
        urls = deployment.urls
        agent = httpx.post(f"{urls[0]}/v1/agents", json={"name": "scale", "model": f"bench/{MODEL}"}, timeout=30).json()["id"]
        pids = deployment.pids()
        rss_before = {k: sum(process_memory(p)["rss_bytes"] for p in pids[k]) for k in ("api", "host")}
        redis_before = deployment.redis_used_bytes()

        say(f"creating {opts.conversations:,} conversations through {len(urls)} replicas from {opts.clients} client processes")
        started = time.monotonic()
        creating = {"api": pids["api"], "redis": pids["redis"]}
        cpu_before = {kind: sum(process_cpu_s(p) for p in group) for kind, group in creating.items()}
        created = client.create_from(opts.clients, urls, agent, opts.conversations, say, timeout_s=max(600.0, opts.conversations / 50))
        phase.create_s = time.monotonic() - started
        phase.create_cpu_s = {kind: sum(process_cpu_s(p) for p in group) - cpu_before[kind] for kind, group in creating.items()}
        phase.create_cpu_s["client"] = created.cpu_s
        phase.created = len(created.created)
        phase.seen.errors += created.errors
        phase.seen.error_count += created.error_count
        say(f"created {phase.created:,} in {phase.create_s:.1f} s; they stay idle")
        time.sleep(2.0)  # let the replicas' and hosts' allocations settle before reading memory
        if phase.created:
            phase.memory = {
                "redis": (deployment.redis_used_bytes() - redis_before) / phase.created,
                **{k: (sum(process_memory(p)["rss_bytes"] for p in pids[k]) - rss_before[k]) / phase.created for k in rss_before},
            }

        phase.machine_busy = _machine_busy()
        streams = created.created[: opts.streams]
        say(f"streaming on {len(streams):,} conversations: {opts.tokens} tokens per turn at {opts.rate_hz:g}/s each")
        start_at = time.time() + SPAWN_S
        # The first turns start evenly over a whole turn, so that turns start at the same steady rate
        # from then on (streams started together would start each later turn together too).
        ramp_s = max(1.0, len(streams) / 100, opts.tokens / opts.rate_hz)
        begin = start_at + ramp_s + opts.warmup_s
        end = begin + opts.measure_s
        with ClientProcesses() as streamers:
            streamers.start(client.stream, [(urls, share, start_at, ramp_s, (begin, end)) for share in split(streams, opts.clients)])
            groups = {**deployment.pids(), "client": streamers.pids, "upstream": [os.getpid()]}
            time.sleep(max(0.0, begin - time.time()))
            before = {kind: [process_cpu_s(p) for p in pids_] for kind, pids_ in groups.items()}
            time.sleep(max(0.0, end - time.time()))
            after = {kind: [process_cpu_s(p) for p in pids_] for kind, pids_ in groups.items()}
            phase.window_s = opts.measure_s
            phase.cpu_s = {kind: sum(after[kind]) - sum(before[kind]) for kind in groups}
            phase.client_peak = busiest(before["client"], after["client"], opts.measure_s)
            seen = client.Seen.merged(streamers.gather(timeout_s=opts.tokens / opts.rate_hz + 120))
        seen.errors += phase.seen.errors
        seen.error_count += phase.seen.error_count
        phase.seen = seen
        say(f"measured {seen.items:,} items, {len(seen.lags_ms):,} token latencies, {seen.error_count} errors")
    finally:
        deployment.stop()
    return phase


def _report(phases: list[Phase], opts: ScaleOptions, report: Report) -> None:
    report.note(
        f"convoy bench scale   cpus={os.cpu_count()}  conversations={opts.conversations:,}  streams={opts.streams:,}"
        f"  tokens/turn={opts.tokens}  rate={opts.rate_hz:g}/s per stream  clients={opts.clients} processes"
    )
    report.note("deployment per phase: Redis (1 shard: one server; N: a Redis Cluster of N primaries), a 2-node Ray cluster,")
    report.note("convoy serve (2 hosts + API replica 1) and convoy api (replica 2); clients round-robin over the replicas")
    report.note(f"targets: {opts.conversations:,} idle conversations, {opts.streams:,} concurrent streams at p99 < {TARGET_P99_MS:g} ms per token, no errors")
    for phase in phases:
        seen = phase.seen
        report.section(f"{phase.shards} shard(s)")
        rate = phase.created / phase.create_s if phase.create_s else 0.0
        report.add("conversations created (idle)", f"{phase.created:,} in {phase.create_s:.1f} s ({rate:,.0f}/s)")
        if phase.created:
            costs = "  ".join(f"{k} {1e6 * v / phase.created:.0f}" for k, v in phase.create_cpu_s.items())
            report.add("cpu per conversation created, us", costs)
        if phase.memory:
            report.add(
                "memory per idle conversation",
                "   ".join(f"{k} {v / KIB:.2f} KiB" for k, v in phase.memory.items()) + f"   all {sum(phase.memory.values()) / KIB:.2f} KiB",
            )
        per_s = seen.items / phase.window_s if phase.window_s else 0.0
        report.add("items delivered (tokens), per second", f"{per_s:,.0f} ({seen.tokens / phase.window_s if phase.window_s else 0:,.0f} tokens)   turns ended {seen.turns:,}")
        report.add(
            "per-token latency, upstream -> client (ms)",
            f"p50 {percentile(seen.lags_ms, 50):7.2f}   p99 {percentile(seen.lags_ms, 99):7.2f}   max {max(seen.lags_ms, default=float('nan')):7.2f}   (n={len(seen.lags_ms):,})",
        )
        report.add(
            "time to first token (ms)",
            f"p50 {percentile(seen.ttfts_ms, 50):7.2f}   p99 {percentile(seen.ttfts_ms, 99):7.2f}   (n={len(seen.ttfts_ms):,})",
        )
        report.add("machine busy before streaming (all processes)", f"{phase.machine_busy:.2f} of {os.cpu_count()} cores")
        cores = "  ".join(f"{k} {100 * phase.cpu_s.get(k, 0.0) / phase.window_s:.0f}" for k in KINDS) if phase.window_s else ""
        report.add("cpu, % of a core", f"{cores}   (busiest client process {100 * phase.client_peak:.0f})")
        if seen.items:
            costs = "  ".join(f"{k} {1e6 * phase.cpu_s.get(k, 0.0) / seen.items:.0f}" for k in KINDS)
            report.add("cpu per item, us", f"{costs}   all {1e6 * sum(phase.cpu_s.values()) / seen.items:.0f}")
        met = phase.created >= opts.conversations and percentile(seen.lags_ms, 99) < TARGET_P99_MS and not seen.error_count
        report.add("errors", f"{seen.error_count}   targets {'met' if met else 'NOT met'}")
        report.errors += seen.errors


def run(options: ScaleOptions) -> int:
    say = Progress("bench")
    report = Report()
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-scale-"))
    upstream = StampingUpstream(options.tokens, options.rate_hz).start()
    phases: list[Phase] = []
    complete = False
    try:
        for shards in options.shards:
            phases.append(_phase(home, shards, upstream, options, say))
        complete = True
    finally:
        upstream.stop()
        _report(phases, options, report)
        report.print(complete=complete)
        if complete:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"home {home} kept for inspection (serve.log, api.log, ray-*.log)")
    return 0 if complete else 1


__all__ = ["ScaleOptions", "run"]
