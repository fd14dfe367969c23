"""``convoy bench turns``: what a whole turn costs the whole stack, and how a burst of turns is taken.

``convoy serve`` runs in a subprocess with a private home (its own Redis, Ray, conversation hosts
and API), started by ``--python`` (default: this interpreter), so that an older checkout's server
can be measured by the same benchmark in the same session. The model is a local upstream in this
process (``bench.scale.upstream``: OpenAI Chat Completions, each token's text its write time).
Clients run in processes of their own (``bench.clients``), so the client is not what is measured.

1. **steady**: ``--concurrency`` conversations each make turns back to back (``--tokens`` tokens
   at ``--rate`` tokens/s each, token streaming), warmed up, then measured for ``--measure-s``:
   turns/s, per-token latency (upstream write -> client read) and time to first token p50/p99, and
   the CPU per turn of the whole server: every process of ``convoy serve``'s tree (the API, the
   conversation hosts, Redis, Ray's daemons), by kind; the clients and the upstream are not in it;
   and the memory Redis keeps per turn (its used memory's growth over the window, per turn ended:
   each run's stream, record and step traces stay for ``CONVOY_STREAM_TTL_S``).
2. **burst**: ``--burst`` fresh conversations are each sent one turn at the same instant, over
   connections opened beforehand (the burst measures the accept path, not TCP handshakes): time
   from sending to the response's headers (accepted) and to the first token, p50/p99/max, the
   clients' own spread in sending, errors, the first token's way leg by leg as in the steady phase,
   the upstream's own part of it (each request's arrival to its first token's write), and the CPU
   every process took from the instant until the last turn ended: the server's by kind, and the
   load's own (the upstream, the clients), which share this machine's cores with it.

With ``--against <python>``, the server of that interpreter (another checkout's venv: the code
before a change) is measured too, in the same run, ``--rounds`` times each, alternated (before,
after, after, before, ...: a drift of the machine falls on both sides alike): each run's figures as
a single run prints them, then each side's median and the ratio after / before. ``--set NAME=VALUE``
gives ``--python``'s server a setting (``--against``'s runs without it): with ``--against`` the same
interpreter, a before/after of that setting.

Nothing is asserted: the figures, the targets and whether they were met are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import Progress, Report, percentile, process_cpu_s
from bench.clients import ClientProcesses, split, sse_frames
from bench.scale import client
from bench.scale.upstream import MODEL, StampingUpstream
from bench.serve import Serve
from runtime.errors import ConvoyError

SPAWN_S = 5.0  # client processes start streaming this long after being spawned (imports, connections)
REQUEST_TIMEOUT_S = 120.0
TARGET_CPU_MS_PER_TURN = 10.0
TARGET_BURST_P99_S = 1.0


@dataclass(frozen=True)
class TurnsOptions:
    concurrency: int = 50
    tokens: int = 50
    rate_hz: float = 100.0
    warmup_s: float = 5.0
    measure_s: float = 20.0
    burst: int = 1000
    clients: int = 2
    python: str = sys.executable
    against: str = ""  # another server's interpreter, measured alternately as "before"
    rounds: int = 3
    env: dict[str, str] = field(default_factory=dict)  # settings for ``python``'s server, not ``against``'s


# -- the server's processes ---------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{name}/stat") as stat:
            ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            found.setdefault(ppid, []).append(int(name))
    return found


def tree(root: int) -> list[int]:
    """``root`` and every process descended from it (Ray's daemons and workers included)."""
    children, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def kind_of(pid: int, root: int) -> str:
    """What a process of the server's tree is: api (``convoy serve`` itself), host (a conversation
    host), redis, ray (Ray's daemons and idle workers)."""
    if pid == root:
        return "api"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return "ray"
    if b"valkey" in cmdline or b"redis-server" in cmdline:
        return "redis"
    if b"ConversationHost" in cmdline:
        return "host"
    return "ray"


def server_cpu_s(root: int) -> dict[int, tuple[str, float]]:
    """Each process of the server's tree: its kind and the CPU seconds it has used so far."""
    return {pid: (kind_of(pid, root), process_cpu_s(pid)) for pid in tree(root)}


def cpu_by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two readings, by kind (a process started meanwhile counts whole)."""
    spent: dict[str, float] = {"api": 0.0, "host": 0.0, "redis": 0.0, "ray": 0.0}
    for pid, (kind, cpu) in after.items():
        spent[kind] = spent.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
    return spent


# -- the burst's clients --------------------------------------------------------------------------------


@dataclass
class Burst:
    """What one client process saw of the burst."""

    sent_spread_ms: float = 0.0  # from the instant to this process's last request sent
    accepted_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # what this client process used from the instant until its last turn ended
    shares: Shares | None = None  # the merged burst's: what every process took meanwhile
    legs_ms: dict[str, list[float]] = field(default_factory=dict)  # the merged burst's, as ``Steady.legs_ms``
    upstream_first_token_s: list[float] = field(default_factory=list)  # the merged burst's: the upstream's own delay


def burst(url: str, conversations: list[str], ready: Queue[Any], instant: Queue[Any], out: Queue[Any]) -> None:
    """Open a connection for each of ``conversations``, say so on ``ready``, then send one turn on
    each at the wall time that comes on ``instant``; puts a ``Burst``."""
    out.put(asyncio.run(_burst(url, conversations, ready, instant)))


async def _burst(url: str, conversations: list[str], ready: Queue[Any], instant: Queue[Any]) -> Burst:
    seen = Burst()
    # A client (one connection) per turn, as every user has their own: one pool of hundreds of
    # connections costs httpcore time quadratic in its size, and the client would be what is
    # measured. One TLS context for all (unused over http://, but each client would build its own).
    tls = ssl.create_default_context()
    clients = [httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, verify=tls) for _ in conversations]
    try:
        # Every connection open before the instant.
        await asyncio.gather(*(http.get("/v1/health") for http in clients), return_exceptions=True)
        ready.put(len(clients))
        at: float = await asyncio.to_thread(instant.get)
        gc.freeze()
        gc.disable()
        last_sent = [0.0]
        cpu = time.process_time()
        await asyncio.gather(*(_one_turn(http, c, at, seen, last_sent) for http, c in zip(clients, conversations, strict=True)))
        seen.cpu_s = time.process_time() - cpu
        seen.sent_spread_ms = (last_sent[0] - at) * 1e3
    finally:
        await asyncio.gather(*(http.aclose() for http in clients), return_exceptions=True)
    return seen


async def _one_turn(http: httpx.AsyncClient, conversation: str, at: float, seen: Burst, last_sent: list[float]) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))
    body = {"messages": [{"role": "user", "content": "go"}], "stream_tokens": True}
    sent = time.time()
    last_sent[0] = max(last_sent[0], sent)
    first = True
    try:
        async with http.stream("POST", f"/v1/conversations/{conversation}/messages", json=body) as reply:
            if reply.status_code != 200:
                seen.errors.append(f"HTTP {reply.status_code} {(await reply.aread())[:200]!r}")
                return
            seen.accepted_s.append(time.time() - sent)
            async for now_ns, frames in sse_frames(reply, time.time_ns):
                for frame in frames:
                    if b"event: error" in frame:
                        seen.errors.append(f"run failed: {frame.decode(errors='replace')[:300]}")
                    elif first and b'"assistant_message"' in frame:
                        seen.first_token_s.append(now_ns / 1e9 - sent)
                        first = False
    except httpx.HTTPError as exc:
        seen.errors.append(f"turn: {exc!r}")


# -- the phases -----------------------------------------------------------------------------------------


@dataclass
class Shares:
    """The CPU the burst took, from its instant until its last turn ended: the server's by kind, and
    the load's own (the upstream, in this process; the client processes), on this machine's cores."""

    wall_s: float
    server_s: dict[str, float]
    upstream_s: float
    clients_s: float

    def line(self) -> str:
        server = sum(self.server_s.values())
        cores = os.cpu_count() or 1
        parts = "  ".join(f"{k} {v:.2f}" for k, v in self.server_s.items())
        return (
            f"server {server:.2f} ({parts})  upstream {self.upstream_s:.2f}  clients {self.clients_s:.2f}"
            f"  | over {self.wall_s:.2f} s: the server had {100 * server / (cores * self.wall_s):.0f}% of {cores} cores,"
            f" the load {100 * (self.upstream_s + self.clients_s) / (cores * self.wall_s):.0f}%"
        )


@dataclass
class Steady:
    seen: client.Seen
    cpu_s: dict[str, float]
    window_s: float
    redis_bytes: int  # how much more memory Redis used at the window's end than at its start
    legs_ms: dict[str, list[float]] = field(default_factory=dict)  # ``_legs``: the first token's way, leg by leg


def _create(url: str, agent: str, count: int, clients: int, say: Progress) -> list[str]:
    made = client.create_from(clients, [url], agent, count, say, timeout_s=max(120.0, count / 20))
    if made.errors:
        raise RuntimeError(f"creating conversations failed: {made.errors[:3]}")
    return made.created


def _steady(serve: Serve, conversations: list[str], opts: TurnsOptions, say: Progress) -> Steady:
    assert serve.pid is not None
    turn_s = opts.tokens / opts.rate_hz
    start_at = time.time() + SPAWN_S
    ramp_s = max(1.0, turn_s)  # first turns spread over a turn, so turns keep starting at a steady rate
    begin = start_at + ramp_s + opts.warmup_s
    end = begin + opts.measure_s
    say(f"steady: {len(conversations)} conversations, turn after turn, {opts.tokens} tokens at {opts.rate_hz:g}/s each")
    with ClientProcesses() as streamers:
        shares = split(conversations, opts.clients)
        streamers.start(client.stream, [([serve.url], share, start_at, ramp_s, (begin, end)) for share in shares])
        with redis.Redis.from_url(serve.redis_url) as store:
            time.sleep(max(0.0, begin - time.time()))
            before, memory_before = server_cpu_s(serve.pid), _used_memory(store)
            time.sleep(max(0.0, end - time.time()))
            after, memory_after = server_cpu_s(serve.pid), _used_memory(store)
        parts: list[client.Seen] = streamers.gather(timeout_s=turn_s + REQUEST_TIMEOUT_S)
    seen = client.Seen.merged(parts)
    return Steady(seen, cpu_by_kind(before, after), opts.measure_s, memory_after - memory_before)


def _used_memory(store: redis.Redis) -> int:
    """What Redis holds, in bytes: every run's stream, record and step traces stay for their TTL."""
    return int(store.info("memory")["used_memory"])


def _burst_phase(serve: Serve, upstream: StampingUpstream, conversations: list[str], opts: TurnsOptions, say: Progress) -> Burst:
    assert serve.pid is not None
    say(f"burst: {len(conversations)} turns sent at the same instant from {opts.clients} client processes")
    with ClientProcesses() as bursts:
        ready, instant = bursts.queue(), bursts.queue()
        shares = split(conversations, opts.clients)
        bursts.start(burst, [(serve.url, share, ready, instant) for share in shares])
        for _ in shares:
            ready.get(timeout=REQUEST_TIMEOUT_S)
        # Counted before the instant is given: on a loaded machine this thread may wake after the
        # first turns have reached the upstream, whose delays would then be left out.
        delays_before = len(upstream.first_token_delays_s)
        at = time.time() + 0.5  # every process is waiting for it by then
        for _ in shares:
            instant.put(at)
        say("burst: every connection open, the turns leave in 0.5 s")
        time.sleep(max(0.0, at - time.time()))
        server_before, upstream_before = server_cpu_s(serve.pid), process_cpu_s(os.getpid())
        parts: list[Burst] = bursts.gather(timeout_s=SPAWN_S + REQUEST_TIMEOUT_S + opts.tokens / opts.rate_hz)
        wall_s = time.time() - at
        server_after, upstream_after = server_cpu_s(serve.pid), process_cpu_s(os.getpid())
    merged = Burst(sent_spread_ms=max(p.sent_spread_ms for p in parts))
    for part in parts:
        merged.accepted_s += part.accepted_s
        merged.first_token_s += part.first_token_s
        merged.errors += part.errors
    merged.upstream_first_token_s = upstream.first_token_delays_s[delays_before:]
    merged.shares = Shares(
        wall_s, cpu_by_kind(server_before, server_after), upstream_after - upstream_before, sum(p.cpu_s for p in parts)
    )
    return merged


LEGS_SAMPLE = 200  # the latest runs whose first token's way ``_legs`` reads


def _legs(url: str) -> dict[str, list[float]]:
    """Where the latest completed runs' first tokens spent their way to the owner, in ms, from the
    runs' and their first steps' own timestamps: accept -> taken by the owner (``started_at``),
    taken -> the model request (the step's ``created_at``), request -> first token (its trace)."""
    legs: dict[str, list[float]] = {"accepted -> taken by its owner": [], "taken -> model request": [], "model request -> first token": []}
    with httpx.Client(base_url=url, timeout=30) as http:
        for run in http.get("/v1/runs", params={"limit": LEGS_SAMPLE, "statuses": "completed"}).json():
            steps = http.get(f"/v1/runs/{run['id']}/steps").json()
            if not steps or not run.get("started_at") or steps[0]["trace"]["ttft_ms"] is None:
                continue
            accepted, taken = _seconds(run["created_at"]), _seconds(run["started_at"])
            requested = _seconds(steps[0]["created_at"])
            legs["accepted -> taken by its owner"].append((taken - accepted) * 1e3)
            legs["taken -> model request"].append((requested - taken) * 1e3)
            legs["model request -> first token"].append(steps[0]["trace"]["ttft_ms"])
    return legs


def _seconds(at: str) -> float:
    """A timestamp of the API's (ISO 8601) in seconds."""
    return datetime.fromisoformat(at).timestamp()


def _settle(url: str) -> None:
    """Wait until no run is streaming any more (the previous phase's last turns)."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            if not http.get("/v1/runs", params={"active": "true", "limit": 1}).json():
                return
            time.sleep(0.2)


# -- the report -----------------------------------------------------------------------------------------


def _ms(values: list[float], scale: float = 1.0) -> str:
    return f"p50 {percentile(values, 50) * scale:8.2f}   p99 {percentile(values, 99) * scale:8.2f}   max {max(values, default=float('nan')) * scale:8.2f}"


def _report_steady(steady: Steady, opts: TurnsOptions, report: Report) -> None:
    seen = steady.seen
    report.section(f"steady: {opts.concurrency} concurrent conversations, {opts.tokens} tokens per turn at {opts.rate_hz:g}/s")
    turns_s = seen.turns / steady.window_s
    report.add("turns ended in the window", f"{seen.turns} ({turns_s:.1f}/s), {seen.tokens} tokens ({seen.tokens / steady.window_s:,.0f}/s)")
    report.add("time to first token, ms", _ms(seen.ttfts_ms))
    _report_legs(steady.legs_ms, report)
    report.add("per-token latency (upstream write -> client read), ms", _ms(seen.lags_ms))
    total = sum(steady.cpu_s.values())
    if seen.turns:
        per_turn = {k: 1e3 * v / seen.turns for k, v in steady.cpu_s.items()}
        whole = 1e3 * total / seen.turns
        report.add("server cpu per turn, ms", "  ".join(f"{k} {v:.2f}" for k, v in per_turn.items()) + f"  | all {whole:.2f}")
        verdict = "met" if whole <= TARGET_CPU_MS_PER_TURN else "NOT met"
        report.add(
            "  target", f"<= {TARGET_CPU_MS_PER_TURN:g} ms per turn: {verdict}; at this cost 2 cores carry {2e3 / whole:,.0f} turns/s"
        )
        if seen.tokens:
            report.add("server cpu per streamed token, us", f"{1e6 * total / seen.tokens:.0f} (whole turn's cost spread over its tokens)")
    if seen.turns:
        report.add("redis memory kept per turn, KiB", f"{steady.redis_bytes / 1024 / seen.turns:.1f} (runs stay for CONVOY_STREAM_TTL_S)")
    report.add("server cpu, % of a core", "  ".join(f"{k} {100 * v / steady.window_s:.0f}" for k, v in steady.cpu_s.items()) + f"  | all {100 * total / steady.window_s:.0f}")
    report.add("errors", str(seen.error_count))
    report.errors += seen.errors


def _report_legs(legs_ms: dict[str, list[float]], report: Report) -> None:
    for leg, values in legs_ms.items():
        report.add(f"  {leg}, ms", f"p50 {percentile(values, 50):8.2f}   p90 {percentile(values, 90):8.2f}   (the latest {len(values)} runs)")


def _report_burst(seen: Burst, n: int, report: Report) -> None:
    report.section(f"burst: {n} turns sent at once")
    report.add("clients' own spread in sending, ms", f"{seen.sent_spread_ms:.0f} (from the instant to the last request sent)")
    report.add("accepted (response headers), ms", _ms(seen.accepted_s, 1e3) + f"   (n={len(seen.accepted_s)})")
    report.add("first token, ms", _ms(seen.first_token_s, 1e3) + f"   (n={len(seen.first_token_s)})")
    _report_legs(seen.legs_ms, report)
    report.add(
        "  of which the upstream's own (request in -> first token out), ms",
        _ms(seen.upstream_first_token_s, 1e3) + f"   (n={len(seen.upstream_first_token_s)})",
    )
    if seen.shares is not None:
        report.add("cpu from the instant to the last turn's end, s", seen.shares.line())
    p99 = percentile(seen.first_token_s, 99)
    verdict = "met" if len(seen.first_token_s) == n and p99 < TARGET_BURST_P99_S else "NOT met"
    report.add("  target", f"every turn's first token, p99 < {TARGET_BURST_P99_S * 1e3:.0f} ms: {verdict}")
    report.add("errors", str(len(seen.errors)))
    report.errors += seen.errors


@dataclass
class Measured:
    steady: Steady | None = None
    burst: Burst | None = None


def _measure(python: str, options: TurnsOptions, say: Progress, env: dict[str, str] | None = None) -> Measured:
    """One server (``python -m cli.main serve``, with the settings ``env``) through both phases."""
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-turns-"))
    upstream = StampingUpstream(options.tokens, options.rate_hz).start()
    serve = Serve(home, upstream.url, python=python, env=env)
    measured = Measured()
    try:
        say(f"starting convoy serve ({python})")
        serve.start()
        reply = httpx.post(f"{serve.url}/v1/agents", json={"name": "turns", "model": f"bench/{MODEL}"}, timeout=30)
        if reply.status_code != 200:  # the server's log goes with its home: say what it said now
            raise ConvoyError(f"creating the agent: HTTP {reply.status_code} {reply.text[:300]!r}; convoy serve's log ends: {serve.log_tail()}")
        agent = reply.json()["id"]
        count = options.concurrency + options.burst
        say(f"creating {count} conversations")
        conversations = _create(serve.url, agent, count, options.clients, say)
        if options.concurrency:
            measured.steady = _steady(serve, conversations[: options.concurrency], options, say)
            _settle(serve.url)
            measured.steady.legs_ms = _legs(serve.url)
        if options.burst:
            measured.burst = _burst_phase(serve, upstream, conversations[options.concurrency :], options, say)
            _settle(serve.url)
            measured.burst.legs_ms = _legs(serve.url)
    finally:
        serve.stop()
        upstream.stop()
        shutil.rmtree(home, ignore_errors=True)
    return measured


def _with(env: dict[str, str]) -> str:
    return "".join(f" {name}={value}" for name, value in env.items())


def _header(report: Report, servers: str, options: TurnsOptions) -> None:
    report.note(f"convoy bench turns   cpus={os.cpu_count()}  server: {servers}  clients: {options.clients} processes")
    report.note("server cpu: every process of convoy serve's tree (api: the serve process; host: conversation hosts;")
    report.note("redis; ray: Ray's daemons and idle workers), from /proc; the clients and the upstream are not in it")


def run(options: TurnsOptions) -> int:
    if options.against:
        return _compare(options)
    say = Progress("bench")
    report = Report()
    _header(report, f"{options.python} -m cli.main serve{_with(options.env)}", options)
    complete = False
    try:
        _report(_measure(options.python, options, say, options.env), options, report)
        complete = True
    finally:
        report.print(complete=complete)
    return 0


def _report(measured: Measured, options: TurnsOptions, report: Report) -> None:
    if measured.steady is not None:
        _report_steady(measured.steady, options, report)
    if measured.burst is not None:
        _report_burst(measured.burst, options.burst, report)


# -- before and after, alternated -----------------------------------------------------------------------

def _figures(m: Measured) -> dict[str, float]:
    """One run's figures that the comparison prints, by label."""
    out: dict[str, float] = {}
    if m.steady is not None and m.steady.seen.turns:
        turns = m.steady.seen.turns
        out["steady: server cpu per turn, ms"] = 1e3 * sum(m.steady.cpu_s.values()) / turns
        for kind, seconds in m.steady.cpu_s.items():
            out[f"  of which {kind}, ms"] = 1e3 * seconds / turns
        out["steady: turns/s"] = turns / m.steady.window_s
        out["steady: redis memory per turn, KiB"] = m.steady.redis_bytes / 1024 / turns
        out["steady: time to first token p50, ms"] = percentile(m.steady.seen.ttfts_ms, 50)
        out["steady: per-token latency p50, ms"] = percentile(m.steady.seen.lags_ms, 50)
        out["steady: per-token latency p99, ms"] = percentile(m.steady.seen.lags_ms, 99)
    if m.burst is not None and m.burst.first_token_s:
        out["burst: accepted p50, ms"] = 1e3 * percentile(m.burst.accepted_s, 50)
        out["burst: accepted p99, ms"] = 1e3 * percentile(m.burst.accepted_s, 99)
        out["burst: first token p50, ms"] = 1e3 * percentile(m.burst.first_token_s, 50)
        out["burst: first token p99, ms"] = 1e3 * percentile(m.burst.first_token_s, 99)
    return out


def _compare(options: TurnsOptions) -> int:
    say = Progress("bench")
    report = Report()
    _header(report, f"before {options.against}, after {options.python}{_with(options.env)}", options)
    order = [side for i in range(options.rounds) for side in (("before", "after") if i % 2 == 0 else ("after", "before"))]
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    complete = False
    try:
        for n, side in enumerate(order, 1):
            say(f"run {n} of {len(order)}: {side}")
            if side == "before":
                measured = _measure(options.against, options, say)
            else:
                measured = _measure(options.python, options, say, options.env)
            report.section(f"-- run {n} of {len(order)}: {side}")
            _report(measured, options, report)
            runs[side].append(_figures(measured))
        complete = True
    finally:
        report.section(f"before / after, {options.rounds} runs each, alternated ({' '.join(s[0].upper() for s in order)})")
        labels = list(dict.fromkeys(k for side in runs.values() for figures in side for k in figures))
        for label in labels:
            before = [f[label] for f in runs["before"] if label in f]
            after = [f[label] for f in runs["after"] if label in f]
            if not before or not after:
                continue
            b, a = statistics.median(before), statistics.median(after)
            each = f"{', '.join(f'{v:.2f}' for v in before)}  ->  {', '.join(f'{v:.2f}' for v in after)}"
            report.add(label, f"median {b:8.2f} -> {a:8.2f}   after/before {a / b if b else float('nan'):5.2f}   ({each})")
        report.add("errors", str(len(report.errors)))  # every run's, as its own report added them
        report.print(complete=complete)
    return 0
