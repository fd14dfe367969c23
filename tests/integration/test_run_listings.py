"""Listing runs (``runtime.store.runs.RunStore.list``, ``GET /v1/runs``) from indexes that hold expired runs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from letta_client import Letta
from redis import Redis as SyncRedis

from actors.mailbox import Mailbox
from runtime.errors import UnavailableError
from runtime.ids import new_id
from runtime.schemas.auth import DEFAULT_TENANT
from runtime.schemas.messages import utcnow
from runtime.schemas.runs import RunQuery, RunView
from runtime.settings import Settings
from runtime.store import keyspace, replies
from runtime.store.connection import connect
from runtime.store.runs import INDEX_TRIM_EVERY, LIST_PRUNE_MAX, LIST_WINDOW, UNFINISHED_RUN_TTL_S, RunStore
from tests.conftest import Convoy


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


def _hour_ago_ms() -> int:
    return time.time_ns() // 1_000_000 - 3_600_000


async def _expired(redis: aioredis.Redis, index: str, count: int, *, from_ms: int) -> None:
    """``count`` entries of runs that have expired (no reference, no record: what an index holds
    once its runs are gone) from ``from_ms`` on, one a millisecond."""
    entries = [(new_id("run"), from_ms + i) for i in range(count)]
    for start in range(0, count, 1000):
        await redis.zadd(index, dict(entries[start : start + 1000]))


async def _live_run(redis: aioredis.Redis, runs: RunStore, conversation: str, *, at_ms: int | None = None) -> str:
    """A run accepted in ``conversation`` (indexed as asked for at ``at_ms``, else now)."""
    view = RunView(id=new_id("run"), agent_id="agent-x", conversation_id=conversation, created_at=utcnow())
    await runs.index(view)
    if at_ms is not None:
        await redis.zadd(keyspace.conversation_runs(conversation), {view.id: at_ms}, xx=True)
    await Mailbox(redis).accept(
        conversation, view.id, b"{}", on_busy="queue", run_fields=runs.initial_fields(view), first_item=b"{}", stream_ttl_s=60, run_ttl_s=60
    )
    return view.id


async def test_a_listing_prunes_a_bounded_number_of_expired_entries_and_never_answers_an_empty_page_for_them(
    redis: aioredis.Redis,
) -> None:
    """Regression: the first listing of an index holding a great many expired entries pruned them
    all (200 a round trip) before it answered, however many there were. One request passes at most
    ``LIST_PRUNE_MAX``; having found nothing by then, it says so (503: retry) instead of an empty
    page claiming there is no run, and each repeat goes on where the last one stopped."""
    conversation, runs = new_id("conv"), RunStore(redis, ttl_s=60, maxlen=100)
    index = keyspace.conversation_runs(conversation)
    await redis.set(keyspace.conversation(conversation), b"{}")
    await _expired(redis, index, 2 * LIST_PRUNE_MAX + 5, from_ms=_hour_ago_ms())
    live = await _live_run(redis, runs, conversation)
    query = RunQuery(conversation_id=conversation, ascending=True)
    for left in (LIST_PRUNE_MAX + 6, 6):
        with pytest.raises(UnavailableError, match="repeat the request to go on"):
            await runs.list(query, tenant=DEFAULT_TENANT)
        assert await redis.zcard(index) == left, "one request prunes LIST_PRUNE_MAX entries, no more"
    assert [r.id for r in await runs.list(query, tenant=DEFAULT_TENANT)] == [live]
    assert await redis.zcard(index) == 1, "the expired entries it passed are pruned"


async def test_a_page_cut_short_by_expired_entries_goes_on_from_its_last_run(redis: aioredis.Redis) -> None:
    """A listing that reaches ``LIST_PRUNE_MAX`` with runs found returns them (a short page): the
    next page, after its last run, starts where it stopped, and ``limit`` holds among live runs."""
    conversation, runs = new_id("conv"), RunStore(redis, ttl_s=60, maxlen=100)
    index = keyspace.conversation_runs(conversation)
    await redis.set(keyspace.conversation(conversation), b"{}")
    an_hour_ago = _hour_ago_ms()
    first = [await _live_run(redis, runs, conversation, at_ms=an_hour_ago - 10 + i) for i in range(3)]
    await _expired(redis, index, LIST_PRUNE_MAX + 2 * LIST_WINDOW, from_ms=an_hour_ago)
    now_ms = time.time_ns() // 1_000_000
    last = [await _live_run(redis, runs, conversation, at_ms=now_ms + i) for i in range(3)]

    def page(**cursor: str) -> RunQuery:
        return RunQuery(conversation_id=conversation, ascending=True, limit=2, **cursor)

    assert [r.id for r in await runs.list(page(), tenant=DEFAULT_TENANT)] == first[:2], "limit holds"
    held = await redis.zcard(index)
    assert [r.id for r in await runs.list(page(after=first[1]), tenant=DEFAULT_TENANT)] == first[2:], "cut short"
    assert held - await redis.zcard(index) == LIST_PRUNE_MAX, "it pruned what it passed, LIST_PRUNE_MAX entries"
    assert [r.id for r in await runs.list(page(after=first[2]), tenant=DEFAULT_TENANT)] == last[:2]
    assert [r.id for r in await runs.list(page(after=last[1]), tenant=DEFAULT_TENANT)] == last[2:]
    assert await runs.list(page(after=last[2]), tenant=DEFAULT_TENANT) == []
    newest = RunQuery(conversation_id=conversation, limit=10, before=first[0])
    assert [r.id for r in await runs.list(newest, tenant=DEFAULT_TENANT)] == [*reversed(last), *reversed(first[1:])]


def test_paging_runs_with_the_sdk_past_more_expired_runs_than_a_request_passes(convoy: Convoy, store: SyncRedis) -> None:
    """Through the API and the real SDK: a request that met only expired entries answers 503 saying
    to repeat it; paging on (the SDK follows each page's last run) gives every live run."""
    letta = Letta(base_url=convoy.url, api_key="unused", max_retries=0)
    agent = letta.agents.create(name="many-expired")
    conversation = letta.conversations.create(agent_id=agent.id)
    index = keyspace.conversation_runs(conversation.id)
    list(letta.conversations.messages.create(conversation.id, messages=[{"role": "user", "content": "first"}]))
    (first,) = store.zrange(index, 0, -1)
    an_hour_ago = _hour_ago_ms()
    store.zadd(index, {first: an_hour_ago}, xx=True)  # asked for an hour ago, expired runs on either side
    for count, from_ms in ((LIST_PRUNE_MAX + 5, an_hour_ago - 3_600_000), (LIST_PRUNE_MAX + 5, an_hour_ago + 1)):
        for start in range(0, count, 1000):
            store.zadd(index, {new_id("run"): from_ms + i for i in range(start, min(count, start + 1000))})
    list(letta.conversations.messages.create(conversation.id, messages=[{"role": "user", "content": "second"}]))
    (second,) = store.zrevrange(index, 0, 0)

    with httpx.Client(base_url=convoy.url, timeout=30) as http:
        refused = http.get("/v1/runs/", params={"conversation_id": conversation.id, "order": "asc"})
    assert refused.status_code == 503 and "repeat the request to go on" in refused.json()["detail"]
    paged = [run.id for run in letta.runs.list(conversation_id=conversation.id, order="asc", limit=10)]
    assert paged == [first, second]


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
