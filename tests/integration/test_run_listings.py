"""Listing runs (``runtime.store.runs.RunStore.list``) from indexes that hold expired runs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from actors.mailbox import Mailbox
from runtime.ids import new_id
from runtime.schemas.messages import utcnow
from runtime.schemas.runs import RunQuery, RunView
from runtime.settings import Settings
from runtime.store import keyspace, replies
from runtime.store.connection import connect
from runtime.store.runs import INDEX_TRIM_EVERY, LIST_SCAN_MAX, UNFINISHED_RUN_TTL_S, RunStore


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


async def test_runs_are_listed_oldest_first_past_more_expired_entries_than_a_listing_reads(redis: aioredis.Redis) -> None:
    """Runs expire (their records and references go) while their index entries stay until pruned:
    a busy conversation's index holds more expired entries than a listing reads, all older than its
    live runs. The oldest-first listing must still find the live ones, and prune what it passed."""
    conversation, runs = new_id("conv"), RunStore(redis, ttl_s=60, maxlen=100)
    an_hour_ago_ms = time.time_ns() // 1_000_000 - 3_600_000
    expired = {new_id("run"): an_hour_ago_ms + i for i in range(LIST_SCAN_MAX + 5)}
    for start in range(0, len(expired), 1000):
        await redis.zadd(keyspace.conversation_runs(conversation), dict(list(expired.items())[start : start + 1000]))
    await redis.set(keyspace.conversation(conversation), b"{}")
    view = RunView(id=new_id("run"), agent_id="agent-x", conversation_id=conversation, created_at=utcnow())
    await runs.index(view)
    await Mailbox(redis).accept(
        conversation, view.id, b"{}", on_busy="queue", run_fields=runs.initial_fields(view), first_item=b"{}", stream_ttl_s=60, run_ttl_s=60
    )
    listed = await runs.list(RunQuery(conversation_id=conversation, ascending=True), tenant=view.tenant)
    assert [r.id for r in listed] == [view.id]
    assert await redis.zcard(keyspace.conversation_runs(conversation)) == 1, "the expired entries it read are pruned"


async def test_an_index_nobody_lists_drops_the_entries_of_runs_that_can_no_longer_exist(redis: aioredis.Redis) -> None:
    """A tenant's run index may never be listed: it must not grow by one entry per run for good."""
    tenant, runs = new_id("tenant"), RunStore(redis, ttl_s=60, maxlen=100)
    too_old_ms = time.time_ns() // 1_000_000 - (UNFINISHED_RUN_TTL_S + 60) * 1000
    await redis.zadd(keyspace.runs_index(tenant), {new_id("run"): too_old_ms + i for i in range(100)})
    fresh = [RunView(id=new_id("run"), agent_id="agent-x", conversation_id=new_id("conv"), tenant=tenant, created_at=utcnow()) for _ in range(INDEX_TRIM_EVERY)]
    for view in fresh:
        await runs.index(view)
    left = set(replies.members(await redis.zrange(keyspace.runs_index(tenant), 0, -1)))
    assert left == {v.id for v in fresh}, "what is left is the runs that can still exist"
