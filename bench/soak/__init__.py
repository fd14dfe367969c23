"""``convoy bench soak``: a mixed workload against a real Convoy for N minutes, then its invariants.

Setup, in a temporary home removed at the end (kept, with the server's log, when an invariant failed): a scripted OpenAI-compatible upstream in this
process (``bench.soak.upstream``; it calls the client's tool when offered one), and
``convoy serve`` in a subprocess (its own Redis, Ray, hosts and API) with that upstream declared as
provider ``bench``, conversations passivated after ``IDLE_PASSIVATE_S`` and keepalive pings every
``PING_INTERVAL_S``. Two agents: ``echo/echo`` and ``bench/soak``.

Then ``--clients`` clients (``bench.soak.workload``) each warm up (two conversations, one turn
each) and do random things until ``--minutes`` have passed: streaming, non-streaming and tool
turns, cancels, resumes, disconnects in the foreground and in the background, queued pairs,
idempotent retries, busy rejections, bad inputs (``bad``). Clients read streams strictly
(``sse``, ``turns``) and note what they did and saw in the ``ledger``. Meanwhile, from the warm-up
on, a conversation host is SIGKILLed every ``--fault-every-s`` (``faults``), and each fault must be
survived. After the last operations end, the soak waits (bounded) for every run to end, and checks
its invariants (``ledger.INVARIANTS``; see ``checks``, ``keyspace``, ``memory`` and ``faults`` for
how). It measures and prints (``figures``, ``serverlog``); it asserts nothing, but it says PASS or
FAIL for each invariant and exits 1 if any failed.

With ``--redis-outage-s N`` (off by default), the embedded Redis is also frozen for N seconds
once, halfway through, then killed, so ``convoy serve`` must restart it (``outage``); requests
refused meanwhile (503 ``store_unavailable``) are sent again, and every invariant must still hold.

Faults are on by default (``--no-faults`` turns them off): a host process dying (OOM killer, a
lost node, a deploy) is an ordinary event for a Ray deployment, and recovery is the code path
that rots first when nothing exercises it; a soak that says "PASS" should mean "PASS while hosts
die", and every soak, the smoke test included, runs that path. The cost is small: a fault touches
only the runs its host was running, and the invariants excuse exactly those (``faults.excused``).
``--no-faults`` is for undisturbed latency and memory figures.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bench import Progress, Report
from bench.serve import Serve
from bench.soak import checks, faults, keyspace, memory, outage
from bench.soak.figures import Outcome, add_figures, add_log, add_verdicts
from bench.soak.ledger import FAULTS, OUTAGE, Ledger
from bench.soak.serverlog import summarize
from bench.soak.upstream import ScriptedUpstream
from bench.soak.workload import SoakClient
from runtime.errors import ConvoyError
from runtime.settings import Settings
from runtime.store.embedded import recorded_url

IDLE_PASSIVATE_S = 2.0
PING_INTERVAL_S = 2.0
ECHO_DELAY_MS = 20
UPSTREAM_RATE_HZ = 50.0
SERVE_ENV = {
    "CONVOY_IDLE_PASSIVATE_S": str(IDLE_PASSIVATE_S),
    "CONVOY_PING_INTERVAL_S": str(PING_INTERVAL_S),
    "CONVOY_ECHO_DELAY_MS": str(ECHO_DELAY_MS),
    "CONVOY_LOG_JSON": "true",
}
WARMUP_SHARE = 0.2  # memory is first sampled this far into the timed workload
PROGRESS_PERIOD_S = 5.0
SETTLE_TIMEOUT_S = 30.0
PASSIVATE_TIMEOUT_S = IDLE_PASSIVATE_S + 15.0
POLL_S = 0.2
HTTP_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 5.0
    clients: int = 8
    seed: int = 1
    faults: bool = True
    fault_every_s: float = 30.0
    redis_outage_s: float = 0.0  # 0: no Redis outage

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.clients < 1:
            raise ConvoyError(f"a soak needs minutes > 0 and clients >= 1 (got {self.minutes:g} and {self.clients})")
        if self.fault_every_s <= 0:
            raise ConvoyError(f"faults need --fault-every-s > 0 (got {self.fault_every_s:g})")
        if self.redis_outage_s < 0:
            raise ConvoyError(f"--redis-outage-s must be >= 0 (got {self.redis_outage_s:g})")


def run(options: SoakOptions) -> int:
    say = Progress("soak")
    report = Report()
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-soak-"))
    upstream = ScriptedUpstream(rate_hz=UPSTREAM_RATE_HZ)
    serve: Serve | None = None
    ledger = Ledger()
    complete = False
    try:
        say(f"home {home}; starting the upstream and convoy serve")
        upstream.start()
        serve = Serve(home, upstream.url, SERVE_ENV)
        serve.start()
        outcome = asyncio.run(_soak(serve, home, upstream, options, ledger, say))
        add_figures(report, outcome)
        complete = True
    finally:
        if serve is not None:
            say("stopping convoy serve")
            serve.stop()
        upstream.stop()
        add_log(report, summarize(home / "serve.log"))
        skipped = {} if options.faults else {FAULTS: "--no-faults"}
        if not options.redis_outage_s:
            skipped[OUTAGE] = "no --redis-outage-s"
        held = add_verdicts(report, ledger, skipped) if complete else False
        if held:
            shutil.rmtree(home, ignore_errors=True)
            report.note(f"\nhome {home} {'removed' if not home.exists() else 'NOT removed'}")
        else:  # the evidence stays: the server's log and the Redis data
            report.note(f"\nhome {home} kept for inspection (serve.log, redis/); remove it when done")
        report.print(complete=complete)
    return 0 if held else 1


async def _soak(
    serve: Serve, home: Path, upstream: ScriptedUpstream, options: SoakOptions, ledger: Ledger, say: Progress
) -> Outcome:
    url = recorded_url(home)
    if url is None or serve.pid is None:
        raise ConvoyError("convoy serve is up but recorded no Redis URL")
    redis = aioredis.from_url(url)
    pool = 4 * options.clients + 16
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    timeout = httpx.Timeout(HTTP_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    transport = outage.StoreRetry(httpx.AsyncHTTPTransport(limits=limits), ledger)  # see bench.soak.outage
    try:
        async with httpx.AsyncClient(base_url=serve.url, timeout=timeout, transport=transport) as http:
            session = _Session(http, redis, home, serve.pid, await _agents(http), options, ledger, say)
            return await session.run(upstream)
    finally:
        await redis.aclose()


async def _agents(http: httpx.AsyncClient) -> dict[str, str]:
    """One agent per model: model -> agent id."""
    found: dict[str, str] = {}
    for model, handle in (("echo", "echo/echo"), ("bench", "bench/soak")):
        reply = await http.post("/v1/agents", json={"name": f"soak-{model}", "model": handle, "system": "Soak."})
        reply.raise_for_status()
        found[model] = reply.json()["id"]
    return found


@dataclass
class _Session:
    http: httpx.AsyncClient
    redis: aioredis.Redis
    home: Path
    api_pid: int
    agents: dict[str, str]  # model -> agent id
    options: SoakOptions
    ledger: Ledger
    say: Progress
    processes: memory.Tracker = field(default_factory=memory.Tracker)
    tracking: bool = False  # memory samples feed ``processes`` from the warm-up on

    async def run(self, upstream: ScriptedUpstream) -> Outcome:
        """Warm up, soak (with faults), settle, check."""
        opts = self.options
        clients = [SoakClient(i, self.http, self.ledger, opts.seed, self.agents) for i in range(opts.clients)]
        self.say(f"warming up {opts.clients} clients")
        await asyncio.gather(*(c.warm_up() for c in clients))
        baseline = await keyspace.scan(self.redis)  # the global keys: indexes exist by now
        started = time.monotonic()
        ends = started + 60 * opts.minutes
        self.say(f"soaking for {60 * opts.minutes:g} s with {opts.clients} clients (seed {opts.seed})")
        workers = [asyncio.create_task(c.run_until(ends)) for c in clients]
        await self._watch(started, started + WARMUP_SHARE * (ends - started))
        self.tracking = True
        first = await self._sample()
        serialized = asyncio.Lock()  # host faults and the Redis outage, one at a time
        if opts.faults:
            injector = faults.Injector(self.http, self.redis, self.ledger, self.agents["echo"], serialized, self.say)
            workers.append(asyncio.create_task(injector.run(started, ends, opts.fault_every_s)))
        if opts.redis_outage_s:
            freezer = outage.Injector(self.http, self.home, self.ledger, self.agents["echo"], serialized, self.say)
            workers.append(asyncio.create_task(freezer.run(started, ends, opts.redis_outage_s)))
        await self._watch(started, ends)
        self.say("waiting for the clients' last operations" + (" and the last fault" if opts.faults else ""))
        await asyncio.gather(*workers)
        workload_s = time.monotonic() - started
        self.say("waiting for every run to end")
        active = await checks.wait_settled(self.http, SETTLE_TIMEOUT_S, POLL_S)
        last = await self._sample()
        memory.judge(self.ledger, self.processes, last)
        runs, inputs, passivated_s, key_figures = await self._check(active, baseline)
        return Outcome(
            opts,
            self.ledger,
            60 * opts.minutes,
            workload_s,
            runs,
            (first, last),
            self.processes,
            key_figures,
            inputs,
            passivated_s,
            upstream.counts,
        )

    async def _check(
        self, active: list[dict[str, Any]], baseline: set[str]
    ) -> tuple[checks.RunFigures, int, float, keyspace.KeyFigures]:
        self.say("checking runs and histories")
        runs = await checks.check_runs(self.http, self.ledger, active)
        inputs = await checks.check_history(self.http, self.ledger, runs.statuses)
        self.say("waiting for idle conversations to passivate; scanning Redis")
        passivated_s = await keyspace.wait_passivated(self.redis, self.ledger, PASSIVATE_TIMEOUT_S, POLL_S)
        stream_ttl_s = int(Settings.model_fields["stream_ttl_s"].default)  # the server runs with the default
        found = await keyspace.check_keys(self.redis, self.ledger, self.agents.values(), baseline, stream_ttl_s)
        return runs, inputs, passivated_s, found

    async def _sample(self) -> memory.MemorySample:
        taken = await memory.sample(self.redis, self.api_pid, len(self.ledger.runs))
        if self.tracking:
            self.processes.add(taken)
        return taken

    async def _watch(self, started: float, until: float) -> None:
        """Progress lines every ``PROGRESS_PERIOD_S`` of the workload, until ``until`` (monotonic)."""
        while (now := time.monotonic()) < until:
            next_line = started + PROGRESS_PERIOD_S * (1 + int((now - started) / PROGRESS_PERIOD_S))
            await asyncio.sleep(max(0.0, min(next_line, until) - now))
            if time.monotonic() >= next_line:
                await self._progress(started)

    async def _progress(self, started: float) -> None:
        ops = sum(self.ledger.ops.values())
        try:
            async with asyncio.timeout(PROGRESS_PERIOD_S):
                sampled = memory.short(await self._sample())
        except (TimeoutError, RedisError):  # during the Redis outage
            sampled = "memory not sampled: Redis unreachable"
        self.say(
            f"{ops} operations ({ops / (time.monotonic() - started):.1f}/s), {len(self.ledger.runs)} runs accepted,"
            f" {self.ledger.count_violations()} violations; {sampled}"
        )
