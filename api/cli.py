"""The ``convoy`` command: the composition root that starts everything.

``convoy serve`` on a laptop: embedded Redis (unless ``CONVOY_REDIS_URL``), a local Ray (unless
``RAY_ADDRESS``), the conversation hosts, and the API on 127.0.0.1:8283. The embedded Redis is
supervised: if it dies, it is started again at once on the same port and data (see
``runtime.store.embedded``). Ctrl-C (or SIGTERM) stops the API, then Ray, then Redis, in that
order (Redis is not started again then), and leaves no process behind.

``convoy api`` starts one more API replica against an already running Convoy (same Redis, same
Ray); it starts nothing else.

``convoy keys create|list|revoke`` manages API keys (see ``api.keys_cli``). With no key ever
created, ``serve`` and ``api`` run open, and only on a loopback address; they refuse to start on
any other address until a key exists.

``convoy bench actors`` starts the same things as ``serve`` minus HTTP, in a temporary home, and
prints what a conversation costs as a virtual actor next to one Ray actor per conversation (see
``api.bench.actors``).

``convoy bench streams`` starts Redis, Ray, a producer actor and one API replica (``convoy api`` in
a subprocess) in a temporary home, and prints the latency a chunk picks up on its way from the
conversation's writer to an SSE client, next to a batched, polled bus (see ``api.bench.streams``).

``convoy bench soak`` starts ``convoy serve`` and a scripted model in a temporary home, runs a mixed
workload (turns, tools, cancels, resumes, disconnects, bad inputs) for ``--minutes``, then checks
its invariants and prints PASS or FAIL for each; it exits 1 if one failed (see ``api.bench.soak``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence

import uvicorn

from api import keys_cli
from runtime.errors import ConfigurationError, ConvoyError
from runtime.logs import configure_logging
from runtime.settings import Settings
from runtime.store.embedded import EmbeddedRedis, recorded_url

log = logging.getLogger("convoy")
KEEP_ALIVE_S = 75


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convoy", description="Streaming LLM agent conversations on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "start Redis (embedded unless CONVOY_REDIS_URL), Ray (local unless RAY_ADDRESS), hosts and the API"),
        ("api", "start one more API replica against a running Convoy"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
        cmd.add_argument("--port", type=int, default=None, help="port to listen on (default 8283)")
    _bench_parser(sub)
    keys_cli.add_parser(sub)
    return parser


def _bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    text = "time to first token and per-token lag through Convoy, against a direct SDK call to the same upstream"
    cmd = bench.add_parser("providers", help=text, description=text)
    for flag, kind, default, text in (
        ("--turns", int, 40, "turns measured (each made once directly and once through Convoy)"),
        ("--tokens", int, 20, "tokens the upstream streams per response"),
        ("--rate", float, 100.0, "tokens per second the upstream streams at"),
        ("--warmup", int, 3, "turns made before measuring"),
    ):
        cmd.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
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


def _say(text: str) -> None:
    print(text, flush=True)


def serve(settings: Settings) -> int:
    from actors import ray_boot, supervisor
    from api.app import create_app

    embedded: EmbeddedRedis | None = None
    started_ray = not settings.ray_address
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis(settings.home_dir, supervised=True)
            url = embedded.start()
            settings = settings.model_copy(update={"redis_url": url})
            _say(f"redis   embedded at {url} (data in {embedded.dir}, append-only; restarted if it dies)")
        else:
            _say(f"redis   {settings.redis_url}")
        _check_auth(settings)
        gcs = ray_boot.connect(settings, start_local=True)
        _say(f"ray     {'local instance' if started_ray else 'cluster'} at {gcs}")
        hosts = supervisor.ensure_hosts(settings)
        if settings.placement == "dedicated":
            _say("hosts   dedicated placement: one Ray actor per active conversation")
        else:
            _say(f"hosts   {len(hosts)} conversation host(s) ready")
        _say(f"model   default {settings.resolved_default_model()}")
        _say(f"api     listening on http://{settings.host}:{settings.port}  (Ctrl-C to stop)")
        _run_api(settings, create_app)
        return 0
    finally:
        if started_ray:
            ray_boot.disconnect()
        if embedded is not None:
            embedded.stop()
        _say("convoy  stopped")


def api_only(settings: Settings) -> int:
    from api.app import create_app

    if settings.redis_url is None:
        url = recorded_url(settings.home_dir)
        if url is None:
            raise ConvoyError("no Redis: set CONVOY_REDIS_URL, or start `convoy serve` with the same CONVOY_HOME first")
        settings = settings.model_copy(update={"redis_url": url})
    _check_auth(settings)
    _say(f"api     replica listening on http://{settings.host}:{settings.port}")
    _run_api(settings, create_app)
    return 0


def _check_auth(settings: Settings) -> None:
    """Open mode (no key ever created) is for loopback only; say which mode the API runs in."""
    if asyncio.run(keys_cli.keys_exist(settings)):
        _say("auth    API keys required (manage them with `convoy keys`)")
        return
    if not keys_cli.is_loopback(settings.host):
        raise ConfigurationError(
            f"refusing to listen on {settings.host} with no API key: anyone who can reach it would have full access. "
            "Create a key first (`convoy keys create`, same CONVOY_HOME or CONVOY_REDIS_URL), or listen on 127.0.0.1"
        )
    _say("auth    OPEN: no API key exists, so anyone who can reach this loopback address has full access; "
         "`convoy keys create` closes open mode at once")


def _run_api(settings: Settings, create_app: object) -> None:
    config = uvicorn.Config(
        create_app(settings),  # type: ignore[operator]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        # Longer than common load balancers' idle timeout (60 s), so an idle keep-alive connection is
        # closed by the balancer, never by us while it reuses it (which fails that request).
        timeout_keep_alive=KEEP_ALIVE_S,
        access_log=False,
    )
    # uvicorn re-raises the signal after its graceful shutdown; that is the normal way out.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


def bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.bench == "streams":
        return bench_streams(settings, args)
    if args.bench == "soak":
        from api.bench.soak import SoakOptions
        from api.bench.soak import run as run_soak

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
    if args.bench == "providers":
        from api.bench.providers import ProvidersOptions
        from api.bench.providers import run as run_providers

        return run_providers(
            ProvidersOptions(turns=args.turns, tokens=args.tokens, rate_hz=args.rate, warmup=args.warmup)
        )
    from api.bench.actors import BenchOptions, run

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
    from api.bench.streams import StreamsOptions, run

    options = StreamsOptions(
        streams=args.streams,
        rates_hz=args.rates,
        many=args.many,
        many_rate_hz=args.many_rate,
        warmup_s=args.warmup_s,
        measure_s=args.measure_s,
        http=not args.no_http,
        baseline=not args.no_baseline,
    )
    return run(settings, options)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings)
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "bench":
            return bench(settings, args)
        if args.command == "keys":
            return keys_cli.run(settings, args, _say)
        return api_only(settings)
    except ConvoyError as exc:
        print(f"convoy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
