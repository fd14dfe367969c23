"""How Convoy connects to Redis: one factory, so every process gets the same, safe options.

- redis-py's socket timeout must stay above any ``XREAD BLOCK`` we issue (the block is bounded by
  ``Settings.read_block_ms`` and loops); hiredis parses replies when installed.
- **Reaching Redis is patient.** Opening a connection that fails (refused, timed out: Redis is
  restarting) is tried again with jittered exponential backoff, for up to ``RECONNECT_PATIENCE_S``
  (10 s) in all, also while Redis is frozen (it accepts connections and answers nothing), so a
  command issued while Redis restarts waits for it instead of failing, and one issued while Redis
  stays away fails within that bound (an API request: 503 with ``Retry-After``). A command
  answered ``LOADING`` (Redis replaying its append-only file) did not run and is sent again the
  same way.
- **A stale connection is never used.** A pooled connection whose server went away is noticed when
  it is taken from the pool and replaced before anything is sent on it. (redis-py skips that check
  while its "maintenance notifications" are on; they serve Redis Enterprise's live resharding,
  which Convoy does not use, so they are off.)
- **A command that was sent is never re-sent by the client.** If its connection breaks after it
  left, it may have run, and most of Convoy's writes are scripts that must run once. The caller
  decides: a conversation's owner sends its writes again, all of them idempotent, for up to
  ``CONVOY_STORE_OUTAGE_S`` (``runtime.store.fencing.through_outage``; the chunk appends of ``runtime.stream.writer``
  too); every other caller (an API request: 503 with ``Retry-After``) reports the failure.

**A single Redis or a Redis Cluster** (Valkey's too), chosen by the URL: ``redis://`` (or
``rediss://``, ``unix://``) is one server; ``redis+cluster://host:port[,host:port...]`` (or
``rediss+cluster://``) is a cluster, the nodes listed being where discovery starts (one is enough;
user and password as in any Redis URL). A cluster client is redis-py's
(``redis.asyncio.cluster.RedisCluster``): it knows which primary serves which slot, sends each
command there, and follows ``MOVED``/``ASK`` redirections and failovers itself. Convoy keeps every
key a command or script touches in one slot (``runtime.store.keyspace``; what spans slots is split
per slot: ``runtime.store.slots``). In a cluster:

- a command whose primary cannot be reached fails at once rather than waiting for it (redis-py
  refreshes its map of the slots before the next one; its re-sending of a failed command is turned
  off, as everywhere in Convoy); what waits is what waits on a single Redis: an owner's writes
  (``through_outage``), the tailers and the host loops, which try again;
- a slot nobody serves for the moment (``CLUSTERDOWN``, ``TRYAGAIN`` during a resharding, a
  primary marked down) is reported as a connection error: the command did not run, and callers
  treat it as Redis being away (an owner sends it again; an API request answers 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from runtime.settings import Settings
from runtime.store.mux import MultiplexedRedis, connection_kwargs

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""What ``connect`` returns: one server's client, or a cluster's."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# A cluster that cannot serve a slot for the moment: the command did not run (see the docstring).
SLOT_UNAVAILABLE = (ClusterDownError, TryAgainError, SlotNotCoveredError, MasterDownError)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 30
POOL_WAIT_S = 5.0
RECONNECT_BACKOFF_BASE_S = 0.05
RECONNECT_BACKOFF_CAP_S = 1.0
RECONNECT_RETRIES = 16  # their backoffs add up to about 10 s
RECONNECT_PATIENCE_S = 10.0  # the longest a connection is waited for, however each try fails


def backoff_retry(retries: int, errors: tuple[type[Exception], ...]) -> Retry:
    """redis-py's retry policy with Convoy's backoff (jittered, 50 ms doubling up to 1 s)."""
    return Retry(EqualJitterBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=RECONNECT_BACKOFF_BASE_S), retries, errors)


async def _reach(conn: AbstractConnection, connect: Callable[[], Awaitable[None]]) -> None:
    """Open ``conn`` with ``connect``, trying again with backoff while Redis cannot be reached, for
    at most ``RECONNECT_PATIENCE_S`` in all: a frozen Redis accepts connections and never answers
    the handshake, so each try there lasts the socket timeout, and sixteen of them took minutes."""

    async def not_reached(error: Exception) -> None:
        reraise_if_cancelling()
        log.debug("Redis not reachable, trying again", extra={"error": str(error)})
        await conn.disconnect()

    retry = backoff_retry(RECONNECT_RETRIES, (RedisConnectionError, RedisTimeoutError, OSError))
    try:
        async with asyncio.timeout(RECONNECT_PATIENCE_S):
            await retry.call_with_retry(connect, not_reached)
    except TimeoutError as exc:
        await conn.disconnect()
        raise RedisConnectionError(f"Redis not reachable within {RECONNECT_PATIENCE_S:g} s") from exc


class PatientConnection(aioredis.Connection):
    async def connect(self) -> None:
        await _reach(self, super().connect)


class PatientSSLConnection(aioredis.SSLConnection):
    async def connect(self) -> None:
        await _reach(self, super().connect)


class PatientUnixConnection(aioredis.UnixDomainSocketConnection):
    async def connect(self) -> None:
        await _reach(self, super().connect)


_PATIENT: dict[type[AbstractConnection], type[AbstractConnection]] = {
    aioredis.Connection: PatientConnection,
    aioredis.SSLConnection: PatientSSLConnection,
    aioredis.UnixDomainSocketConnection: PatientUnixConnection,
}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def is_cluster(redis: object) -> TypeGuard[RedisCluster]:
    """Whether ``redis`` is a cluster client (``connect`` on a ``redis+cluster://`` URL)."""
    return isinstance(redis, RedisCluster)


def connect(settings: Settings, url: str | None = None, *, max_connections: int | None = None) -> Any:
    """An asyncio client for ``url`` (default: the configured Redis): for one server, its plain
    commands share one auto-pipelined connection (``runtime.store.mux``) and the rest use its pool;
    for a cluster (``redis+cluster://``), redis-py's cluster client (see the module docstring).
    Typed ``Any``: callers use the commands both clients have (``RedisClient``)."""
    target = url or settings.redis_url
    if not target:
        raise ValueError("no Redis URL: set CONVOY_REDIS_URL or start the embedded Redis first")
    if settings.read_block_ms / 1000 >= settings.redis_socket_timeout_s:
        raise ValueError("CONVOY_READ_BLOCK_MS must be shorter than CONVOY_REDIS_SOCKET_TIMEOUT_S")
    if is_cluster_url(target):
        return _cluster(settings, target, max_connections or settings.redis_max_connections)
    # A blocking pool: a burst of more concurrent commands than connections waits for one to
    # free up (bounded by POOL_WAIT_S) instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        target,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=POOL_WAIT_S,
        # Only what certainly did not run is sent again (see the module docstring).
        retry=backoff_retry(RECONNECT_RETRIES, (BusyLoadingError,)),
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        decode_responses=False,
    )
    pool.connection_class = _PATIENT.get(pool.connection_class, pool.connection_class)
    return MultiplexedRedis.from_pool(pool)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes of a ``redis+cluster://`` URL and the client options it carries (TLS, user,
    password). Refuses a URL that names a database (a cluster has only database 0)."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (redis+cluster://host:port,...): {url!r}")
    auth, _, hosts = parts.netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster URL {url!r}: each node is host:port (got {item!r})")
        seeds.append((host.strip("[]"), int(port)))
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"cluster URL {url!r}: a cluster has only database 0")
    options: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[parts.scheme] == "rediss"}
    if auth:
        user, has_password, password = auth.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) if has_password else None
    return seeds, options


class _Cluster(RedisCluster):
    """redis-py's cluster client, with a slot that cannot be served for the moment reported as a
    connection error (see the module docstring)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SLOT_UNAVAILABLE as exc:
            raise RedisConnectionError(f"Redis Cluster cannot serve this slot now: {exc}") from exc


def _cluster(settings: Settings, url: str, max_connections: int) -> RedisCluster:
    seeds, options = cluster_seeds(url)
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        # Serve the slots that are served while a primary is away (see bench.rediscluster).
        require_full_coverage=False,
        # Never send a command again after its connection failed: it may have run (see the
        # module docstring). MOVED, ASK and TRYAGAIN are still followed: those did not run.
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        decode_responses=False,
        **options,
    )


def dedicated(redis: Any) -> Any:
    """A client for blocking reads, which must neither queue behind the shared connection nor hold
    one of its pool's: for one server, a client with one connection of its own, configured like
    ``redis``; for a cluster, the cluster client itself (its blocking read holds one connection of
    the node that serves the key, from that node's pool). Close it with ``close_dedicated``."""
    if is_cluster(redis):
        return redis
    shared = redis.connection_pool
    pool = aioredis.ConnectionPool(
        connection_class=shared.connection_class,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        **connection_kwargs(shared),
    )
    return aioredis.Redis(connection_pool=pool, single_connection_client=True)


async def close_dedicated(reader: Any, redis: Any) -> None:
    """Close what ``dedicated(redis)`` made (nothing, for a cluster: it is ``redis`` itself)."""
    if reader is not redis:
        await reader.aclose()
        await reader.connection_pool.disconnect()


def reraise_if_cancelling() -> None:
    """Call in an ``except`` of a retrying loop: redis-py may turn a cancellation that lands
    mid-command into a ConnectionError, and a loop must not swallow its own cancellation that way."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
