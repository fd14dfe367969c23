"""A conversation host (``HostCore``, no Ray) when a Redis reply is lost at the worst moment: the
first read of its start, or the lease of an activation. Redis is real; a proxy in front of it loses
the reply to one chosen command after the command has run, as a connection that breaks after a
command left does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.directory import Directory, Lease, owner_id
from actors.host import HostCore
from runtime.background import forever
from runtime.ids import new_id
from runtime.settings import Settings
from runtime.store import keyspace
from tests.conftest import async_client, eventually
from tests.integration.test_activation import _accept, _conversation, _finished, _items, _text

pytestmark = pytest.mark.single_redis  # a proxy in front of one server


class ReplyLosingProxy:
    """A TCP proxy in front of a real Redis that can lose the reply to one command: the next command
    whose bytes carry the armed marker reaches Redis and runs, and its connection delivers nothing
    more to the client from then on. Connections opened later are untouched."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._marker: bytes | None = None
        self.lost = asyncio.Event()  # set once a reply has been dropped
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    def lose_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    async def __aenter__(self) -> ReplyLosingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers += [writer, up_writer]
        muted = asyncio.Event()

        async def requests() -> None:
            while data := await reader.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    muted.set()  # before the command leaves: its reply is never let through
                up_writer.write(data)
                await up_writer.drain()

        async def answers() -> None:
            while data := await up_reader.read(65536):
                if muted.is_set():
                    self.lost.set()
                    continue
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(requests(), answers())
        writer.close()
        up_writer.close()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[ReplyLosingProxy]:
    async with ReplyLosingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as found:
        yield found


@pytest.fixture
def through_proxy(proxy: ReplyLosingProxy) -> Settings:
    """A host's settings, its Redis reached through ``proxy``, noticing a lost reply after half a second."""
    return Settings(
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",
        redis_socket_timeout_s=0.5,
        read_block_ms=100,
        echo_delay_ms=0,
        idle_passivate_s=60,
        lease_ttl_ms=5_000,
        hosts=1,
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_url)
    yield client
    await client.aclose()


async def _completed(redis: aioredis.Redis, run_id: str) -> bool:
    return await _finished(redis, [run_id])


async def test_a_host_whose_start_lost_its_first_redis_reply_starts_for_real_on_the_next_try(
    through_proxy: Settings, proxy: ReplyLosingProxy, redis: aioredis.Redis
) -> None:
    """Review H1: the start's first Redis read failed (Redis away while Ray restarted the host), and
    the retry of ``forever("host start")`` found the host marked started: it ran for ever with no
    heartbeat, lease renewal, doorbell or recovery."""
    name = f"faulty-host-{new_id('run')[4:12]}"
    agent, conversation = await _conversation(redis)
    core = HostCore(name, through_proxy)
    proxy.lose_reply_to(name.encode())  # the first command naming the host: the start's read of its record
    starting = asyncio.create_task(forever("host start", core.start))  # as ConversationHost does
    try:
        await eventually(lambda: redis.hexists(keyspace.hosts(), name), 10, message="the host's first heartbeat")
        assert proxy.lost.is_set(), "the start's first read lost its reply"
        run_id = await _accept(redis, agent, conversation, "rung after a rough start")
        await redis.xadd(keyspace.host_bell(name), {"c": conversation.id})
        await eventually(lambda: _completed(redis, run_id), 10, message="the rung conversation's turn to complete")
        assert _text(await _items(redis, conversation.id, run_id)) == "rung after a rough start"
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await core.stop()


async def _load_acquire_script(redis: aioredis.Redis, lease_ttl_ms: int) -> None:
    """Make sure Redis knows the lease script, so the host's acquisition runs at its first sending
    (a ``NOSCRIPT`` answer would mean it had not run at all)."""
    directory = Directory(redis, lease_ttl_ms=lease_ttl_ms)
    conversation_id = new_id("conv")
    lease = await directory.acquire(conversation_id, owner_id("script-loader", "x", 1))
    assert isinstance(lease, Lease)
    await directory.release(lease)


async def test_a_delivery_whose_lease_reply_was_lost_leaves_no_lease_behind(
    through_proxy: Settings, proxy: ReplyLosingProxy, redis: aioredis.Redis
) -> None:
    """Review H2: the acquisition landed but its reply was lost; the lease named an activation that
    did not exist, and the host answered every later delivery with "held by me" while the message
    waited."""
    agent, conversation = await _conversation(redis)
    run_id = await _accept(redis, agent, conversation, "after a lost lease")
    name = f"faulty-host-{new_id('run')[4:12]}"
    await _load_acquire_script(redis, through_proxy.lease_ttl_ms)
    core = HostCore(name, through_proxy)
    try:
        await core.start()
        proxy.lose_reply_to(keyspace.lease(conversation.id).encode())
        with pytest.raises(RedisError):
            await core.deliver(conversation.id)
        assert proxy.lost.is_set(), "the acquisition ran and its reply was lost"
        assert await redis.get(keyspace.lease(conversation.id)) is None, "no lease without an activation"
        assert await core.deliver(conversation.id) == "ok", "the next delivery activates it here"
        await eventually(lambda: _completed(redis, run_id), 10, message="the turn to complete")
    finally:
        await core.stop()


async def test_a_ring_whose_activation_lost_its_lease_reply_still_runs_the_turn(
    through_proxy: Settings, proxy: ReplyLosingProxy, redis: aioredis.Redis
) -> None:
    """Review H2: a ring (how the API wakes a conversation nobody owns) whose activation failed was
    dropped, so the accepted turn stayed ``created`` for good."""
    agent, conversation = await _conversation(redis)
    run_id = await _accept(redis, agent, conversation, "rung through a lost reply")
    name = f"faulty-host-{new_id('run')[4:12]}"
    await _load_acquire_script(redis, through_proxy.lease_ttl_ms)
    core = HostCore(name, through_proxy)
    try:
        await core.start()
        proxy.lose_reply_to(keyspace.lease(conversation.id).encode())
        await redis.xadd(keyspace.host_bell(name), {"c": conversation.id})
        await eventually(lambda: _completed(redis, run_id), 10, message="the rung conversation's turn to complete")
        assert proxy.lost.is_set(), "the first activation lost its lease reply"
        assert _text(await _items(redis, conversation.id, run_id)) == "rung through a lost reply"
        owner = await redis.get(keyspace.lease(conversation.id))
        assert owner is not None and owner.decode().startswith(f"{name}/"), "held by the activation that ran it"
    finally:
        await core.stop()

