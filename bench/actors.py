"""``convoy bench actors``: what a conversation costs as a virtual actor, next to one Ray actor each.

One driver process starts what ``convoy serve`` starts, minus HTTP: embedded Redis in a temporary
home (unless ``CONVOY_REDIS_URL``), a local Ray (unless ``RAY_ADDRESS``) and the conversation hosts,
with passivation pushed out of reach so every activation stays alive. Then it measures, on real
conversations created through the runtime's stores:

- **cold activation**: ``ConversationRouter.deliver`` to a conversation nobody owns, one call at a
  time (directory read, Ray call to the host, lease script, worker start); wall time per call;
- **warm dispatch**: the same call again to the now active conversations;
- **turn dispatch**: ``accept_turn`` with the echo model, from just before the call to the run's
  ``started_at_ms`` (stamped by the owner) and to the first ``assistant_message`` a stream
  subscription receives; for a sample of cold and a sample of active conversations;
- **memory**: summed RSS of the host processes (``HostCore.stats``) before and after the cold
  activations, divided by their count; Redis ``used_memory`` the same way;
- **capacity**: more activations in steps while the summed host RSS stays under a budget, then a
  hold longer than the lease TTL to see that every lease is still renewed;
- **baseline**: K minimal async Ray actors (one per conversation, the alternative design), each
  timed from creation to its first answered call, with their RSS and PSS.

Nothing is asserted. Figures go to stdout (also when interrupted: what was measured so far),
progress to stderr. Everything started is stopped at the end, also on Ctrl-C.

One module of about 500 lines on purpose: every phase above runs against the one deployment it
starts and adds to the one report, in order; split, each part would take the deployment and the
report as arguments and read only in sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.actor import ActorHandle

from actors import ray_boot, supervisor
from actors.directory import Directory, Lease
from actors.router import ConversationRouter
from api.state import AppState
from api.turns import accept_turn
from bench import GIB, KIB, MIB, Progress, Report, percentile, process_memory
from runtime.errors import ConvoyError
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.auth import DEFAULT_TENANT, OPEN
from runtime.schemas.requests import SendMessageRequest
from runtime.settings import ECHO_MODEL_HANDLE, Settings
from runtime.store import keyspace
from runtime.store.embedded import EmbeddedRedis

PASSIVATE_NEVER_S = 7 * 24 * 3600.0
TURN_TEXT = "bench ping"
TURN_TIMEOUT_S = 30.0
CREATE_BATCH = 100
HOLD_POLL_S = 2.0
OWNER_SAMPLE = 500
PROJECTION_RSS_BYTES = 8 * GIB


@dataclass(frozen=True)
class BenchOptions:
    """The knobs of one run (defaults live in the CLI, ``cli.main``)."""

    cold: int
    conversations: int
    budget_bytes: int
    turns: int
    baseline: int
    step: int
    concurrency: int
    hold_s: float
    hosts: int | None = None

    def __post_init__(self) -> None:
        counts = {"cold": self.cold, "conversations": self.conversations, "turns": self.turns, "baseline": self.baseline}
        if any(value < 0 for value in counts.values()) or self.hold_s < 0:
            raise ConvoyError("bench: counts and --hold-s must not be negative")
        if self.step < 1 or self.concurrency < 1 or self.budget_bytes < 1 or (self.hosts is not None and self.hosts < 1):
            raise ConvoyError("bench: --step, --concurrency, --budget-gib and --hosts must be positive")


def _ms(seconds: float) -> float:
    return seconds * 1000


def _dist(values_ms: Sequence[float], *, with_max: bool = True) -> str:
    text = f"p50 {percentile(values_ms, 50):8.2f} ms   p99 {percentile(values_ms, 99):8.2f} ms"
    if with_max:
        text += f"   max {max(values_ms, default=float('nan')):8.2f} ms"
    return text + f"   (n={len(values_ms)})"


# -- the driver: start, measure, stop ---------------------------------------------------------------


def run(settings: Settings, options: BenchOptions) -> int:
    """Start Redis, Ray and the hosts as ``convoy serve`` would, measure, and stop them again."""
    say = Progress("bench")
    report = Report()
    update: dict[str, Any] = {"idle_passivate_s": PASSIVATE_NEVER_S}
    if options.hosts is not None:
        update["hosts"] = options.hosts
    settings = settings.model_copy(update=update)
    home: Path | None = None
    embedded: EmbeddedRedis | None = None
    started_ray = not settings.ray_address
    created_hosts: list[str] = []
    complete = False
    try:
        if settings.redis_url is None:
            home = Path(tempfile.mkdtemp(prefix="convoy-bench-"))
            embedded = EmbeddedRedis(home)
            settings = settings.model_copy(update={"home": home, "redis_url": embedded.start()})
            say(f"redis   embedded at {settings.redis_url} (temporary home {home})")
            if settings.ray_address:
                # Our own Redis, someone else's Ray: private hosts, so theirs never see our Redis.
                namespace = f"{settings.ray_namespace}-bench-{uuid.uuid4().hex[:8]}"
                settings = settings.model_copy(update={"ray_namespace": namespace})
        else:
            say(f"redis   {settings.redis_url} (shared: the benchmark's conversations stay in it)")
        gcs = ray_boot.connect(settings, start_local=True)
        say(f"ray     {'local instance' if started_ray else 'cluster'} at {gcs}")
        created_hosts = _missing_hosts(settings)
        if len(created_hosts) < settings.hosts:
            say("warning: hosts already running keep their own settings (idle_passivate_s included)")
        supervisor.ensure_hosts(settings)
        say(f"hosts   {settings.hosts} conversation host(s) ready")
        asyncio.run(_measure(settings, options, report, say))
        complete = True
        return 0
    finally:
        report.print(complete=complete)
        if not started_ray and created_hosts and ray.is_initialized():
            for name in created_hosts:
                _kill_quietly(name, settings.ray_namespace)
        if started_ray:
            ray_boot.disconnect()
        if embedded is not None:
            embedded.stop()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
        say("stopped")


def _missing_hosts(settings: Settings) -> list[str]:
    missing = []
    for name in supervisor.host_names(settings):
        try:
            ray.get_actor(name, namespace=settings.ray_namespace)
        except ValueError:
            missing.append(name)
    return missing


def _kill_quietly(name: str, namespace: str) -> None:
    with contextlib.suppress(ValueError):  # already gone
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)


@dataclass(frozen=True)
class _Conversations:
    """What the benchmark drives directly, beside the API's state: it activates conversations with
    no message (``deliver``) and reads leases, which no API does."""

    router: ConversationRouter
    directory: Directory


async def _measure(settings: Settings, opts: BenchOptions, report: Report, say: Progress) -> None:
    state = AppState.build(settings)
    await state.start()
    directory = Directory(state.redis, lease_ttl_ms=settings.lease_ttl_ms)
    convs_ = _Conversations(ConversationRouter(settings, directory, state.redis), directory)
    try:
        hosts = _Hosts(settings)
        cpus = ray.cluster_resources().get("CPU", 0)
        report.section(
            f"convoy bench actors   hosts={settings.hosts}  ray={ray.__version__}  cpus={cpus:g}"
            f"  lease_ttl={settings.lease_ttl_ms} ms  echo_delay={settings.echo_delay_ms:g} ms"
        )
        baseline = await _baseline(opts.baseline, say)
        report.section(f"baseline: one plain Ray actor per conversation ({opts.baseline}, created one at a time)")
        report.add("creation + first call", _dist(baseline.start_ms))
        memory = f"{baseline.rss_mean / MIB:8.1f} MiB RSS   {baseline.pss_mean / MIB:.1f} MiB PSS"
        report.add("memory per actor (mean)", memory)

        agent = await state.agents.create(tenant=DEFAULT_TENANT, name="bench", model=ECHO_MODEL_HANDLE, system="")
        total = max(opts.conversations, opts.cold + opts.turns)
        convs = await _create_conversations(state, agent, total, say)
        cold_ids = [c.id for c in convs[: opts.cold]]

        idle = await hosts.sample()
        cold_ms = await _deliver_timed(convs_, cold_ids, report, say, "cold activation")
        active = await hosts.sample()
        report.section("virtual actors: ConversationRouter.deliver, one call at a time")
        report.add("cold activation latency", _dist(cold_ms))
        warm_ms = await _deliver_timed(convs_, cold_ids, report, say, "warm dispatch")
        report.add("warm dispatch latency", _dist(warm_ms))

        report.section("memory per idle activated conversation")
        per_conv = (active.rss - idle.rss) / max(1, active.activations - idle.activations)
        report.add("host RSS, idle hosts", f"{idle.rss / MIB:8.1f} MiB ({idle.activations} active)")
        report.add("host RSS, after cold activations", f"{active.rss / MIB:8.1f} MiB ({active.activations} active)")
        report.add("host RSS per conversation", f"{per_conv / KIB:8.2f} KiB")

        report.section(f"turn dispatch (accept_turn, echo model, {TURN_TEXT!r})")
        cold_turns = convs[opts.cold : opts.cold + opts.turns]
        await _turns(state, cold_turns, report, say, "cold conversation")
        await _turns(state, convs[: min(opts.turns, opts.cold)], report, say, "active conversation")

        delivered = cold_ids + [c.id for c in cold_turns]
        rest = [c.id for c in convs[opts.cold + opts.turns :]]
        per_cap = await _capacity(state, convs_, hosts, idle, delivered, rest, opts, report, say)
        await _hold(state, convs_, hosts, delivered, opts.hold_s, report, say)
        _compare(baseline, cold_ms, {"idle": per_conv, "at capacity": per_cap}, report)
    finally:
        await state.stop()


def _compare(baseline: _Baseline, cold_ms: list[float], per_conv: dict[str, float], report: Report) -> None:
    report.section("baseline / virtual actor")
    if cold_ms and baseline.start_ms:
        ratio = percentile(baseline.start_ms, 50) / percentile(cold_ms, 50)
        report.add("cold start p50", f"{ratio:8.1f} x")
    for label, per in per_conv.items():
        if per > 0 and baseline.rss_mean:
            report.add(
                f"memory per conversation ({label})",
                f"{baseline.rss_mean / per:8.0f} x (actor RSS)   {baseline.pss_mean / per:.0f} x (actor PSS)",
            )


# -- host readings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HostSample:
    activations: int
    rss: int


class _Hosts:
    """The hosts by name, read through ``ConversationHost.stats``."""

    def __init__(self, settings: Settings) -> None:
        self._handles: list[ActorHandle] = [
            ray.get_actor(name, namespace=settings.ray_namespace) for name in supervisor.host_names(settings)
        ]

    async def sample(self) -> _HostSample:
        stats: list[dict[str, Any]] = await asyncio.gather(*(h.stats.remote() for h in self._handles))
        return _HostSample(sum(s["activations"] for s in stats), sum(s["rss_bytes"] for s in stats))


async def _redis_used(state: AppState) -> int:
    return int((await state.redis.info("memory"))["used_memory"])


# -- phases -----------------------------------------------------------------------------------------


async def _create_conversations(state: AppState, agent: AgentRecord, count: int, say: Progress) -> list[ConversationRecord]:
    """Real conversation records, created a batch at a time (the Redis pool refuses, not waits)."""
    per_batch = max(1, min(CREATE_BATCH, state.settings.redis_max_connections // 2))
    convs: list[ConversationRecord] = []
    while len(convs) < count:
        batch = min(per_batch, count - len(convs))
        convs += await asyncio.gather(*(state.conversations.create(agent) for _ in range(batch)))
    say(f"created {count} conversations (agent {agent.id}, model {ECHO_MODEL_HANDLE})")
    return convs


async def _deliver_timed(convs: _Conversations, ids: Sequence[str], report: Report, say: Progress, what: str) -> list[float]:
    """``deliver`` to each conversation in turn; the wall time of each successful call, in ms."""
    times: list[float] = []
    tick = max(1, len(ids) // 5)
    for i, cid in enumerate(ids, 1):
        t0 = time.perf_counter()
        try:
            await convs.router.deliver(cid)
        except Exception as exc:  # measured, not hidden: reported with the figures
            report.errors.append(f"{what} {cid}: {type(exc).__name__}: {exc}")
        else:
            times.append(_ms(time.perf_counter() - t0))
        if i % tick == 0:
            say(f"{what}: {i}/{len(ids)}  p50 so far {percentile(times, 50):.2f} ms")
    return times


async def _deliver_many(state: AppState, convs: _Conversations, ids: Sequence[str], concurrency: int, report: Report) -> int:
    """``deliver`` to all of ``ids``, ``concurrency`` calls in flight; returns the failures.

    In flight is capped at half the Redis pool: the pool raises when exhausted, it does not wait."""
    gate = asyncio.Semaphore(max(1, min(concurrency, state.settings.redis_max_connections // 2)))
    failed = 0

    async def one(cid: str) -> None:
        nonlocal failed
        async with gate:
            try:
                await convs.router.deliver(cid)
            except Exception as exc:
                failed += 1
                report.errors.append(f"capacity {cid}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(cid) for cid in ids))
    return failed


def _is_assistant(payload: bytes) -> bool:
    return b'"assistant_message"' in payload and json.loads(payload).get("message_type") == "assistant_message"


@dataclass(frozen=True)
class _Turn:
    call_ms: float
    started_ms: float
    first_ms: float
    done_ms: float


async def _turn(state: AppState, conv: ConversationRecord) -> _Turn:
    """One turn, timed from just before ``accept_turn`` (see the module docstring)."""
    wall0_ms = time.time() * 1000
    t0 = time.perf_counter()
    view = (await accept_turn(state, OPEN, conv.ref(), SendMessageRequest(input=TURN_TEXT))).run
    call_s = time.perf_counter() - t0
    sub = state.tailers.subscribe(keyspace.run_stream(view.conversation_id, view.id), after=1)  # seq 1 is the ping written on accept
    first_s: float | None = None
    try:
        while True:
            batch = await sub.get(max(0.0, t0 + TURN_TIMEOUT_S - time.perf_counter()))
            if batch is None:
                raise TimeoutError(f"run {view.id} did not finish within {TURN_TIMEOUT_S:g} s")
            now_s = time.perf_counter() - t0
            for item in batch:
                if first_s is None and item.kind == "data" and _is_assistant(item.payload):
                    first_s = now_s
            if any(item.terminal for item in batch):
                done_s = now_s
                break
    finally:
        sub.close()
    raw = await state.runs.raw(conv.id, view.id)
    if raw.get("status") != "completed" or first_s is None:
        raise RuntimeError(f"run {view.id} ended {raw.get('status')!r} ({raw.get('stop_reason')}), no assistant item")
    return _Turn(_ms(call_s), int(raw["started_at_ms"]) - wall0_ms, _ms(first_s), _ms(done_s))


async def _turns(state: AppState, convs: Sequence[ConversationRecord], report: Report, say: Progress, what: str) -> None:
    done: list[_Turn] = []
    for conv in convs:
        try:
            done.append(await _turn(state, conv))
        except Exception as exc:
            report.errors.append(f"turn on {what} {conv.id}: {type(exc).__name__}: {exc}")
    say(f"turns on {len(convs)} {what}s: {len(done)} completed")
    report.add(f"{what}: accept_turn call", _dist([t.call_ms for t in done], with_max=False))
    report.add(f"{what}: accept -> run started", _dist([t.started_ms for t in done], with_max=False) + "  (ms clock)")
    report.add(f"{what}: accept -> first assistant item", _dist([t.first_ms for t in done], with_max=False))
    report.add(f"{what}: accept -> [DONE]", _dist([t.done_ms for t in done], with_max=False))


async def _capacity(
    state: AppState,
    convs: _Conversations,
    hosts: _Hosts,
    idle: _HostSample,
    delivered: list[str],
    rest: list[str],
    opts: BenchOptions,
    report: Report,
    say: Progress,
) -> float:
    """Activate ``rest`` in steps while host RSS stays under budget; returns bytes per conversation."""
    best = last = start = await hosts.sample()
    redis_start = await _redis_used(state)
    rates: list[float] = []
    while rest and best.activations < opts.conversations:
        batch, rest[:] = rest[: opts.step], rest[opts.step :]
        t0 = time.perf_counter()
        failed = await _deliver_many(state, convs, batch, opts.concurrency, report)
        rate = len(batch) / (time.perf_counter() - t0)
        rates.append(rate)
        delivered += batch
        now = last = await hosts.sample()
        say(
            f"capacity: {now.activations} active, host RSS {now.rss / MIB:.0f} MiB, "
            f"{rate:.0f} activations/s ({opts.concurrency} in flight), {failed} failed"
        )
        if now.rss >= opts.budget_bytes:
            break
        best = now
    redis_per = (await _redis_used(state) - redis_start) / max(1, last.activations - start.activations)
    per = (best.rss - idle.rss) / max(1, best.activations - idle.activations)
    report.section(f"capacity (host RSS budget {opts.budget_bytes / GIB:g} GiB, target {opts.conversations})")
    report.add("most active conversations held under budget", f"{best.activations:8d}")
    report.add("host RSS at that point", f"{best.rss / MIB:8.1f} MiB")
    report.add("host RSS per conversation at that point", f"{per / KIB:8.2f} KiB")
    if last.activations > start.activations:
        report.add("Redis used_memory per activation (lease, epoch, host set)", f"{redis_per:8.0f} B")
    if rates:
        rate_text = f"{percentile(rates, 50):8.0f} /s (median step)"
        report.add(f"activation rate ({opts.concurrency} deliver calls in flight)", rate_text)
    if per > 0:
        fit = int((PROJECTION_RSS_BYTES - idle.rss) / per)
        report.add(
            f"projected active conversations in {PROJECTION_RSS_BYTES / GIB:g} GiB",
            f"{fit:8d}  (host RSS; the {state.settings.hosts} hosts' idle RSS included)",
        )
    return per


async def _hold(state: AppState, convs: _Conversations, hosts: _Hosts, delivered: list[str], hold_s: float, report: Report, say: Progress) -> None:
    """Keep everything active for ``hold_s`` (longer than a lease TTL): are all leases renewed, and
    what does dispatch cost meanwhile? Warm ``deliver`` calls run back to back the whole time, so
    the hosts' renewal passes (every TTL/3, one pipeline over all their leases) show in the tail."""
    expected = (await hosts.sample()).activations
    lowest = expected
    warm_ms: list[float] = []
    deadline = next_poll = time.monotonic()
    deadline += hold_s
    i = 0
    while time.monotonic() < deadline:
        if not delivered:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            break
        cid = delivered[i % len(delivered)]
        i += 1
        t0 = time.perf_counter()
        try:
            await convs.router.deliver(cid)
            warm_ms.append(_ms(time.perf_counter() - t0))
        except Exception as exc:
            report.errors.append(f"hold {cid}: {type(exc).__name__}: {exc}")
        if time.monotonic() >= next_poll:
            lowest = min(lowest, (await hosts.sample()).activations)
            next_poll = time.monotonic() + HOLD_POLL_S
    lowest = min(lowest, (await hosts.sample()).activations)
    sample = delivered[:: max(1, len(delivered) // OWNER_SAMPLE)]
    owners = [await convs.directory.owner(cid) for cid in sample]
    probe = [Lease(cid, "bench/probe", 0) for cid in delivered]  # wrong owner: renews nothing
    t0 = time.perf_counter()
    await convs.directory.renew(probe)
    renew_s = time.perf_counter() - t0
    say(f"hold {hold_s:g} s: lowest {lowest}/{expected} active, {len(warm_ms)} warm deliveries")
    ttl_s = state.settings.lease_ttl_ms / 1000
    report.section(f"lease renewal under load (held {hold_s:g} s, lease TTL {ttl_s:g} s, renewed every TTL/3)")
    report.add("activations at start / lowest during hold", f"{expected} / {lowest}")
    report.add("sampled conversations with a live lease", f"{sum(o is not None for o in owners)} / {len(sample)}")
    report.add(f"warm dispatch latency, {expected} active", _dist(warm_ms))
    renew = f"{_ms(renew_s):8.1f} ms  (no-op probe from the driver)"
    report.add(f"one renewal pipeline over {len(probe)} leases", renew)
    if probe and renew_s > 0:
        per_lease_s = renew_s / len(probe)
        report.add("  per lease", f"{per_lease_s * 1e6:8.1f} us")
        limit = int((ttl_s - ttl_s / 3) / per_lease_s)
        report.add("  leases per host before a pass outlasts TTL - period", f"{limit:8d}  (projection, CPU-bound)")


# -- the baseline: one Ray actor per conversation ---------------------------------------------------


@ray.remote(num_cpus=0)
class _PlainConversation:
    """The alternative design: a whole Ray actor (a worker process) for one conversation."""

    async def ping(self) -> dict[str, int]:
        return process_memory()


@dataclass(frozen=True)
class _Baseline:
    start_ms: list[float]
    rss_mean: float
    pss_mean: float


async def _baseline(count: int, say: Progress) -> _Baseline:
    """Create ``count`` plain actors one after another, time each to its first answer, kill them."""
    handles: list[ActorHandle] = []
    times: list[float] = []
    memory: list[dict[str, int]] = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            handle = _PlainConversation.remote()  # type: ignore[attr-defined]
            handles.append(handle)
            await handle.ping.remote()
            times.append(_ms(time.perf_counter() - t0))
            if (i + 1) % 5 == 0 or i + 1 == count:
                say(f"baseline: {i + 1}/{count} plain actors, last {times[-1]:.0f} ms")
        # Measured once all are up: a young worker is still importing and growing.
        memory = list(await asyncio.gather(*(h.ping.remote() for h in handles)))
    finally:
        for handle in handles:
            ray.kill(handle)
    n = max(1, len(memory))
    return _Baseline(times, sum(m["rss_bytes"] for m in memory) / n, sum(m["pss_bytes"] for m in memory) / n)
