"""The chunk bus on a real Redis: fenced ordered writes, multiplexed tailing, lossless back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from actors.client import ConversationClient
from actors.follow import RunFollower
from runtime.errors import FencedError
from runtime.schemas.messages import AssistantMessage
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.runs import RunStore
from runtime.stream.items import StoredItem, last_seq, read_after
from runtime.stream.tailer import SUBSCRIPTION_BUFFER_BATCHES, StreamTailer, Subscription, TailerPool
from runtime.stream.wire import JOIN_MAX_CHARS
from runtime.stream.writer import ChunkWriter
from tests.conftest import async_client, eventually
from tests.fakes.proxy import SilencingProxy

WAIT_S = 5.0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_url)
    yield client
    await client.aclose()


def _key() -> str:
    """A stream key whose epoch key (``<key>:epoch``) shares its hash slot, as Convoy's do."""
    return f"test:{{{uuid.uuid4()}}}"


@pytest.fixture
async def tailer(redis: aioredis.Redis) -> AsyncIterator[StreamTailer]:
    t = StreamTailer(redis, block_ms=1000)
    await t.start()
    yield t
    await t.stop()


async def _writer(redis: aioredis.Redis, key: str, epoch: int = 1, next_seq: int = 1, window_s: float = 0.0) -> ChunkWriter:
    epoch_key = f"{key}:epoch"
    await redis.set(epoch_key, epoch, nx=True)
    return ChunkWriter(
        redis, stream_key=key, epoch_key=epoch_key, epoch=epoch, next_seq=next_seq, maxlen=1000, ttl_s=60, patience_s=5, window_s=window_s
    )


async def _collect(sub: Subscription, count: int) -> list[StoredItem]:
    items: list[StoredItem] = []
    deadline = time.monotonic() + WAIT_S
    while len(items) < count:
        batch = await sub.get(timeout_s=max(0.01, deadline - time.monotonic()))
        assert batch is not None, f"only {len(items)} of {count} items arrived"
        items.extend(batch)
    return items


async def test_writes_arrive_in_order_with_seq_ids_as_entry_ids(redis: aioredis.Redis, tailer: StreamTailer) -> None:
    key = _key()
    writer = await _writer(redis, key)
    sub = tailer.subscribe(key, 0)
    for i in range(200):
        await writer.write("data", b"x%d" % i)
    await writer.write("done", b"[DONE]")
    await writer.flush()
    items = await _collect(sub, 201)
    assert [i.seq for i in items] == list(range(1, 202))
    assert [i.payload for i in items[:3]] == [b"x0", b"x1", b"x2"]
    assert items[-1].terminal
    assert await last_seq(redis, key) == 201
    assert 0 < await redis.ttl(key) <= 60
    sub.close()


def _delta(text: str, message: str = "message-1", otid: str = "otid-1") -> AssistantMessage:
    return AssistantMessage(id=message, otid=otid, content=text)


async def test_deltas_written_while_one_is_unsent_are_joined_each_item_keeping_its_seq(redis: aioredis.Redis) -> None:
    key = _key()
    writer = await _writer(redis, key)
    assert await writer.write_item(_delta("a")) == 1
    await writer.flush()
    # Written together (nothing sent in between): one item; the path was busy, not idle.
    seqs = [await writer.write_item(_delta(t)) for t in ("b", "c", "d")]
    assert seqs == [2, 2, 2]
    # Another message, or another part of it, is an item of its own.
    assert await writer.write_item(_delta("e", message="message-2")) == 3
    assert await writer.write_item(_delta("f", message="message-2", otid="otid-2")) == 4
    await writer.write("data", b'{"not":"a delta"}')
    assert await writer.write_item(_delta("g", message="message-2", otid="otid-2")) == 6
    await writer.flush()
    items = await read_after(redis, key, 0)
    assert [i.seq for i in items] == [1, 2, 3, 4, 5, 6]
    payloads = [json.loads(i.payload) for i in items]
    assert [p.get("content") for p in payloads] == ["a", "bcd", "e", "f", None, "g"]
    # Each stored item says its own place: a client resuming after any of them misses nothing.
    assert [p.get("seq_id") for p in payloads] == [1, 2, 3, 4, None, 6]


async def test_joined_items_stay_small(redis: aioredis.Redis) -> None:
    key = _key()
    writer = await _writer(redis, key)
    piece = "x" * (JOIN_MAX_CHARS // 3 + 1)
    seqs = [await writer.write_item(_delta(piece)) for _ in range(5)]
    assert seqs == [1, 1, 2, 2, 3]  # two pieces fit under the limit, a third does not
    await writer.flush()
    sizes = [len(json.loads(i.payload)["content"]) for i in await read_after(redis, key, 0)]
    assert sizes == [2 * len(piece), 2 * len(piece), len(piece)]


async def test_a_delta_written_after_the_one_before_was_sent_is_not_held_back(redis: aioredis.Redis, tailer: StreamTailer) -> None:
    key = _key()
    writer = await _writer(redis, key)
    sub = tailer.subscribe(key, 0)
    try:
        for i, text in enumerate("abc", start=1):
            await writer.write_item(_delta(text))
            got = await _collect(sub, 1)
            assert [(g.seq, json.loads(g.payload)["content"]) for g in got] == [(i, text)]
    finally:
        sub.close()


async def test_a_write_window_never_holds_back_a_write_on_an_idle_path(redis: aioredis.Redis) -> None:
    key = _key()
    writer = await _writer(redis, key, window_s=30.0)
    async with asyncio.timeout(WAIT_S):  # far less than the window: it left at once
        await writer.write_item(_delta("a"))
        await writer.flush()
    assert [json.loads(i.payload)["content"] for i in await read_after(redis, key, 0)] == ["a"]


async def test_a_write_soon_after_another_waits_for_the_window_and_nothing_written_meanwhile_is_lost(
    redis: aioredis.Redis,
) -> None:
    window_s = 1.0
    first, second = _key(), _key()
    one = await _writer(redis, first, window_s=window_s)
    other = await _writer(redis, second, window_s=window_s)
    await one.write_item(_delta("a"))
    await one.flush()
    sent = time.monotonic()
    await one.write_item(_delta("b"))  # the path was busy a moment ago: held for the window's rest
    await other.write("data", b"x")
    async with asyncio.timeout(window_s + WAIT_S):
        await asyncio.gather(one.flush(), other.flush())
    assert time.monotonic() - sent >= window_s / 2
    assert [json.loads(i.payload)["content"] for i in await read_after(redis, first, 0)] == ["a", "b"]
    assert [i.payload for i in await read_after(redis, second, 0)] == [b"x"]


async def test_a_stale_epoch_cannot_write(redis: aioredis.Redis) -> None:
    key = _key()
    stale = await _writer(redis, key, epoch=1)
    await stale.write("data", b"before takeover")
    await stale.flush()
    await redis.set(f"{key}:epoch", 2)  # a new owner took over
    await stale.write("data", b"after takeover")
    with pytest.raises(FencedError):
        await stale.flush()
    assert [i.payload for i in await read_after(redis, key, 0)] == [b"before takeover"]


async def test_a_seq_id_is_never_reused(redis: aioredis.Redis) -> None:
    key = _key()
    first = await _writer(redis, key)
    await first.write("data", b"one")
    await first.flush()
    again = await _writer(redis, key, next_seq=1)  # e.g. a confused second writer
    await again.write("data", b"duplicate")
    with pytest.raises(FencedError):
        await again.flush()


async def test_subscribing_after_the_fact_replays_from_the_cursor(redis: aioredis.Redis, tailer: StreamTailer) -> None:
    key = _key()
    writer = await _writer(redis, key)
    for i in range(10):
        await writer.write("data", str(i).encode())
    await writer.flush()
    sub = tailer.subscribe(key, 4)
    items = await _collect(sub, 6)
    assert [i.seq for i in items] == [5, 6, 7, 8, 9, 10]
    sub.close()


async def test_streams_subscribed_one_after_another_are_all_listened_to(redis: aioredis.Redis) -> None:
    # Subscriptions that come while the listener is still sending the one before (each request in an
    # event-loop turn of its own) must each reach Redis, not wait for the sweep: here, none comes.
    tailer = StreamTailer(redis, block_ms=600_000)
    await tailer.start()
    try:
        keys = [_key() for _ in range(30)]
        writers = [await _writer(redis, k) for k in keys]
        subs = []
        for key in keys:
            subs.append(tailer.subscribe(key, 0))
            await asyncio.sleep(0)  # the next request comes in the next event-loop turn
        for writer in writers:
            await writer.write("data", b"x")
        for writer in writers:
            await writer.flush()
        results = await asyncio.gather(*(_collect(s, 1) for s in subs))
        assert all([item.payload for item in got] == [b"x"] for got in results)
    finally:
        await tailer.stop()


async def test_one_tailer_serves_many_streams(redis: aioredis.Redis, tailer: StreamTailer) -> None:
    keys = [_key() for _ in range(50)]
    writers = [await _writer(redis, k) for k in keys]
    subs = [tailer.subscribe(k, 0) for k in keys]
    for round_ in range(5):
        for w in writers:
            await w.write("data", b"r%d" % round_)
    for w in writers:
        await w.flush()
    results = await asyncio.gather(*(_collect(s, 5) for s in subs))
    assert all([i.payload for i in r] == [b"r0", b"r1", b"r2", b"r3", b"r4"] for r in results)
    assert tailer.subscriptions == 50
    for s in subs:
        s.close()
    assert tailer.subscriptions == 0


async def test_a_new_subscription_does_not_wait_for_the_block_timeout(redis: aioredis.Redis) -> None:
    slow = StreamTailer(redis, block_ms=5000)
    await slow.start()
    try:
        idle = slow.subscribe(_key(), 0)
        # Its first read done, the tailer waits for the next sweep, 5 s away.
        await eventually(lambda: slow.reads >= 1, WAIT_S, message="the idle subscription's first read")
        key = _key()
        writer = await _writer(redis, key)
        await writer.write("data", b"now")
        await writer.flush()
        started = time.monotonic()
        items = await _collect(slow.subscribe(key, 0), 1)
        assert items[0].payload == b"now"
        assert time.monotonic() - started < 1.0
        idle.close()
    finally:
        await slow.stop()


async def test_a_slow_reader_is_paused_not_dropped_and_others_keep_flowing(redis: aioredis.Redis, tailer: StreamTailer) -> None:
    slow_key, fast_key = _key(), _key()
    slow_writer, fast_writer = await _writer(redis, slow_key), await _writer(redis, fast_key)
    slow = tailer.subscribe(slow_key, 0)
    fast = tailer.subscribe(fast_key, 0)
    total = SUBSCRIPTION_BUFFER_BATCHES * 3
    for i in range(total):
        await slow_writer.write("data", b"%d" % i)
        await slow_writer.flush()  # one batch per item, so the slow reader's buffer overflows
    await fast_writer.write("data", b"fast")
    await fast_writer.flush()
    assert [i.payload for i in await _collect(fast, 1)] == [b"fast"]
    items = await _collect(slow, total)
    assert [i.seq for i in items] == list(range(1, total + 1)), "nothing lost, nothing doubled"
    slow.close()
    fast.close()


async def test_a_late_reader_with_an_older_cursor_misses_nothing(redis: aioredis.Redis, tailer: StreamTailer) -> None:
    """Regression: a subscription that joined while a read for a reader further ahead was in
    flight used to receive that read's items and skip the ones before them."""
    key = _key()
    writer = await _writer(redis, key)
    ahead = tailer.subscribe(key, 0)
    for i in range(5):
        await writer.write("data", b"%d" % i)
    await writer.flush()
    await _collect(ahead, 5)  # the tailer now reads this stream from seq 5 onwards
    late = tailer.subscribe(key, 0)
    for i in range(5, 10):
        await writer.write("data", b"%d" % i)
    await writer.flush()
    assert [i.seq for i in await _collect(late, 10)] == list(range(1, 11))
    assert [i.seq for i in await _collect(ahead, 5)] == list(range(6, 11))
    ahead.close()
    late.close()


async def test_an_item_appended_without_a_notification_still_arrives(redis: aioredis.Redis) -> None:
    """Notifications are only a shortcut: the periodic sweep reads the stream itself."""
    quick = StreamTailer(redis, block_ms=200)
    await quick.start()
    try:
        key = _key()
        reads = quick.reads
        sub = quick.subscribe(key, 0)
        # Two rounds after subscribing: the subscription's first read (which found nothing) is
        # done, even if a round was already in flight when it joined.
        await eventually(lambda: quick.reads >= reads + 2, WAIT_S, interval_s=0.005)
        await redis.xadd(key, {"k": "data", "p": b"silent"}, id="0-1")  # no SPUBLISH
        assert [i.payload for i in await _collect(sub, 1)] == [b"silent"]
        sub.close()
    finally:
        await quick.stop()


async def test_items_published_while_the_listener_reconnects_are_not_lost(
    redis: aioredis.Redis, tailer: StreamTailer
) -> None:
    key = _key()
    writer = await _writer(redis, key)
    sub = tailer.subscribe(key, 0)
    await writer.write("data", b"before")
    await writer.flush()
    assert [i.seq for i in await _collect(sub, 1)] == [1]
    await _kill_pubsub(redis)  # the listener's connection drops
    for i in range(5):
        await writer.write("data", b"%d" % i)
    await writer.flush()
    assert [i.seq for i in await _collect(sub, 5)] == [2, 3, 4, 5, 6]
    sub.close()


async def _kill_pubsub(redis: aioredis.Redis) -> None:
    if isinstance(redis, RedisCluster):
        await redis.client_kill_filter(_type="pubsub", target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis.client_kill_filter(_type="pubsub")


@pytest.mark.single_redis
async def test_a_writer_needs_no_pool_connection(redis_url: str) -> None:
    """Regression: with every pooled connection busy, a chunk write used to fail its run. The
    writer now sends on a connection of its own, so it writes while the pool is exhausted."""
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.1)
    client = aioredis.Redis(connection_pool=pool)
    try:
        key = _key()
        writer = await _writer(client, key)
        await client.script_flush()  # the first append must load its script too
        held = await pool.get_connection()  # the only pooled connection stays busy throughout
        try:
            await writer.write("data", b"patient")
            await writer.flush()
        finally:
            await pool.release(held)
        assert [i.payload for i in await read_after(client, key, 0)] == [b"patient"]
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _tailer_behind_a_proxy(redis_url: str, block_ms: int) -> AsyncIterator[tuple[StreamTailer, SilencingProxy]]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with SilencingProxy(port) as proxy:
        proxied = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        tailer = StreamTailer(proxied, block_ms=block_ms)
        await tailer.start()
        try:
            yield tailer, proxy
        finally:
            await tailer.stop()
            await proxied.aclose()


@pytest.mark.single_redis
async def test_a_listener_whose_server_goes_silent_is_replaced(redis: aioredis.Redis, redis_url: str) -> None:
    """Nothing reports a peer that just stops answering: the listener's watchdog PINGs after a
    silent ``block_ms`` and, heard nothing, connects again and subscribes everything anew."""
    async with _tailer_behind_a_proxy(redis_url, block_ms=200) as (tailer, proxy):
        key = _key()
        writer = await _writer(redis, key)
        sub = tailer.subscribe(key, 0)
        await eventually(lambda: len(proxy.subscribers) == 1, WAIT_S, interval_s=0.005)
        proxy.subscribers[0].set()  # the listener's connection goes silent
        await eventually(lambda: len(proxy.subscribers) == 2, WAIT_S, interval_s=0.005)  # a new one subscribed
        await writer.write("data", b"after")
        await writer.flush()
        assert [i.payload for i in await _collect(sub, 1)] == [b"after"]
        sub.close()


@pytest.mark.single_redis
async def test_a_quiet_healthy_listener_is_kept(redis_url: str) -> None:
    """Silence alone is no fault: through many PING rounds of an idle stream, the listener keeps
    its one connection (regression: a PONG that came back quickly could be taken for silence)."""
    async with _tailer_behind_a_proxy(redis_url, block_ms=50) as (tailer, proxy):
        sub = tailer.subscribe(_key(), 0)
        await eventually(lambda: len(proxy.subscribers) == 1, WAIT_S, interval_s=0.005)
        heard = tailer._listeners.heard
        await eventually(lambda: tailer._listeners.heard >= heard + 10, WAIT_S, interval_s=0.005)  # ten PONGs: ten silent periods, answered
        assert len(proxy.subscribers) == 1, "a healthy connection was replaced"
        sub.close()


def _follower(settings: Settings, redis: aioredis.Redis, tailers: TailerPool) -> RunFollower:
    """A reader's ``RunFollower`` as an API process builds one (``api.state``), on ``redis``."""
    runs = RunStore(redis, ttl_s=settings.stream_ttl_s, maxlen=settings.stream_maxlen)
    return RunFollower(settings, redis, runs, tailers, ConversationClient(settings, redis, runs, tailers))


def _seq_ids(items: list[StoredItem]) -> list[int | None]:
    """The ``seq_id`` each item's JSON carries, as a Letta SDK reads it (None for ``[DONE]`` or none)."""
    return [None if item.terminal else json.loads(item.payload).get("seq_id") for item in items]


@pytest.mark.single_redis
async def test_a_give_up_ending_carries_no_seq_id_so_resuming_after_the_last_one_seen_gets_the_real_items(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Regression: the ending a reader makes up when it gives up (``store_unavailable`` here;
    ``stream_stalled`` and ``stream_lost`` are built alike) carried seq_ids cursor+1 and cursor+2 in
    its JSON. Letta's SDKs resume after the last seq_id they saw, so the resume skipped the run's
    real items at those positions once Redis was back."""
    settings = Settings(redis_url=redis_url, ping_interval_s=0.1, stream_idle_timeout_s=0.3)
    conversation_id, run_id = f"conv-{uuid.uuid4()}", f"run-{uuid.uuid4()}"
    key = keyspace.run_stream(conversation_id, run_id)
    writer = await _writer(redis, key)
    for seq in range(1, 8):
        await writer.write("data", json.dumps({"run_id": run_id, "seq_id": seq, "message_type": "ping"}).encode())
    await writer.flush()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    received: list[tuple[list[StoredItem], bool]] = []
    async with SilencingProxy(port) as proxy:
        proxied = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        tailers = TailerPool(proxied, block_ms=200, size=1)
        await tailers.start()
        try:
            async with asyncio.timeout(WAIT_S * 4):
                async for got in _follower(settings, proxied, tailers).batches(conversation_id, run_id, after=0):
                    if got is not None:
                        received.append(got)
                        if sum(len(items) for items, _ in received) == 7:
                            proxy.freeze()  # Redis stops answering this reader: it gives up
        finally:
            proxy.drop_all()
            await tailers.stop()
            await proxied.aclose()
    made_up = [item for items, stored in received if not stored for item in items]
    assert [item.kind for item in made_up] == ["data", "error", "done"]
    assert b"store_unavailable" in made_up[1].payload
    assert _seq_ids(made_up) == [None, None, None], "a made-up item must not carry a seq_id a client resumes after"
    last_seen = [seq for items, _ in received for seq in _seq_ids(items) if seq is not None][-1]
    assert last_seen == 7
    for seq in (8, 9):  # Redis is back; the run goes on and ends
        await writer.write("data", json.dumps({"run_id": run_id, "seq_id": seq, "message_type": "ping"}).encode())
    await writer.write("done", b"[DONE]")
    await writer.flush()
    tailers = TailerPool(redis, block_ms=200, size=1)
    await tailers.start()
    try:
        follower = _follower(settings, redis, tailers)
        await follower.check_cursor(conversation_id, run_id, last_seen)
        resumed: list[int] = []
        async with asyncio.timeout(WAIT_S):
            async for got in follower.batches(conversation_id, run_id, after=last_seen):
                resumed += [item.seq for item in got[0]] if got else []
        assert resumed == [8, 9, 10], "the resume yields the run's real items after the last seq_id seen"
    finally:
        await tailers.stop()


async def test_a_read_answered_by_the_cluster_client_in_its_parsed_shape_delivers_its_items(redis: aioredis.Redis) -> None:
    """Regression: a read redirected by a Redis Cluster (``MOVED``, or ``ASK`` all through a slot's
    migration) is answered by redis-py's cluster client, parsed (each entry's fields a dict, not
    Redis's flat list); the tailer failed on it (``TypeError``) and read nothing until the slot
    settled. Fed a real reply in that shape, the tailer hands each reader its items."""
    key = _key()
    writer = await _writer(redis, key)
    for i in range(3):
        await writer.write("data", b"item %d" % i)
    await writer.flush()
    parsed = await redis.xread({key: "0-0"})  # redis-py's parsed reply, as the redirected read gets it
    assert isinstance(parsed[0][1][0][1], dict)
    idle = StreamTailer(redis, block_ms=60_000)  # not started: only what this test dispatches arrives
    try:
        sub = idle.subscribe(key, 0)
        idle._dispatch(parsed, {key: 0})
        assert [(i.seq, i.kind, i.payload) for i in await _collect(sub, 3)] == [
            (1, "data", b"item 0"),
            (2, "data", b"item 1"),
            (3, "data", b"item 2"),
        ]
        sub.close()
    finally:
        await idle.stop()


TRIM_MAXLEN = 100  # the smallest cap a stream may have (``Settings.stream_maxlen``)


async def test_a_reader_paused_while_its_next_items_were_trimmed_gets_an_error_not_a_silent_jump(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Regression: a slow reader, paused at its cursor while the run wrote far past the stream's
    cap (``XADD MAXLEN ~``), was handed the items still held after the trimmed ones, as if nothing
    were missing (items 2..65, then 1892...). Now its stream ends with the error a resume from that
    cursor is refused with (``stream_gone``: "items a..b ... were trimmed"), after every item it
    could still be given, in order."""
    settings = Settings(redis_url=redis_url, stream_maxlen=TRIM_MAXLEN)
    conversation_id, run_id = f"conv-{uuid.uuid4()}", f"run-{uuid.uuid4()}"
    key = keyspace.run_stream(conversation_id, run_id)
    epoch_key = f"{key}:epoch"
    await redis.set(epoch_key, 1)
    writer = ChunkWriter(
        redis, stream_key=key, epoch_key=epoch_key, epoch=1, next_seq=1, maxlen=TRIM_MAXLEN, ttl_s=60, patience_s=5
    )
    await writer.write("data", b"first")
    await writer.flush()
    tailers = TailerPool(redis, block_ms=200, size=1)
    await tailers.start()
    received: list[tuple[list[StoredItem], bool]] = []
    try:
        batches = _follower(settings, redis, tailers).batches(conversation_id, run_id, after=0)
        async with asyncio.timeout(WAIT_S):
            first = await anext(batches)
            assert first is not None and [i.seq for i in first[0]] == [1]
            for _ in range(2, 2000):  # the reader reads nothing meanwhile: it is paused, the stream trimmed
                await writer.write("data", b"x" * 200)
            await writer.write("done", b"[DONE]")
            await writer.flush()
            assert (await read_after(redis, key, 0, count=1))[0].seq > SUBSCRIPTION_BUFFER_BATCHES + 1, "trimmed"
            async for got in batches:
                if got is not None:
                    received.append(got)
    finally:
        await tailers.stop()
    stored = [item.seq for items, was_stored in received if was_stored for item in items]
    assert stored == list(range(2, len(stored) + 2)), "no item skipped silently"
    ending = [item for items, was_stored in received if not was_stored for item in items]
    assert [item.kind for item in ending] == ["data", "error", "done"], "the stream ends with an error"
    error = json.loads(ending[1].payload)
    assert error["error_type"] == "stream_gone"
    assert f"items {len(stored) + 2}.." in error["detail"] and "were trimmed" in error["detail"]
