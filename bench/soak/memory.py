"""Memory of the server's processes: sampled from the warm-up on, each process judged for growth.

Processes: the API (``convoy serve``'s own process, which also runs uvicorn), every live
conversation host (pids from their heartbeats), and Redis (RSS, and ``used_memory``: the data
set). "Flat" means each process grew by at most ``GROWTH_SLACK_BYTES`` or ``GROWTH_SLACK_SHARE``
of its size from its baseline to its last sample, whichever is larger: a process that keeps
something per run or per conversation it no longer needs grows past that within minutes.

A process is judged from its own baseline (``Tracker``): the processes there at the warm-up from
the sample taken then; a host Ray restarted after a fault (a new pid under the same label) from
its first sample at least ``RESTART_WARMUP_S`` after it was first seen, because a fresh host
imports the provider SDKs on its first turns and recovers its conversations (growth that is not a
leak). A restarted host killed or ended before that is shown, not judged. A killed host is judged
up to its last sample. A new process that no fault (or the Redis outage) explains, or a process
not there at the end, breaks the invariant (a host that died on its own). Redis is shown, not judged: it keeps every ended run for ``stream_ttl_s``
(6 h by default), so its data set grows with the runs by design (the report shows how much per
run; leaks there are the key check's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bench import MIB, process_memory
from bench.soak.keyspace import host_names
from bench.soak.ledger import MEMORY, Ledger

GROWTH_SLACK_BYTES = 24 * MIB
GROWTH_SLACK_SHARE = 0.15
RESTART_WARMUP_S = 10.0
REDIS = "redis"
API = "api"


@dataclass(frozen=True)
class MemorySample:
    at_s: float  # monotonic
    pids: dict[str, int]  # process label -> pid
    rss_bytes: dict[str, int]  # process label -> RSS (0: the process is gone)
    redis_used_bytes: int
    runs: int  # runs accepted so far


@dataclass(frozen=True)
class Point:
    at_s: float  # monotonic
    rss_bytes: int
    runs: int


@dataclass
class Process:
    label: str
    pid: int
    seen_at_s: float
    restarted: bool  # first seen after the warm-up: a host Ray restarted
    baseline: Point | None = None
    last: Point | None = None


@dataclass
class Tracker:
    """Every process seen from the warm-up sample on, with its baseline and last sample."""

    processes: dict[tuple[str, int], Process] = field(default_factory=dict)

    def add(self, sample: MemorySample) -> None:
        warm_up = not self.processes
        for label, pid in sample.pids.items():
            rss = sample.rss_bytes.get(label, 0)
            if not rss:
                continue  # gone: a killed host, still named by its last heartbeat
            proc = self.processes.setdefault((label, pid), Process(label, pid, sample.at_s, not warm_up))
            point = Point(sample.at_s, rss, sample.runs)
            if proc.baseline is None and (not proc.restarted or sample.at_s - proc.seen_at_s >= RESTART_WARMUP_S):
                proc.baseline = point
            proc.last = point


async def sample(redis: aioredis.Redis, api_pid: int, runs: int) -> MemorySample:
    hosts = await host_names(redis)
    server = await redis.info("server")
    used = await redis.info("memory")
    pids = {API: api_pid, **{f"host {name}": pid for name, pid in sorted(hosts.items())}}
    pids[REDIS] = int(server["process_id"])
    rss = {label: process_memory(pid)["rss_bytes"] for label, pid in pids.items()}
    return MemorySample(time.monotonic(), pids, rss, int(used["used_memory"]), runs)


def allowed_growth(start_bytes: int) -> int:
    return max(GROWTH_SLACK_BYTES, int(GROWTH_SLACK_SHARE * start_bytes))


def judge(ledger: Ledger, tracker: Tracker, end: MemorySample) -> None:
    for label, rss in end.rss_bytes.items():
        if not rss:
            ledger.violate(MEMORY, f"{label}: not measurable at the end (gone?)")
    restarts = {(f"host {f.host}", f.new_pid) for f in ledger.faults}
    if ledger.outage is not None:
        restarts.add((REDIS, ledger.outage.new_pid))  # serve restarted it after the outage's SIGKILL
    for proc in tracker.processes.values():
        if proc.restarted and (proc.label, proc.pid) not in restarts:
            ledger.violate(MEMORY, f"{proc.label}: a new process (pid {proc.pid}) that no fault explains")
        if proc.label == REDIS or proc.baseline is None or proc.last is None:
            continue
        before, after = proc.baseline.rss_bytes, proc.last.rss_bytes
        if after - before > allowed_growth(before):
            ledger.violate(
                MEMORY,
                f"{proc.label} pid {proc.pid}: RSS grew {(after - before) / MIB:.1f} MiB"
                f" ({before / MIB:.1f} -> {after / MIB:.1f}), more than {allowed_growth(before) / MIB:.0f} MiB",
            )


def short(sample: MemorySample) -> str:
    """For progress lines: ``api 150 MiB, hosts 310 MiB, redis 12 MiB``."""
    hosts = sum(v for k, v in sample.rss_bytes.items() if k.startswith("host "))
    return (
        f"rss api {sample.rss_bytes.get(API, 0) / MIB:.0f} MiB, hosts {hosts / MIB:.0f} MiB,"
        f" redis {sample.rss_bytes.get(REDIS, 0) / MIB:.0f} MiB"
    )
