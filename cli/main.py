"""The ``convoy`` command: the composition root that starts everything.

``convoy serve`` on a laptop: embedded Redis (unless ``CONVOY_REDIS_URL``), a local Ray (unless
``RAY_ADDRESS``; only what one machine needs, see ``actors.local_ray``), the conversation hosts, and
the API on 127.0.0.1:8283. The embedded Redis is supervised: if it dies, it is started again at once
on the same port and data (see ``runtime.store.embedded``). Ctrl-C (or SIGTERM) stops the API, then Ray, then Redis, in that
order (Redis is not started again then), and leaves no process behind.

``convoy api`` starts one more API replica against an already running Convoy (same Redis, same
Ray); it starts nothing else.

Both bind the API's port before they start anything else: a port in use is a one-line error at
once (exit 2), not after Redis and Ray have started, and nothing can take the port meanwhile.
``--port 0`` listens on a free port, which the ``api`` line prints.

``convoy chat`` talks to an agent from the terminal, over HTTP only (see ``cli.chat``).

``convoy keys create|list|revoke`` manages API keys (see ``cli.keys``). With no key ever
created, ``serve`` and ``api`` run open, and only on a loopback address; they refuse to start on
any other address until a key exists.

``convoy bench actors`` starts the same things as ``serve`` minus HTTP, in a temporary home, and
prints what a conversation costs as a virtual actor next to one Ray actor per conversation (see
``bench.actors``).

``convoy bench streams`` starts Redis, Ray, a producer actor and one API replica (``convoy api`` in
a subprocess) in a temporary home, and prints the latency a chunk picks up on its way from the
conversation's writer to an SSE client, next to a batched, polled bus (see ``bench.streams``).

``convoy bench idle`` starts ``convoy serve`` (run by this interpreter or ``--python``'s) in a
temporary home and prints the CPU, wakeups and memory of each of its processes at rest (see
``bench.idle``).

``convoy bench soak`` starts ``convoy serve`` and a scripted model in a temporary home, runs a mixed
workload (turns, tools, cancels, resumes, disconnects, bad inputs) for ``--minutes``, then checks
its invariants and prints PASS or FAIL for each; it exits 1 if one failed (see ``bench.soak``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import RedisError

from bench import cli as bench_cli
from cli import chat, keys
from runtime.errors import ConfigurationError, ConvoyError
from runtime.logs import configure_logging
from runtime.settings import Settings
from runtime.store.embedded import EmbeddedRedis, recorded_url

if TYPE_CHECKING:
    from fastapi import FastAPI

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
    chat.add_parser(sub)
    bench_cli.add_parser(sub)
    keys.add_parser(sub)
    return parser


def _say(text: str) -> None:
    print(text, flush=True)


def serve(settings: Settings) -> int:
    from actors import ray_boot, supervisor
    from api.app import create_app

    embedded: EmbeddedRedis | None = None
    started_ray = not settings.ray_address
    listener = _listen(settings)
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
        if settings.ray_metrics:
            exporters = ", ".join(f"http://{a}/metrics" for a in ray_boot.metrics_exporters())
            _say(f"metrics hosts at {exporters or 'no node yet'} (Ray's metrics agents); API at /metrics")
        else:
            _say("metrics hosts record none (CONVOY_RAY_METRICS=false); API at /metrics")
        if started_ray and not settings.ray_log_to_driver:
            _say(f"logs    hosts log to {ray_boot.worker_logs()} (CONVOY_RAY_LOG_TO_DRIVER=true copies them here)")
        _say(f"api     listening on {_address(listener)}  (Ctrl-C to stop)")
        _run_api(settings, create_app, listener)
        return 0
    finally:
        listener.close()
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
    with _listen(settings) as listener:
        _check_auth(settings)
        _say(f"api     replica listening on {_address(listener)}")
        _run_api(settings, create_app, listener)
    return 0


def _listen(settings: Settings) -> socket.socket:
    """The API's socket, bound to ``settings.host`` and ``.port`` (0: a free port) and not yet
    listening (uvicorn listens on it once the app is up). ``ConfigurationError`` when it cannot be
    bound: the port is in use, or the address is not this machine's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {settings.host}: {exc.strerror} (CONVOY_HOST, --host)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            " (another process has it? choose another with --port or CONVOY_PORT; 0 picks a free one)"
        ) from None
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_auth(settings: Settings) -> None:
    """Open mode (no key ever created) is for loopback only; say which mode the API runs in."""
    if asyncio.run(keys.keys_exist(settings)):
        _say("auth    API keys required (manage them with `convoy keys`)")
        return
    if not keys.is_loopback(settings.host):
        raise ConfigurationError(
            f"refusing to listen on {settings.host} with no API key: anyone who can reach it would have full access. "
            "Create a key first (`convoy keys create`, same CONVOY_HOME or CONVOY_REDIS_URL), or listen on 127.0.0.1"
        )
    _say("auth    OPEN: no API key exists, so anyone who can reach this loopback address has full access; "
         "`convoy keys create` closes open mode at once")


def _run_api(settings: Settings, create_app: Callable[[Settings], FastAPI], listener: socket.socket) -> None:
    config = uvicorn.Config(
        create_app(settings),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        # Longer than common load balancers' idle timeout (60 s), so an idle keep-alive connection is
        # closed by the balancer, never by us while it reuses it (which fails that request).
        timeout_keep_alive=KEEP_ALIVE_S,
        access_log=False,
    )
    # uvicorn re-raises the signal after its graceful shutdown; that is the normal way out.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[listener])


def _settings(overrides: dict[str, Any]) -> Settings:
    """The settings, or ``ConfigurationError`` naming each bad one as it is set (its variable),
    never a traceback."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable(e['loc'])}: {e['msg']}" + (f" (got {e['input']!r})" if not isinstance(e["input"], dict) else "")
            for e in exc.errors()
        )
        raise ConfigurationError(f"bad setting: {problems}") from None
    except SettingsError as exc:
        raise ConfigurationError(f"bad setting: {exc}{': ' + str(exc.__cause__) if exc.__cause__ else ''}") from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """Where a setting comes from: its environment variable (``--host``/``--port`` set those too)."""
    return "CONVOY_" + str(loc[0]).upper() + "".join(f".{part}" for part in loc[1:]) if loc else "settings"


def _redacted(url: str) -> str:
    """``url`` without a password in it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    try:
        settings = _settings(overrides)
    except ConvoyError as exc:
        print(f"convoy: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "bench":
            return bench_cli.run(settings, args)
        if args.command == "keys":
            return keys.run(settings, args, _say)
        if args.command == "chat":
            return chat.run(settings, args)
        return api_only(settings)
    except ConvoyError as exc:
        print(f"convoy: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        where = _redacted(settings.redis_url) if settings.redis_url else "the embedded server"
        print(f"convoy: Redis at {where} could not be reached ({type(exc).__name__}: {exc}); is it running?", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
