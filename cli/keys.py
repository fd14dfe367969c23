"""``convoy keys create|list|revoke``: manage API keys in the Redis the server uses.

The Redis is ``CONVOY_REDIS_URL``, else the embedded one serving ``CONVOY_HOME``. When no
Convoy owns that home's data directory (no ``convoy serve`` yet), this command starts an embedded
Redis on it for the time it takes, so a key can be created before the server first starts; this is
how a server meant for a non-loopback address gets its first key.

It never starts a second server on a directory that has an owner (``runtime.store.embedded``):
while ``convoy serve``'s Redis is being started again or replays its append-only file, it waits
(up to ``OWNER_WAIT_S``, saying so) for that server to answer and works there, so a key revoked is
revoked in the Redis the API reads; while another command holds the directory, it waits for it to
finish. After that bound it exits with a message naming the owner, having changed nothing.

``create`` prints the new secret as the last word of its output, so
``KEY=$(convoy keys create --tenant acme | awk 'END {print $NF}')`` captures it; it is never shown
again.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from runtime.errors import EmbeddedRedisError
from runtime.schemas.auth import DEFAULT_TENANT, TENANT_PATTERN
from runtime.settings import Settings
from runtime.store.api_keys import KeyStore
from runtime.store.connection import connect
from runtime.store.embedded import DataDirectoryTakenError, EmbeddedRedis, directory_owner, recorded_url

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
# How long to wait for the owner of the data directory: above a restart's longest pause (10 s)
# plus the time the server is given to answer (15 s), see ``runtime.store.embedded``.
OWNER_WAIT_S = 30.0
OWNER_POLL_S = 0.05


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "create, list or revoke API keys (each bound to one tenant)"
    keys = sub.add_parser("keys", help=text, description=text).add_subparsers(dest="keys", required=True)
    text = "create a key and print it (shown once, as the last word of the output)"
    create = keys.add_parser("create", help=text, description=text)
    create.add_argument("--tenant", type=_tenant, default=DEFAULT_TENANT, help="the tenant the key acts for (default %(default)s)")
    create.add_argument("--name", default="", help="a label to recognise the key by")
    create.add_argument(
        "--requests-per-minute", type=_non_negative, default=None, help="rate limit (default: CONVOY_KEY_REQUESTS_PER_MINUTE; 0: none)"
    )
    create.add_argument(
        "--concurrent-runs", type=_non_negative, default=None, help="unfinished runs at once (default: CONVOY_KEY_CONCURRENT_RUNS; 0: none)"
    )
    keys.add_parser("list", help="list keys (never their secrets)", description="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key at once", description="revoke a key at once")
    revoke.add_argument("key_id", help="the key's id (key-…), as `convoy keys list` shows it")


def run(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> int:
    command: Callable[[KeyStore], Coroutine[Any, Any, None]]
    if args.keys == "create":

        async def command(store: KeyStore) -> None:
            secret, record = await store.create(
                tenant=args.tenant,
                name=args.name,
                requests_per_minute=args.requests_per_minute,
                concurrent_runs=args.concurrent_runs,
            )
            say(f"created {record.id} for tenant {record.tenant}; the key is shown only this once:")
            say(secret)

    elif args.keys == "list":

        async def command(store: KeyStore) -> None:
            records = await store.list()
            if not records:
                say("no API keys (the server runs open on loopback until one is created)")
            for r in records:
                rpm = "default" if r.requests_per_minute is None else r.requests_per_minute
                runs = "default" if r.concurrent_runs is None else r.concurrent_runs
                say(
                    f"{r.id}  tenant={r.tenant}  name={r.name or '-'}  key={r.prefix}…  "
                    f"created={r.created_at:%Y-%m-%d %H:%M:%S}Z  requests/min={rpm}  concurrent runs={runs}"
                )

    else:

        async def command(store: KeyStore) -> None:
            record = await store.revoke(args.key_id)
            say(f"revoked {record.id} (tenant {record.tenant}); requests carrying it are refused from now on")

    async def main() -> None:
        async with key_store(settings, say) as store:
            await command(store)

    asyncio.run(main())
    return 0


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def keys_exist(settings: Settings) -> bool:
    """Whether a key was ever created in the configured Redis (so the server must not run open)."""
    redis = connect(settings)
    try:
        return await KeyStore(redis).closed()
    finally:
        await redis.aclose()


@asynccontextmanager
async def key_store(settings: Settings, say: Callable[[str], None]) -> AsyncIterator[KeyStore]:
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        url, embedded = await _embedded_redis(settings.home_dir, say)
        settings = settings.model_copy(update={"redis_url": url})
    redis = connect(settings)
    try:
        yield KeyStore(redis)
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _embedded_redis(home: Path, say: Callable[[str], None]) -> tuple[str, EmbeddedRedis | None]:
    """The URL of the embedded Redis serving ``home``, and the server this command started for
    itself if it had to (stop it when done). A ``convoy serve`` that owns the directory is used,
    waited for while its server is away; another command's is waited out, never shared (it stops
    its server when it finishes)."""
    deadline = time.monotonic() + OWNER_WAIT_S
    said_waiting = False
    while True:
        owner = directory_owner(home)
        url = recorded_url(home)
        if url is not None and (owner is None or owner.supervised):
            return url, None
        embedded = EmbeddedRedis(home)
        try:
            url = await asyncio.to_thread(embedded.start)
        except DataDirectoryTakenError as taken:
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(_still_taken(home, taken)) from taken
            if not said_waiting:
                say(_waiting(home, taken))
                said_waiting = True
            await asyncio.sleep(OWNER_POLL_S)
            continue
        say(f"(started the embedded Redis of {home} for this command)")
        return url, embedded


def _waiting(home: Path, taken: DataDirectoryTakenError) -> str:
    if taken.owner is not None and not taken.owner.supervised:
        return f"(waiting for another command (pid {taken.owner.pid}) to finish with the embedded Redis of {home})"
    pid = f" (pid {taken.owner.pid})" if taken.owner else ""
    return f"(waiting for the embedded Redis of {home} to answer: its Convoy{pid} is starting it, or it is loading its data)"


def _still_taken(home: Path, taken: DataDirectoryTakenError) -> str:
    """What to tell a person when the owner did not become usable in time (nothing was changed)."""
    if taken.owner is not None and not taken.owner.supervised:
        return (
            f"another command (pid {taken.owner.pid}) has held the embedded Redis of {home} for over "
            f"{OWNER_WAIT_S:.0f} s; nothing was changed: try again once it has finished"
        )
    who = f"convoy serve (pid {taken.owner.pid})" if taken.owner else "another process"
    return (
        f"the embedded Redis of {home} belongs to {who}, and it did not answer within "
        f"{OWNER_WAIT_S:.0f} s (starting again, or loading a large append-only file); nothing was changed: "
        f"try again in a moment, see {home / 'redis' / 'server.log'}, or stop that process and run this again"
    )


def _tenant(text: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, text):
        raise argparse.ArgumentTypeError("a tenant is 1-63 characters: lowercase letters, digits, '-' and '_'")
    return text


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value
