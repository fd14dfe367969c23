"""Agent and conversation records in Redis (JSON documents plus creation-ordered indexes)."""

from __future__ import annotations

import redis.asyncio as aioredis

from runtime import keys
from runtime.errors import NotFoundError
from runtime.ids import new_id
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import utcnow

MAX_PAGE = 1000


class AgentStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def create(self, *, name: str | None, model: str, system: str, **extra: object) -> AgentRecord:
        now = utcnow()
        agent_id = new_id("agent")
        record = AgentRecord(
            id=agent_id, name=name or agent_id, model=model, system=system, created_at=now, updated_at=now, **extra
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.agent(agent_id), record.model_dump_json())
            pipe.zadd(keys.agents_index(), {agent_id: now.timestamp()})
            await pipe.execute()
        return record

    async def get(self, agent_id: str) -> AgentRecord:
        raw = await self._redis.get(keys.agent(agent_id))
        if raw is None:
            raise NotFoundError(f"agent {agent_id} not found")
        return AgentRecord.model_validate_json(raw)

    async def list(self, *, limit: int = 50, after: str | None = None) -> list[AgentRecord]:
        return [AgentRecord.model_validate_json(raw) for raw in await _page(self._redis, keys.agents_index(), keys.agent, limit, after)]


class ConversationStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def create(self, *, agent_id: str, summary: str | None = None, model: str | None = None) -> ConversationRecord:
        now = utcnow()
        conv_id = new_id("conv")
        record = ConversationRecord(id=conv_id, agent_id=agent_id, summary=summary, model=model, created_at=now, updated_at=now)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.conversation(conv_id), record.model_dump_json())
            pipe.zadd(keys.conversations_index(), {conv_id: now.timestamp()})
            pipe.zadd(keys.agent_conversations(agent_id), {conv_id: now.timestamp()})
            await pipe.execute()
        return record

    async def get(self, conversation_id: str) -> ConversationRecord:
        raw = await self._redis.get(keys.conversation(conversation_id))
        if raw is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        return ConversationRecord.model_validate_json(raw)

    async def list(self, *, agent_id: str | None = None, limit: int = 50, after: str | None = None) -> list[ConversationRecord]:
        index = keys.agent_conversations(agent_id) if agent_id else keys.conversations_index()
        return [ConversationRecord.model_validate_json(raw) for raw in await _page(self._redis, index, keys.conversation, limit, after)]


async def _page(redis: aioredis.Redis, index: str, key_of: object, limit: int, after: str | None) -> list[bytes]:
    """Records in creation order, ``limit`` at most, starting after the id ``after``."""
    limit = max(1, min(limit, MAX_PAGE))
    start = 0
    if after is not None:
        rank = await redis.zrank(index, after)
        if rank is None:
            return []
        start = rank + 1
    ids = await redis.zrange(index, start, start + limit - 1)
    if not ids:
        return []
    raws = await redis.mget([key_of(i.decode()) for i in ids])  # type: ignore[operator]
    return [raw for raw in raws if raw is not None]
