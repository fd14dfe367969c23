"""The hot paths' own connections (``runtime.store.direct``) on a real Redis: bounded by the client's
socket timeout as a whole, never hung by a server gone silent."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.settings import Settings
from runtime.store.connection import RECONNECT_PATIENCE_S, connect
from runtime.store.direct import Direct
from tests.fakes.proxy import SilencingProxy


async def test_replies_come_back_in_order_with_error_replies_returned(redis_url: str) -> None:
    """On one server and on a cluster (there each command goes to its key's primary)."""
    client = connect(Settings(redis_url=redis_url))
    direct = Direct(client)
    key = f"test:{uuid.uuid4()}"
    try:
        other = f"{key}:other"  # another slot on a cluster
        replies = await direct.execute([("SET", key, "v"), ("INCR", key), ("GET", key), ("SET", other, "w")], [key, key, key, other])
        assert replies[0] == b"OK" and replies[2] == b"v" and replies[3] == b"OK"
        assert isinstance(replies[1], ResponseError), "an error reply is returned in its place, not raised"
    finally:
        await direct.close()
        await client.aclose()


@contextlib.asynccontextmanager
async def _behind_a_proxy(redis_url: str, socket_timeout_s: float) -> AsyncIterator[tuple[SilencingProxy, Direct]]:
    """A hot path's connections to ``redis_url`` through a proxy that can silence or freeze it."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with SilencingProxy(port) as proxy:
        client = connect(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_socket_timeout_s=socket_timeout_s, read_block_ms=100))
        direct = Direct(client)
        try:
            assert await direct.execute([("PING",)], ["k"]) == [b"PONG"]
            yield proxy, direct
        finally:
            await direct.close()
            await client.aclose()


@pytest.mark.single_redis  # a proxy in front of one server
async def test_a_silent_connection_times_out_and_the_next_call_opens_a_new_one(redis_url: str) -> None:
    async with _behind_a_proxy(redis_url, 0.5) as (proxy, direct):
        proxy.silence_all()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await direct.execute([("PING",)], ["k"])
        assert time.monotonic() - started < 3.0, "the socket timeout bounds the call"
        assert await direct.execute([("PING",)], ["k"]) == [b"PONG"], "a fresh connection after the silent one"


@pytest.mark.single_redis
async def test_a_frozen_redis_fails_a_call_within_the_connection_patience(redis_url: str) -> None:
    async with _behind_a_proxy(redis_url, 1) as (proxy, direct):
        proxy.freeze()
        with pytest.raises(RedisTimeoutError):
            await direct.execute([("PING",)], ["k"])  # owed on the connection that went silent
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="not reachable within"):
            await direct.execute([("PING",)], ["k"])  # a new connection, its handshake never answered
        assert time.monotonic() - started < RECONNECT_PATIENCE_S + 2, "bounded in time"
