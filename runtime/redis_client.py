"""How Convoy connects to Redis: one factory, so every process gets the same, safe options.

redis-py's socket timeout must stay above any ``XREAD BLOCK`` we issue (the block is
bounded by ``Settings.read_block_ms`` and loops); hiredis parses replies when installed.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from runtime.settings import Settings

CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 30
POOL_WAIT_S = 5.0


def connect(settings: Settings, url: str | None = None, *, max_connections: int | None = None) -> aioredis.Redis:
    """A pooled asyncio client for ``url`` (default: the configured Redis)."""
    target = url or settings.redis_url
    if not target:
        raise ValueError("no Redis URL: set CONVOY_REDIS_URL or start the embedded Redis first")
    if settings.read_block_ms / 1000 >= settings.redis_socket_timeout_s:
        raise ValueError("CONVOY_READ_BLOCK_MS must be shorter than CONVOY_REDIS_SOCKET_TIMEOUT_S")
    # A blocking pool: a burst of more concurrent commands than connections waits for one to
    # free up (bounded by POOL_WAIT_S) instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        target,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=POOL_WAIT_S,
        # No automatic re-sending: most of Convoy's writes are scripts that must run once, and a
        # command whose reply was lost may already have run. Callers decide what a failure means.
        retry=Retry(NoBackoff(), retries=0),
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


def reraise_if_cancelling() -> None:
    """Call in an ``except`` of a retrying loop: redis-py may turn a cancellation that lands
    mid-command into a ConnectionError, and a loop must not swallow its own cancellation that way."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
