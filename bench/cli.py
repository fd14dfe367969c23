"""``convoy bench ...``: the benchmarks' command line. The server's CLI (``cli.main``) adds this parser
and hands the parsed arguments to ``run``; nothing here is imported by a server process.

The benchmarks are clients of Convoy (HTTP, SSE), through the same libraries as ``convoy chat``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from runtime.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    text = "measure and print figures; `soak` also checks invariants (PASS/FAIL each, exit 1 if one failed)"
    bench = sub.add_parser("bench", help=text, description=text).add_subparsers(dest="bench", required=True)
    text = "cold/warm activation, turn dispatch, memory and capacity of conversations, against a Ray actor each"
    cmd = bench.add_parser("actors", help=text, description=text)
    for flag, kind, default, text in (
        ("--cold", int, 2000, "conversations activated one at a time for the latency figures"),
        ("--conversations", int, 10_000, "capacity target: conversations active at once"),
        ("--budget-gib", float, 8.0, "stop adding activations once the hosts' summed RSS reaches this"),
        ("--turns", int, 200, "turns timed on cold and on active conversations, each"),
        ("--baseline", int, 20, "plain Ray actors created for the baseline"),
        ("--step", int, 1000, "activations added per capacity step"),
        ("--concurrency", int, 32, "deliver calls in flight during capacity steps"),
        ("--hold-s", float, 12.0, "keep everything active this long at the end (longer than the lease TTL)"),
    ):
        cmd.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    cmd.add_argument("--hosts", type=int, default=None, help="conversation hosts (default: CONVOY_HOSTS, else 2)")
    text = "per-chunk latency writer -> SSE client at steady rates and many streams, against a batched, polled bus"
    cmd = bench.add_parser("streams", help=text, description=text)
    flags: tuple[tuple[str, Callable[[str], object], object, str], ...] = (
        ("--streams", int, 2, "concurrent streams in the per-rate scenarios"),
        ("--rates", _rates, "20,200", "chunks/s per stream, one scenario each (comma-separated)"),
        ("--many", int, 1000, "concurrent streams in the many-streams scenario (0: skip it)"),
        ("--many-rate", float, 0.5, "chunks/s per stream in the many-streams scenario (2 cores: keep the total low)"),
        ("--warmup-s", float, 3.0, "seconds streamed before measuring, per phase"),
        ("--measure-s", float, 12.0, "seconds measured per phase"),
    )
    for flag, parse, value, about in flags:
        cmd.add_argument(flag, type=parse, default=value, help=f"{about} (default %(default)s)")
    cmd.add_argument("--no-http", action="store_true", help="skip the HTTP SSE phases (no API replica)")
    cmd.add_argument("--no-baseline", action="store_true", help="skip the batched/polled baseline phases")
    cmd.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help="processes reading the SSE streams (default: one per 100 streams, at most one per core)",
    )
    text = "time to first token and per-token lag through Convoy, against a direct SDK call to the same upstream"
    cmd = bench.add_parser("providers", help=text, description=text)
    for flag, kind, default, text in (
        ("--turns", int, 40, "turns measured (each made once directly and once through Convoy)"),
        ("--tokens", int, 20, "tokens the upstream streams per response"),
        ("--rate", float, 100.0, "tokens per second the upstream streams at"),
        ("--warmup", int, 3, "turns made before measuring"),
        ("--python", str, sys.executable, "the interpreter that runs convoy serve (another checkout's venv: its code)"),
    ):
        cmd.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    text = "Redis shards, a 2-node Ray cluster and 2 API replicas on this machine: idle conversations' memory, many streams' latency and CPU"
    cmd = bench.add_parser("scale", help=text, description=text)
    for flag, parse, value, about in (
        ("--conversations", int, 100_000, "conversations created and left idle, per phase"),
        ("--streams", int, 1000, "conversations streaming at once"),
        ("--tokens", int, 10, "tokens per turn"),
        ("--rate", float, 0.2, "tokens per second per stream"),
        ("--shards", _shards, "1,3", "Redis shards per phase, comma-separated (1: one server; N: a Redis Cluster of N primaries)"),
        ("--clients", int, 4, "client processes"),
        ("--warmup-s", float, 10.0, "seconds streamed before measuring"),
        ("--measure-s", float, 30.0, "seconds measured"),
    ):
        cmd.add_argument(flag, type=parse, default=value, help=f"{about} (default %(default)s)")
    text = "CPU per turn of the whole server at steady load, and a burst of turns sent at once: accept and first-token latency"
    cmd = bench.add_parser("turns", help=text, description=text)
    for flag, parse, value, about in (
        ("--concurrency", int, 50, "conversations making turns back to back in the steady phase (0: skip it)"),
        ("--tokens", int, 50, "tokens per turn"),
        ("--rate", float, 100.0, "tokens per second the upstream streams at"),
        ("--warmup-s", float, 5.0, "seconds of steady turns before measuring"),
        ("--measure-s", float, 20.0, "seconds of steady turns measured"),
        ("--burst", int, 1000, "turns sent at the same instant, each on a fresh conversation (0: skip it)"),
        ("--clients", int, 2, "client processes"),
        ("--python", str, sys.executable, "the interpreter that runs convoy serve (another checkout's venv: its code)"),
        ("--against", str, "", "another interpreter (a checkout's venv) measured in the same run, alternated with --python, as before"),
        ("--rounds", int, 3, "with --against: runs of each side, in the order before, after, after, before, ..."),
    ):
        cmd.add_argument(flag, type=parse, default=value, help=f"{about} (default %(default)s)")
    _settings_option(
        cmd,
        "an environment variable for --python's server only (repeatable): with --against the same interpreter, "
        "a before/after of a setting, e.g. CONVOY_STREAM_WRITE_WINDOW_MS=5",
    )
    text = "a conversation host's CPU per streamed token, layer by layer: the provider SDK's read, Convoy's adapter, deadlines, items, Redis writes"
    cmd = bench.add_parser("layers", help=text, description=text)
    for flag, parse, value, about in (
        ("--streams", int, 20, "streams at a time"),
        ("--tokens", int, 200, "tokens per stream"),
        ("--rate", float, 400.0, "tokens per second each stream's upstream sends"),
        ("--rounds", int, 5, "rounds, each layer measured once per round"),
    ):
        cmd.add_argument(flag, type=parse, default=value, help=f"{about} (default %(default)s)")
    text = "CPU and memory of `convoy serve` at rest, process by process (Ray's daemons included), against issue 22's targets"
    cmd = bench.add_parser("idle", help=text, description=text)
    for flag, kind, default, text in (
        ("--seconds", float, 30.0, "seconds measured"),
        ("--settle-s", float, 10.0, "seconds left to the server after it is healthy, before measuring"),
    ):
        cmd.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    cmd.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs the server, e.g. another venv's for a before/after (default: this one)",
    )
    _settings_option(cmd, "an environment variable for the server (repeatable), e.g. CONVOY_HOSTS=1")
    text = "a mixed workload for N minutes, then invariants (PASS/FAIL each; exit 1 if one failed) and figures"
    cmd = bench.add_parser("soak", help=text, description=text)
    for flag, kind, default, text in (
        ("--minutes", float, 5.0, "how long the workload runs"),
        ("--clients", int, 8, "concurrent clients, each doing one thing at a time"),
        ("--seed", int, 1, "seed of the clients' random choices"),
        ("--fault-every-s", float, 30.0, "seconds between two faults, the first one right after the warm-up"),
    ):
        cmd.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    cmd.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SIGKILL a conversation host now and then, round-robin; each fault must be survived (default on)",
    )
    cmd.add_argument(
        "--redis-outage-s",
        type=float,
        default=0.0,
        help="once, halfway: freeze the embedded Redis this long, then SIGKILL it (serve must restart it); "
        "every invariant must still hold (default 0: off)",
    )


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _settings_option(cmd: argparse.ArgumentParser, about: str) -> None:
    """``--set NAME=VALUE``, repeatable, into ``settings``: settings for a server the benchmark starts."""
    cmd.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="NAME=VALUE", help=about)


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _shards(text: str) -> tuple[int, ...]:
    try:
        shards = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated shard counts, got {text!r}") from exc
    if not shards or min(shards) < 1:
        raise argparse.ArgumentTypeError(f"shard counts are 1 or more, got {text!r}")
    return shards


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the benchmark ``args`` names."""
    if args.bench == "streams":
        return bench_streams(settings, args)
    if args.bench == "soak":
        from bench.soak import SoakOptions
        from bench.soak import run as run_soak

        return run_soak(
            SoakOptions(
                minutes=args.minutes,
                clients=args.clients,
                seed=args.seed,
                faults=args.faults,
                fault_every_s=args.fault_every_s,
                redis_outage_s=args.redis_outage_s,
            )
        )
    if args.bench == "scale":
        from bench.scale import ScaleOptions
        from bench.scale import run as run_scale

        return run_scale(
            ScaleOptions(
                conversations=args.conversations,
                streams=args.streams,
                tokens=args.tokens,
                rate_hz=args.rate,
                shards=args.shards,
                clients=args.clients,
                warmup_s=args.warmup_s,
                measure_s=args.measure_s,
            )
        )
    if args.bench == "turns":
        from bench.turns import TurnsOptions
        from bench.turns import run as run_turns

        return run_turns(
            TurnsOptions(
                concurrency=args.concurrency,
                tokens=args.tokens,
                rate_hz=args.rate,
                warmup_s=args.warmup_s,
                measure_s=args.measure_s,
                burst=args.burst,
                clients=args.clients,
                python=args.python,
                against=args.against,
                rounds=args.rounds,
                env=dict(args.settings),
            )
        )
    if args.bench == "layers":
        from bench.layers import LayersOptions
        from bench.layers import run as run_layers

        return run_layers(LayersOptions(streams=args.streams, tokens=args.tokens, rate_hz=args.rate, rounds=args.rounds))
    if args.bench == "idle":
        from bench.idle import IdleOptions
        from bench.idle import run as run_idle

        return run_idle(IdleOptions(seconds=args.seconds, settle_s=args.settle_s, python=args.python, env=dict(args.settings)))
    if args.bench == "providers":
        from bench.providers import ProvidersOptions
        from bench.providers import run as run_providers

        return run_providers(
            ProvidersOptions(turns=args.turns, tokens=args.tokens, rate_hz=args.rate, warmup=args.warmup, python=args.python)
        )
    from bench.actors import BenchOptions, run

    options = BenchOptions(
        cold=args.cold,
        conversations=args.conversations,
        budget_bytes=int(args.budget_gib * 1024**3),
        turns=args.turns,
        baseline=args.baseline,
        step=args.step,
        concurrency=args.concurrency,
        hold_s=args.hold_s,
        hosts=args.hosts,
    )
    return run(settings, options)


def bench_streams(settings: Settings, args: argparse.Namespace) -> int:
    from bench.streams.driver import run
    from bench.streams.plan import StreamsOptions

    options = StreamsOptions(
        streams=args.streams,
        rates_hz=args.rates,
        many=args.many,
        many_rate_hz=args.many_rate,
        warmup_s=args.warmup_s,
        measure_s=args.measure_s,
        http=not args.no_http,
        baseline=not args.no_baseline,
        client_processes=args.client_processes,
    )
    return run(settings, options)


