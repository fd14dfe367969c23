"""Directory leases, fencing epochs, the mailbox and run transitions on a real Redis; and an
owner's writes across a lost reply or an unreachable Redis (through a proxy in front of it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.directory import Directory, Held, Lease, owner_id
from actors.mailbox import Mailbox
from runtime.errors import ConversationBusyError, FencedError, InternalRunError, NotFoundError, StoreUnavailableError
from runtime.ids import new_id
from runtime.schemas.messages import UsageStatistics, UserMessage, utcnow
from runtime.schemas.runs import RunView
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.connection import connect
from runtime.store.fencing import Fence
from runtime.store.history import HistoryStore
from runtime.store.runs import RunStore
from runtime.stream import wire
from runtime.stream.items import read_after
from runtime.stream.writer import ChunkWriter
from tests.conftest import async_client, eventually
from tests.fakes.proxy import SilencingProxy

END_TURN = wire.Completed("end_turn", UsageStatistics())


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_url)
    yield client
    await client.aclose()


async def test_only_one_of_many_racing_owners_gets_the_lease(redis: aioredis.Redis) -> None:
    directory = Directory(redis, lease_ttl_ms=5000)
    conv = new_id("conv")
    results = await asyncio.gather(
        *(directory.acquire(conv, owner_id(f"host-{i}", "a")) for i in range(20))
    )
    winners = [r for r in results if isinstance(r, Lease)]
    assert len(winners) == 1
    assert all(isinstance(r, Held) and r.owner == winners[0].owner for r in results if r is not winners[0])
    assert await directory.owner(conv) == winners[0].owner


async def test_each_new_owner_gets_a_higher_epoch(redis: aioredis.Redis) -> None:
    directory = Directory(redis, lease_ttl_ms=5000)
    conv = new_id("conv")
    first = await directory.acquire(conv, owner_id("h0", "one", 1))
    assert isinstance(first, Lease)
    # Another host must wait, and so must another activation in the same process; a restarted
    # incarnation of the same host may take over at once.
    assert isinstance(await directory.acquire(conv, owner_id("h1", "x", 1)), Held)
    assert isinstance(await directory.acquire(conv, owner_id("h0", "one", 2)), Held)
    second = await directory.acquire(conv, owner_id("h0", "two", 1))
    assert isinstance(second, Lease) and second.epoch == first.epoch + 1
    assert await directory.renew([first, second]) == [first], "the old incarnation lost its lease"
    await directory.release(first)  # a stale release must not free the new owner's lease
    assert await directory.owner(conv) == second.owner
    await directory.release(second)
    assert await directory.owner(conv) is None


async def test_a_lease_expires_when_not_renewed(redis: aioredis.Redis) -> None:
    directory = Directory(redis, lease_ttl_ms=1000)
    conv = new_id("conv")
    assert isinstance(await directory.acquire(conv, owner_id("h0", "a")), Lease)

    async def expired() -> bool:
        return await directory.owner(conv) is None

    await eventually(expired, 5, interval_s=0.05, message="the lease to expire")
    assert isinstance(await directory.acquire(conv, owner_id("h1", "b")), Lease)


async def _lapsed(directory: Directory, conversation_id: str) -> None:
    """Wait (bounded) until the conversation's lease has expired: its owner did not renew it in
    time, as while Redis was unreachable."""

    async def expired() -> bool:
        return await directory.owner(conversation_id) is None

    await eventually(expired, 5, interval_s=0.05, message="the lease to lapse")


async def test_a_lapsed_lease_nobody_took_is_taken_back_by_its_owner(redis: aioredis.Redis) -> None:
    """Issue 16: a lease that lapsed while Redis was unreachable was taken by nobody (its epoch is
    still the owner's), so renewing it sets it again instead of reporting it lost."""
    directory = Directory(redis, lease_ttl_ms=1000)
    conv = new_id("conv")
    lease = await directory.acquire(conv, owner_id("h0", "a", 1))
    assert isinstance(lease, Lease)
    await _lapsed(directory, conv)
    assert await directory.renew([lease]) == [], "a lapse is not a change of owner"
    assert await directory.owner(conv) == lease.owner
    assert 0 < await redis.pttl(keyspace.lease(conv)) <= 1000, "taken back with its TTL"
    assert int(await redis.get(keyspace.epoch(conv))) == lease.epoch, "taking it back is not a new acquisition"


async def test_a_lapsed_lease_someone_else_acquired_meanwhile_is_lost(redis: aioredis.Redis) -> None:
    directory = Directory(redis, lease_ttl_ms=1000)
    held, moved = new_id("conv"), new_id("conv")
    first = [await directory.acquire(c, owner_id("h0", "a", i)) for i, c in enumerate((held, moved))]
    assert all(isinstance(lease, Lease) for lease in first)
    for conv in (held, moved):
        await _lapsed(directory, conv)
    other = await directory.acquire(held, owner_id("h1", "b", 1))  # held by another owner now
    gone = await directory.acquire(moved, owner_id("h1", "b", 2))  # taken, then let go: the epoch moved
    assert isinstance(other, Lease) and isinstance(gone, Lease)
    await directory.release(gone)
    assert await directory.renew(first) == first
    assert await directory.owner(held) == other.owner and await directory.owner(moved) is None


async def _accept(redis: aioredis.Redis, mailbox: Mailbox, runs: RunStore, conv: str, on_busy: str = "queue") -> str:
    await redis.set(keyspace.conversation(conv), b"{}", nx=True)  # a turn needs its conversation to exist
    run_id = new_id("run")
    view = RunView(id=run_id, agent_id="agent-x", conversation_id=conv, created_at=utcnow())
    await runs.index(view)
    await mailbox.accept(
        conv, run_id, b"{}", on_busy=on_busy, run_fields=runs.initial_fields(view), first_item=b"{}", stream_ttl_s=60, run_ttl_s=60
    )
    return run_id


async def test_mailbox_keeps_acceptance_order_and_rejects_when_busy(redis: aioredis.Redis) -> None:
    mailbox, runs = Mailbox(redis), RunStore(redis, ttl_s=60, maxlen=100)
    conv = new_id("conv")
    accepted = [await _accept(redis, mailbox, runs, conv) for _ in range(5)]
    assert await mailbox.run_ids(conv) == accepted
    with pytest.raises(ConversationBusyError) as busy:
        await _accept(redis, mailbox, runs, conv, on_busy="reject")
    assert busy.value.active_run_id == accepted[0]
    assert await mailbox.depth(conv) == 5, "a rejected send writes nothing to the mailbox"


async def test_a_conversation_that_is_gone_takes_no_turn(redis: aioredis.Redis) -> None:
    """The API may know a conversation from earlier (``ConversationStore.ref``): the accept step
    itself checks it still exists, so a deleted one gets nothing written."""
    mailbox, runs = Mailbox(redis), RunStore(redis, ttl_s=60, maxlen=100)
    conv = new_id("conv")
    await _accept(redis, mailbox, runs, conv)
    await redis.delete(keyspace.conversation(conv))
    run_id = new_id("run")
    view = RunView(id=run_id, agent_id="agent-x", conversation_id=conv, created_at=utcnow())
    with pytest.raises(NotFoundError):
        await mailbox.accept(
            conv, run_id, b"{}", on_busy="queue", run_fields=runs.initial_fields(view), first_item=b"{}", stream_ttl_s=60, run_ttl_s=60
        )
    assert await mailbox.depth(conv) == 1 and not await redis.exists(keyspace.run(conv, run_id), keyspace.run_stream(conv, run_id))


async def test_run_transitions_are_fenced_and_never_leave_a_terminal_status(redis: aioredis.Redis) -> None:
    mailbox, runs = Mailbox(redis), RunStore(redis, ttl_s=60, maxlen=100)
    conv = new_id("conv")
    await redis.set(keyspace.epoch(conv), 3)
    run_id = await _accept(redis, mailbox, runs, conv)
    entry_id = (await redis.xrange(keyspace.mailbox(conv)))[0][0].decode()

    with pytest.raises(FencedError):
        await runs.start(Fence(conv, 2), run_id)
    assert await runs.start(Fence(conv, 3, "h/a/1"), run_id) == "started"
    # Re-sent by the same owner (its first reply was lost): still its run, not someone else's; it
    # says "resumed" so the owner reads how far the stream got instead of assuming a fresh one.
    assert await runs.start(Fence(conv, 3, "h/a/1"), run_id) == "resumed"
    assert await runs.start(Fence(conv, 3, "h/b/1"), run_id) == "running"

    done = await runs.end(run_id, conversation_id=conv, ending=END_TURN, fence=Fence(conv, 3), mailbox_entry=entry_id)
    assert done
    assert await mailbox.depth(conv) == 0, "finishing a run removes its mailbox entry"
    again = await runs.end(run_id, conversation_id=conv, ending=wire.Failed(InternalRunError("late")), fence=None)
    assert not again
    view = await runs.get(run_id, tenant=None)
    assert view.status == "completed" and view.stop_reason == "end_turn"


async def test_take_starts_the_oldest_entry_in_one_fenced_step(redis: aioredis.Redis) -> None:
    mailbox, runs = Mailbox(redis), RunStore(redis, ttl_s=60, maxlen=100)
    conv = new_id("conv")
    await redis.set(keyspace.epoch(conv), 3)
    assert await mailbox.take(Fence(conv, 3, "h/a/1")) is None, "nothing to take"
    first, second = await _accept(redis, mailbox, runs, conv), await _accept(redis, mailbox, runs, conv)

    with pytest.raises(FencedError):
        await mailbox.take(Fence(conv, 2, "h/old/1"))
    assert (await runs.get(first, tenant=None)).status == "created", "a stale owner's take changes nothing"
    taken = await mailbox.take(Fence(conv, 3, "h/a/1"))
    assert taken is not None and (taken.entry.run_id, taken.status) == (first, "started")
    assert (await runs.get(first, tenant=None)).status == "running"
    again = await mailbox.take(Fence(conv, 3, "h/a/1"))
    assert again is not None and (again.entry.run_id, again.status) == (first, "resumed"), "the head until it ends"
    other = await mailbox.take(Fence(conv, 3, "h/b/1"))
    assert other is not None and other.status == "running", "another owner finds it taken"

    await runs.end(first, conversation_id=conv, ending=END_TURN, fence=Fence(conv, 3), mailbox_entry=taken.entry.entry_id)
    await runs.request_cancel(conv, second)
    cancelled = await mailbox.take(Fence(conv, 3, "h/a/1"))
    assert cancelled is not None and (cancelled.entry.run_id, cancelled.status) == (second, "cancel_requested")
    assert (await runs.get(second, tenant=None)).status == "created", "a run cancelled before it started never starts"


# -- an owner's writes across a lost reply or an unreachable Redis -----------------------------------

OWNER_PATIENCE_S = 10.0


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[SilencingProxy]:
    async with SilencingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as found:
        yield found


def _through(proxy: SilencingProxy) -> aioredis.Redis:
    """A host's client (auto-pipelined, patient), connected to Redis through ``proxy``, noticing a
    silent connection after half a second."""
    return connect(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_socket_timeout_s=0.5, read_block_ms=100))


@pytest.mark.single_redis
async def test_an_owner_write_whose_reply_was_lost_is_sent_again_and_lands_once(
    redis: aioredis.Redis, proxy: SilencingProxy
) -> None:
    """Every fenced write of an owner is idempotent and re-sent when its connection broke after it
    left (it may have run): the take, a history append, a step trace, the chunk appends and the
    run's end each land once."""
    owner = _through(proxy)
    mailbox, runs, history = Mailbox(owner), RunStore(owner, ttl_s=60, maxlen=100), HistoryStore(owner)
    conv = new_id("conv")
    await redis.set(keyspace.epoch(conv), 3)
    run_id = await _accept(redis, Mailbox(redis), RunStore(redis, ttl_s=60, maxlen=100), conv)
    fence = Fence(conv, 3, "h/a/1", patience_s=OWNER_PATIENCE_S)
    try:
        assert await owner.ping()  # its connection is open: from here on it loses replies
        proxy.lose_replies()
        taken = await mailbox.take(fence)
        assert taken is not None and taken.entry.run_id == run_id and taken.status == "resumed", "started, then re-sent"

        messages = [UserMessage(id=new_id("message"), content=f"m{i}", run_id=run_id) for i in range(2)]
        proxy.lose_replies()
        await history.append(fence, messages)
        assert [m.id for m in await history.recent(conv, limit=10)] == [m.id for m in messages]

        proxy.lose_replies()
        await runs.add_step(fence, run_id, {"id": "step-1", "status": "success"})
        assert await runs.steps(conv, run_id) == [{"id": "step-1", "status": "success"}]

        writer = ChunkWriter(
            owner, stream_key=keyspace.run_stream(conv, run_id), epoch_key=keyspace.epoch(conv), epoch=3, next_seq=2,
            maxlen=100, ttl_s=60, patience_s=OWNER_PATIENCE_S,
        )
        await writer.write("data", b"a")
        await writer.flush()  # the writer has its own connection: open it first
        proxy.lose_replies()
        for word in (b"b", b"c"):
            await writer.write("data", word)
        await writer.flush()

        proxy.lose_replies()
        done = await runs.end(
            run_id, conversation_id=conv, ending=END_TURN, fence=fence, next_seq=5, mailbox_entry=taken.entry.entry_id
        )
        assert done, "a re-sent end that had landed counts as done"
        stored = await read_after(redis, keyspace.run_stream(conv, run_id), 1)
        assert [(i.seq, i.payload) for i in stored[:3]] == [(2, b"a"), (3, b"b"), (4, b"c")]
        assert [i.seq for i in stored] == [2, 3, 4, 5, 6, 7] and stored[-1].terminal, "the terminal sequence, once"
        assert (await runs.get(run_id, tenant=None)).status == "completed" and await Mailbox(redis).depth(conv) == 0
        assert len(proxy.connections) > 5, "every write above lost its first reply and was sent again"
    finally:
        await owner.aclose()


@pytest.mark.single_redis
async def test_an_owner_stops_waiting_for_an_unreachable_redis_after_its_patience(
    redis: aioredis.Redis, proxy: SilencingProxy
) -> None:
    owner = _through(proxy)
    conv = new_id("conv")
    await redis.set(keyspace.epoch(conv), 3)
    fence = Fence(conv, 3, "h/a/1", patience_s=1.5)
    try:
        assert await owner.ping()
        proxy.silence_all()
        proxy.refuse_new()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"unreachable for \d+ s"):
            await HistoryStore(owner).append(fence, [UserMessage(id=new_id("message"), content="lost", run_id="run-x")])
        assert 1.4 <= time.monotonic() - started < 3.0, "it waits its patience, no more, no less"
    finally:
        await owner.aclose()


@pytest.mark.single_redis
async def test_a_run_whose_owner_died_right_after_ending_it_keeps_no_key_for_a_week(
    redis: aioredis.Redis, proxy: SilencingProxy
) -> None:
    """Found by the soak (a host SIGKILLed 13 ms after four of its runs ended): a run's end and its
    reference's lifetime went out in two round trips, so a process that died between them left the
    reference for a week (``UNFINISHED_RUN_TTL_S``) instead of the ended run's ``stream_ttl_s``.
    Both now leave together."""
    owner = _through(proxy)
    conv = new_id("conv")
    await redis.set(keyspace.epoch(conv), 3)
    earlier, run_id = [await _accept(redis, Mailbox(redis), RunStore(redis, ttl_s=60, maxlen=100), conv) for _ in range(2)]
    runs = RunStore(owner, ttl_s=60, maxlen=100)
    try:
        for ended, lost in ((earlier, False), (run_id, True)):  # the first loads the script, as in any owner
            if lost:
                proxy.lose_replies()  # the owner is gone before it hears back: nothing it would send next leaves
            with pytest.raises(RedisTimeoutError) if lost else contextlib.nullcontext():
                await runs.end(ended, conversation_id=conv, ending=END_TURN, fence=Fence(conv, 3, "h/a/1"), next_seq=2)
        assert (await RunStore(redis, ttl_s=60, maxlen=100).get(run_id, tenant=None)).status == "completed"
        assert 0 < await redis.ttl(keyspace.run_ref(run_id)) <= 60, "the reference expires with the ended run"
    finally:
        await owner.aclose()
