"""``ConversationClient.start_history`` (an agent's ``initial_message_sequence``) on a real Redis:
a seed that fails leaves no conversation behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from actors.client import ConversationClient
from runtime.errors import NotFoundError
from runtime.schemas.messages import UserMessage
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.agents import AgentStore, ConversationStore, default_conversation_id
from runtime.store.connection import connect
from runtime.store.runs import RunStore
from runtime.stream.tailer import TailerPool


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


async def test_a_seed_that_fails_deletes_the_conversation_it_created(redis_url: str, redis: aioredis.Redis) -> None:
    settings = Settings(redis_url=redis_url, hosts=1)
    client = ConversationClient(settings, redis, RunStore(redis, ttl_s=60, maxlen=100), TailerPool(redis, block_ms=100))
    agent = await AgentStore(redis).create(tenant="t", name="seeded", model="echo/echo", system="")
    conversation_id = default_conversation_id(agent.id)
    await redis.set(keyspace.epoch(conversation_id), 1)  # someone owned it: its history may not be seeded

    with pytest.raises(ValueError, match="has a history already"):
        await client.start_history(agent, [UserMessage(id="message-seed-1", content="My name is Ada.")])

    conversations = ConversationStore(redis)
    with pytest.raises(NotFoundError):
        await conversations.get(conversation_id, tenant=None)
    assert await conversations.ids_of(agent.id) == []
