"""Listings in an order no index keeps read every record, and runs for each: past their bounds
(``MAX_SCAN`` records, ``RUN_SCAN`` last runs) they refuse with a message saying what narrows them,
rather than sort part of the records and answer as if it were all (real Redis, a tenant of each
test's own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from runtime.errors import InvalidRequestError
from runtime.ids import new_id
from runtime.letta import listings
from runtime.letta.listings import RUN_SCAN
from runtime.schemas.runs import StopReason
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.agents import MAX_SCAN, AgentStore, ConversationStore
from runtime.store.connection import connect
from runtime.store.runs import RunStore

AT_ONCE = 100  # records written together while filling a tenant


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


async def _find(
    redis: aioredis.Redis,
    tenant: str,
    *,
    order_by: listings.AgentOrderBy = "created_at",
    last_stop_reason: StopReason | None = None,
    tags: list[str] | None = None,
) -> list[str]:
    found, _ = await listings.find_agents(
        AgentStore(redis), RunStore(redis, ttl_s=60, maxlen=100), tenant=tenant, limit=10, after=None, before=None, order="desc",
        order_by=order_by, name=None, query_text=None, tags=tags, match_all_tags=False, last_stop_reason=last_stop_reason,
    )  # fmt: skip
    return [a.id for a in found]


async def _fill(redis: aioredis.Redis, index: str, count: int) -> None:
    """``count`` ids in ``index`` (no records: what the bound counts is the index)."""
    for start in range(0, count, 1000):
        await redis.zadd(index, {new_id("x"): start + i for i in range(min(1000, count - start))})


async def test_agents_ordered_by_last_run_are_refused_past_the_runs_a_listing_reads(redis: aioredis.Redis) -> None:
    tenant, agents = new_id("tenant"), AgentStore(redis)
    for start in range(0, RUN_SCAN + 1, AT_ONCE):
        await asyncio.gather(
            *(agents.create(tenant=tenant, name=f"a{i}", model="echo/echo", system="", tags=["few"] if i < 3 else [])
              for i in range(start, min(start + AT_ONCE, RUN_SCAN + 1)))
        )  # fmt: skip
    try:
        refused = f"at most {RUN_SCAN}, and {RUN_SCAN + 1} match: narrow them with name"
        with pytest.raises(InvalidRequestError, match=f"order_by=last_run_completion reads the last run .* {refused}"):
            await _find(redis, tenant, order_by="last_run_completion")
        with pytest.raises(InvalidRequestError, match=f"last_stop_reason reads the last run .* {refused}"):
            await _find(redis, tenant, last_stop_reason="end_turn")
        assert len(await _find(redis, tenant, order_by="last_run_completion", tags=["few"])) == 3, "narrowed: listed"
        assert len(await _find(redis, tenant, order_by="updated_at")) == 10, "reads no runs: not bounded by them"
    finally:
        for agent in await agents.every(tenant=tenant):
            await agents.delete(agent.id, epoch_ttl_s=1)


async def test_agents_ordered_by_update_are_refused_past_the_records_a_listing_reads(redis: aioredis.Redis) -> None:
    tenant = new_id("tenant")
    await _fill(redis, keyspace.agents_index(tenant), MAX_SCAN + 1)
    try:
        with pytest.raises(InvalidRequestError, match=f"order_by=updated_at reads and sorts every agent, at most {MAX_SCAN}, and there are {MAX_SCAN + 1}"):
            await _find(redis, tenant, order_by="updated_at")
    finally:
        await redis.delete(keyspace.agents_index(tenant))


async def test_conversations_ordered_by_last_run_are_refused_past_their_bounds(redis: aioredis.Redis) -> None:
    agents, conversations = AgentStore(redis), ConversationStore(redis)
    runs = RunStore(redis, ttl_s=60, maxlen=100)
    agent = await agents.create(tenant=new_id("tenant"), name="many", model="echo/echo", system="")
    needle = await conversations.create(agent, summary="the needle")
    for start in range(0, RUN_SCAN, AT_ONCE):
        await asyncio.gather(*(conversations.create(agent) for _ in range(min(AT_ONCE, RUN_SCAN - start))))

    async def listed(tenant: str, agent_id: str | None, summary_search: str | None = None) -> list[str]:
        found = await listings.conversations(
            conversations, runs, tenant=tenant, agent_id=agent_id, limit=10, after=None, order="desc",
            order_by="last_run_completion", summary_search=summary_search,
        )  # fmt: skip
        return [c.id for c in found]

    try:
        with pytest.raises(InvalidRequestError, match=f"at most {RUN_SCAN}, and {RUN_SCAN + 1} match: narrow them with agent_id"):
            await listed(agent.tenant, agent.id)
        assert await listed(agent.tenant, agent.id, "NEEDLE") == [needle.id], "narrowed: listed"
    finally:
        await agents.delete(agent.id, epoch_ttl_s=1)

    crowded = new_id("tenant")
    await _fill(redis, keyspace.conversations_index(crowded), MAX_SCAN + 1)
    try:
        with pytest.raises(InvalidRequestError, match=f"at most {MAX_SCAN}, and there are {MAX_SCAN + 1}: list one agent's"):
            await listed(crowded, None)
    finally:
        await redis.delete(keyspace.conversations_index(crowded))
