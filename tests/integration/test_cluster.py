"""Convoy on a Redis Cluster (run with ``--redis-cluster``; skipped otherwise): a primary lost and
restarted while streams run, and a slot moved to another primary under a writer and a reader.

The module has a cluster of its own: one Redis holds one Convoy deployment, and the session's
server is another (its hosts have the same names as this module's server's: sharing a Redis, each
would take the other's conversations over as a restarted host's), and a primary killed here must
not stop the session's runs either."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import aconnect_sse

from bench.rediscluster import LocalCluster, Primary
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.connection import connect
from runtime.stream.items import read_after
from runtime.stream.tailer import StreamTailer, Subscription
from runtime.stream.writer import ChunkWriter
from tests.conftest import Convoy, async_client, eventually, start_convoy, stop_convoy, wait_until
from tests.integration.test_actors import long_text

WORDS = 1500  # at 5 ms per word (the echo model of this module's server): runs of ~7.5 s
PER_SIDE = 3  # conversations on the lost primary, and on the others
OUTAGE_ITEMS = 200  # items the other primaries' runs must stream while one primary is away
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster(redis_cluster: LocalCluster | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if redis_cluster is None:
        pytest.skip("runs against a Redis Cluster: python -m pytest --redis-cluster")
    own = LocalCluster(tmp_path_factory.mktemp("cluster-of-its-own")).start()
    yield own
    own.stop()


@pytest.fixture(scope="module")
def server(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Convoy]:
    """A server on this module's cluster with the default model deadlines (the session server's
    are seconds, shorter than this outage: its runs would end ``llm_timeout``, not Redis's doing),
    and one host, so that the runs on every primary share its writers and readers."""
    env = {"CONVOY_REDIS_URL": cluster.url, "CONVOY_ECHO_DELAY_MS": "5", "CONVOY_HOSTS": "1"}
    started = start_convoy(tmp_path_factory.mktemp("cluster-faults") / "home", env)
    yield started
    assert not stop_convoy(started), "processes left behind"


@dataclass
class Reader:
    """One streamed send, every item kept with when it arrived."""

    conversation: str
    text: str
    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def read(self, client: httpx.AsyncClient) -> None:
        body = {"messages": [{"role": "user", "content": self.text}], "stream_tokens": True}  # a run of many items
        async with aconnect_sse(client, "POST", f"/v1/conversations/{self.conversation}/messages", json=body) as source:
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                doc = {"message_type": "[DONE]"} if event.data == "[DONE]" else json.loads(event.data)
                if event.event == "error":
                    doc["sse_event"] = "error"
                self.items.append((time.monotonic(), doc))

    def between(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.items if start <= at <= end)


async def _conversations(client: httpx.AsyncClient, cluster: LocalCluster) -> tuple[Primary, list[str], list[str]]:
    """``PER_SIDE`` conversations whose slot the victim serves, and as many elsewhere."""
    agent = (await client.post("/v1/agents", json={"name": "cluster"})).json()["id"]
    victim: Primary | None = None
    on, off = [], []
    while len(on) < PER_SIDE or len(off) < PER_SIDE:
        conv = (await client.post("/v1/conversations", params={"agent_id": agent})).json()["id"]
        primary = cluster.primary_of(keyspace.conversation(conv))
        victim = victim or primary
        side = on if primary is victim else off
        if len(side) < PER_SIDE:
            side.append(conv)
    assert victim is not None
    return victim, on, off


async def test_a_primary_lost_mid_stream_loses_nothing_and_stops_no_one_else(server: Convoy, cluster: LocalCluster) -> None:
    """Kill one primary's process (SIGKILL) while runs stream on every primary, and start it again
    with its data (append-only file): the runs on its slots pause and carry on (the outage is
    shorter than CONVOY_STORE_OUTAGE_S), every item once and in order, each ending with the terminal
    sequence; a turn accepted just before the kill runs after it; the other primaries' runs keep
    streaming throughout."""
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
        victim, on, off = await _conversations(client, cluster)
        readers = [Reader(conv, long_text(f"w{n}x", WORDS)) for n, conv in enumerate(on + off)]
        for reader in readers:
            reader.task = asyncio.create_task(reader.read(client))
        await eventually(lambda: all(len(r.items) > 20 for r in readers), WAIT_S, message="every run to stream")
        queued = Reader(on[0], "accepted before the kill")
        queued.task = asyncio.create_task(queued.read(client))
        await eventually(lambda: bool(queued.items), WAIT_S, message="the queued turn to be accepted")

        cluster.kill(victim)
        killed_at = time.monotonic()
        others = [r for r in readers if r.conversation in off]
        # The others carry on while the victim is away: each streams OUTAGE_ITEMS more items.
        await eventually(
            lambda: all(r.between(killed_at, time.monotonic()) >= OUTAGE_ITEMS or r.items[-1][1]["message_type"] == "[DONE]" for r in others),
            WAIT_S,
            message="the other primaries' runs to keep streaming",
        )
        assert victim.process is not None and victim.process.poll() is not None, "the victim stayed down meanwhile"
        restarted_at = time.monotonic()
        await asyncio.to_thread(cluster.restart, victim)

        await asyncio.wait_for(asyncio.gather(*(r.task for r in [*readers, queued] if r.task)), WAIT_S)

    for reader in [*readers, queued]:
        docs = [doc for _, doc in reader.items]
        kinds = [d["message_type"] for d in docs]
        assert kinds[-3:] == ["stop_reason", "usage_statistics", "[DONE]"], (reader.conversation in on, docs[-3:])
        assert docs[-3]["stop_reason"] == "end_turn", docs[-3]
        seqs = [d["seq_id"] for d in docs[:-1] if "seq_id" in d]  # keep-alive pings a reader makes up have none
        assert seqs == list(range(1, len(seqs) + 1)), "every item once, in order"
        assert "".join(d.get("content", "") for d in docs if d["message_type"] == "assistant_message") == reader.text
    assert all(r.between(killed_at, restarted_at) > 0 for r in others), "the others streamed while the victim was down"


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[Any]:
    client = async_client(cluster.url)
    yield client
    await client.aclose()


def _move_slot(cluster: LocalCluster, key: str) -> Primary:
    """Move ``key``'s slot, with its keys, to another primary (as ``valkey-cli --cluster reshard``
    does: IMPORTING/MIGRATING, MIGRATE, then SETSLOT NODE everywhere); returns the new owner."""
    source = cluster.primary_of(key)
    target = next(p for p in cluster.primaries if p is not source)
    src, dst = source.client, target.client
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
    source_id, target_id = src.execute_command("CLUSTER", "MYID").decode(), dst.execute_command("CLUSTER", "MYID").decode()
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for primary in cluster.primaries:
        primary.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    wait_until(lambda: cluster.primary_of(key) is target, 10, 0.05, "every primary to agree on the slot's new owner")
    return target


async def test_a_slot_moved_under_a_writer_and_a_reader_loses_nothing(cluster: LocalCluster, store: Any) -> None:
    """Resharding moves a run stream's slot to another primary while a writer appends to it and a
    tailer reads it: the writer's next appends are answered MOVED and follow (redis-py's map is
    corrected), the old primary drops the reader's subscription and the tailer subscribes on the
    new one; every item arrives once, in order."""
    key = f"test:{{{uuid.uuid4()}}}"
    await store.set(f"{key}:epoch", 1)
    writer = ChunkWriter(store, stream_key=key, epoch_key=f"{key}:epoch", epoch=1, next_seq=1, maxlen=1000, ttl_s=60, patience_s=10)
    tailer = StreamTailer(store, block_ms=1000)
    await tailer.start()
    try:
        sub = tailer.subscribe(key, 0)
        got: list[int] = []

        async def take(count: int) -> None:
            while len(got) < count:
                batch = await sub.get(timeout_s=WAIT_S)
                assert batch is not None, f"only {len(got)} of {count} items arrived"
                got.extend(item.seq for item in batch)

        for i in range(5):
            await writer.write("data", b"before %d" % i)
        await writer.flush()
        await take(5)
        moved_to = await asyncio.to_thread(_move_slot, cluster, key)
        for i in range(5):
            await writer.write("data", b"after %d" % i)
        await writer.flush()
        await asyncio.wait_for(take(10), WAIT_S)
        assert got == list(range(1, 11))
        assert len(await read_after(store, key, 0)) == 10
        assert moved_to.client.exists(key) == 1, "the stream lives on its new primary"
        # Published items reach the reader again (not only the sweep's reads): the subscription moved.
        await eventually(lambda: _subscribed(moved_to, key), WAIT_S, message="the reader to subscribe on the new primary")
    finally:
        sub.close()
        await tailer.stop()


def _subscribed(primary: Primary, channel: str) -> bool:
    try:
        reply = primary.client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(dict(zip(reply[::2], reply[1::2], strict=True)).get(channel.encode(), 0)) > 0
    except redis.RedisError:
        return False


MIGRATION_READ_S = 10.0  # a read mid-migration: the tailer's sweep reads every block_ms (200 ms here)


def _begin_migration(cluster: LocalCluster, key: str, source: Primary, target: Primary) -> int:
    """Start moving ``key``'s slot from ``source`` to ``target`` and move the key, but leave the
    slot MIGRATING/IMPORTING (a resharding in progress: ``source`` answers ``ASK`` for the key);
    returns the slot."""
    src, dst = source.client, target.client
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
    source_id, target_id = src.execute_command("CLUSTER", "MYID").decode(), dst.execute_command("CLUSTER", "MYID").decode()
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
    return slot


def _end_migration(cluster: LocalCluster, slot: int, target: Primary) -> None:
    target_id = target.client.execute_command("CLUSTER", "MYID").decode()
    for primary in cluster.primaries:
        primary.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_a_read_while_its_slot_migrates_delivers_its_items(cluster: LocalCluster, store: Any) -> None:
    """Regression: while a run stream's slot migrates, its old primary answers the tailer's reads
    ``ASK``; the read sent again through redis-py's cluster client came back parsed, the tailer
    failed on it (``TypeError``) every round, and the stream's readers got nothing until the
    migration ended. A reader now gets the items written mid-migration, during it."""
    key = f"test:{{{uuid.uuid4()}}}"
    source = cluster.primary_of(key)
    target = next(p for p in cluster.primaries if p is not source)
    for seq in (1, 2, 3):
        source.client.xadd(key, {"k": "data", "p": f"before {seq}"}, id=f"0-{seq}")
    tailer = StreamTailer(store, block_ms=200)
    await tailer.start()
    sub = tailer.subscribe(key, 0)
    got: list[int] = []

    async def take(count: int) -> None:
        while len(got) < count:
            batch = await sub.get(timeout_s=MIGRATION_READ_S)
            assert batch is not None, f"only {len(got)} of {count} items arrived"
            got.extend(item.seq for item in batch)

    slot: int | None = None
    try:
        await asyncio.wait_for(take(3), MIGRATION_READ_S)
        slot = await asyncio.to_thread(_begin_migration, cluster, key, source, target)
        with target.client.pipeline(transaction=False) as pipe:  # the run goes on, on the importing primary
            pipe.execute_command("ASKING")
            pipe.xadd(key, {"k": "data", "p": "during 4"}, id="0-4")
            pipe.execute_command("ASKING")
            pipe.xadd(key, {"k": "data", "p": "during 5"}, id="0-5")
            pipe.execute()
        await asyncio.wait_for(take(5), MIGRATION_READ_S)
        assert got == [1, 2, 3, 4, 5]
        assert cluster.primary_of(key) is source, "read mid-migration: the slot is still the old primary's (ASK)"
    finally:
        if slot is not None:
            await asyncio.to_thread(_end_migration, cluster, slot, target)
        sub.close()
        await tailer.stop()


def _key_on(cluster: LocalCluster, primary: Primary) -> str:
    while cluster.primary_of(key := f"test:{{{uuid.uuid4()}}}") is not primary:
        pass
    return key


async def test_a_map_refresh_while_unneeded_listeners_are_dropped_leaves_no_stream_unheard(
    cluster: LocalCluster, store: Any
) -> None:
    """Regression: a refresh of the map of slots (``Listeners._reroute``) routed channels while the
    routing a subscription change had started was still dropping the primaries' connections nobody
    needed; the refresh could give a channel to a connection the other then dropped (or both drop
    the same one: ``KeyError``), and that stream's appends were heard of no more (only the sweep,
    up to ``block_ms`` late, read them). The two now take turns."""
    first, second = cluster.primaries[0], cluster.primaries[1]
    tailer = StreamTailer(store, block_ms=600_000)  # no sweep within the test: items arrive as published
    await tailer.start()
    listeners = tailer._listeners
    late: Any = None
    try:
        gone = [tailer.subscribe(_key_on(cluster, primary), 0) for primary in (first, second)]
        await eventually(lambda: all(_subscribed(p, s.key) for p, s in zip((first, second), gone, strict=True)), WAIT_S)
        for sub in gone:
            sub.close()  # both connections are unneeded now: the routing drops them one by one
        await eventually(lambda: len(listeners._shards) == 1, WAIT_S, interval_s=0, message="the first one dropped")
        late = tailer.subscribe(_key_on(cluster, second), 0)  # a stream on the primary whose connection is next
        await listeners._sync()  # what a refresh of the map does, meanwhile (``_reroute``)
        await eventually(lambda: listeners._sync_task is None or listeners._sync_task.done(), WAIT_S)
        await store.set(f"{late.key}:epoch", 1)
        writer = ChunkWriter(store, stream_key=late.key, epoch_key=f"{late.key}:epoch", epoch=1, next_seq=1, maxlen=1000, ttl_s=60, patience_s=10)
        await writer.write("data", b"heard")
        await writer.flush()
        batch = await late.get(timeout_s=10.0)
        assert batch is not None and [i.payload for i in batch] == [b"heard"], "the stream's appends are heard"
    finally:
        if late is not None:
            late.close()
        await tailer.stop()


FROZEN_PEER_READ_S = 1.0  # what a reader of a healthy primary may wait while another primary is frozen
FROZEN_SOCKET_TIMEOUT_S = 2.0  # this test's client: the frozen primary's first read fails within it


async def _take(sub: Subscription, got: list[int], count: int, timeout_s: float) -> None:
    """Add ``sub``'s items to ``got`` until it holds ``count``, failing after ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        batch = await sub.get(timeout_s=max(0.0, deadline - time.monotonic()))
        assert batch is not None, f"only {got} of {count} items arrived within {timeout_s:g} s"
        got.extend(item.seq for item in batch)


async def test_a_frozen_primary_delays_no_reads_of_streams_on_the_others(cluster: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: the tailer read every primary's marked streams in one round and waited for all
    of them, and after a failed read refreshed the map of slots before its next round, which waits
    on the frozen node too: with one primary frozen (SIGSTOP: it accepts and answers nothing), a new
    subscription to a stream on a healthy primary got its first items after 10-30 s, and so did a
    gap on one. Each primary's streams are read on their own now: a healthy primary's readers get
    their items at once, before the frozen primary's read fails and after (while its reads refresh
    the map and reconnect), every item once and in order; the frozen primary's reader gets its own
    once it is thawed."""
    frozen, healthy = cluster.primaries[0], cluster.primaries[1]
    stuck_key, key = _key_on(cluster, frozen), _key_on(cluster, healthy)
    frozen.client.xadd(stuck_key, {"k": "data", "p": "frozen 1"}, id="0-1")
    for seq in (1, 2):
        healthy.client.xadd(key, {"k": "data", "p": f"healthy {seq}"}, id=f"0-{seq}")
    store = connect(Settings(redis_url=cluster.url, redis_socket_timeout_s=FROZEN_SOCKET_TIMEOUT_S))
    tailer = StreamTailer(store, block_ms=1000)
    await tailer.start()
    subs = [tailer.subscribe(stuck_key, 0)]
    try:
        await _take(subs[0], [], 1, WAIT_S)  # the frozen primary's connections are open and in use
        assert frozen.process is not None
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            stuck = tailer.subscribe(stuck_key, 0)  # a read of the frozen primary's stream, from now on
            first = tailer.subscribe(key, 0)  # marked at the same moment: the old code read both in one round
            subs += [stuck, first]
            got: list[int] = []
            await _take(first, got, 2, FROZEN_PEER_READ_S)

            await eventually(
                lambda: any("could not reach a primary" in r.getMessage() for r in caplog.records),
                WAIT_S,
                message="the frozen primary's read to fail (its next ones refresh the map and reconnect)",
            )
            # A gap (item 3 missed, 4 published): the stream is read again, on the healthy primary.
            await eventually(lambda: _subscribed(healthy, key), WAIT_S, message="the reader to subscribe on the healthy primary")
            for seq in (3, 4):
                healthy.client.xadd(key, {"k": "data", "p": f"healthy {seq}"}, id=f"0-{seq}")
            healthy.client.execute_command("SPUBLISH", key, "4 data healthy 4")
            await _take(first, got, 4, FROZEN_PEER_READ_S)
            assert got == [1, 2, 3, 4], "every item once, in order"
            second = tailer.subscribe(key, 1)
            subs.append(second)
            resumed: list[int] = []
            await _take(second, resumed, 3, FROZEN_PEER_READ_S)
            assert resumed == [2, 3, 4]
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        await _take(stuck, [], 1, WAIT_S)  # its reads resume once it answers again
        await asyncio.to_thread(wait_until, cluster.ready, WAIT_S, 0.05, "the cluster to be whole again")
    finally:
        for sub in subs:
            sub.close()
        await tailer.stop()
        await store.aclose()
