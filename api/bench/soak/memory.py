"""Memory of the server's processes: sampled after warm-up and at the end, judged for growth.

Processes: the API (``convoy serve``'s own process, which also runs uvicorn), every live
conversation host (pids from their heartbeats), and Redis (RSS, and ``used_memory``: the data
set). "Flat" means the API and each host grew by at most ``GROWTH_SLACK_BYTES`` or
``GROWTH_SLACK_SHARE`` of its size after warm-up, whichever is larger: a process that keeps
something per run or per conversation it no longer needs grows past that within minutes. Redis is
shown, not judged: it keeps every ended run for ``stream_ttl_s`` (6 h by default), so its data set
grows with the runs by design (the report shows how much per run; leaks there are the key check's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from api.bench import MIB, process_memory
from api.bench.soak.keyspace import host_names
from api.bench.soak.ledger import MEMORY, Ledger

GROWTH_SLACK_BYTES = 24 * MIB
GROWTH_SLACK_SHARE = 0.15
REDIS = "redis"


@dataclass(frozen=True)
class MemorySample:
    at_s: float  # monotonic
    rss_bytes: dict[str, int]  # process label -> RSS
    redis_used_bytes: int
    runs: int  # runs accepted so far


async def sample(redis: aioredis.Redis, api_pid: int, runs: int) -> MemorySample:
    hosts = await host_names(redis)
    server = await redis.info("server")
    used = await redis.info("memory")
    pids = {"api": api_pid, **{f"host {name}": pid for name, pid in sorted(hosts.items())}}
    pids[REDIS] = int(server["process_id"])
    rss = {label: process_memory(pid)["rss_bytes"] for label, pid in pids.items()}
    return MemorySample(time.monotonic(), rss, int(used["used_memory"]), runs)


def allowed_growth(start_bytes: int) -> int:
    return max(GROWTH_SLACK_BYTES, int(GROWTH_SLACK_SHARE * start_bytes))


def judged(label: str) -> bool:
    return label != REDIS


def judge(ledger: Ledger, start: MemorySample, end: MemorySample) -> None:
    for label, before in start.rss_bytes.items():
        if not judged(label):
            continue
        after = end.rss_bytes.get(label)
        if after is None or not before or not after:
            ledger.violate(MEMORY, f"{label}: not measurable at both ends (restarted or gone?)")
            continue
        if after - before > allowed_growth(before):
            ledger.violate(
                MEMORY,
                f"{label}: RSS grew {(after - before) / MIB:.1f} MiB ({before / MIB:.1f} -> {after / MIB:.1f}),"
                f" more than {allowed_growth(before) / MIB:.0f} MiB",
            )


def short(sample: MemorySample) -> str:
    """For progress lines: ``api 150 MiB, hosts 310 MiB, redis 12 MiB``."""
    hosts = sum(v for k, v in sample.rss_bytes.items() if k.startswith("host "))
    return (
        f"rss api {sample.rss_bytes.get('api', 0) / MIB:.0f} MiB, hosts {hosts / MIB:.0f} MiB,"
        f" redis {sample.rss_bytes.get(REDIS, 0) / MIB:.0f} MiB"
    )
