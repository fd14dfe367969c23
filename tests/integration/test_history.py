"""A conversation's history in Redis (``runtime.store.history``), read the ways the listings read it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from runtime.ids import new_id
from runtime.schemas.messages import AssistantMessage, UserMessage
from runtime.settings import Settings
from runtime.store.connection import connect
from runtime.store.history import HistoryStore


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


async def test_a_runs_messages_are_found_when_the_accepting_replicas_clock_runs_ahead(redis: aioredis.Redis) -> None:
    conversation, run_id, other = new_id("conv"), new_id("run"), new_id("run")
    earlier = UserMessage(id=new_id("message"), content="before", run_id=other)
    mine = [UserMessage(id=new_id("message"), content="q", run_id=run_id), AssistantMessage(id=new_id("message"), content="a", run_id=run_id)]
    history = HistoryStore(redis)
    await history.seed(conversation, [earlier, *mine])
    accepted_ms = time.time_ns() // 1_000_000 + 5_000  # the replica that accepted the run is 5 s ahead of Redis
    found = await history.of_run(conversation, run_id, since_ms=accepted_ms)
    assert [m.id for m in found] == [m.id for m in mine]
