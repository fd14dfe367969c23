"""Agent and conversation records in Redis (JSON documents plus creation-ordered indexes).

An agent's record and its indexes share the agent's hash slot, a conversation's records its own
(``runtime.store.keyspace``), and a tenant's indexes theirs: on a Redis Cluster each step below
touches one slot, and what must hold across slots holds by the order of the steps.

Guarantees:

- **A conversation joins its agent only while the agent exists.** Creating one writes its record,
  then adds it to the agent's index in one step that checks the agent still exists (the agent's
  slot); if it is gone, the record is removed again and the creation fails (404). So a conversation
  listed under an agent always had its record written first, and a deleted agent gains none.
- **One default conversation per agent, without locks.** Its id is derived from the agent's
  (``agent-<uuid>`` -> ``conv-<uuid>``), and its record is created with ``SET NX``: any number of API
  replicas racing to create it agree on the one record that won. Every caller then adds it to the
  indexes (``ZADD NX``), so a creator that died between the steps is repaired by the next.
- **Updates do not lose each other.** An agent update is a compare-and-set (``WATCH``/``MULTI`` on
  its one key) of the whole record, retried when another update or a delete got in first; an update
  never resurrects a deleted agent.
- **Deleting an agent removes its conversations first, then the agent.** Each conversation (its
  record, history, mailbox, indexes) is removed in one step; the agent's record and indexes go last,
  in one step that refuses while its index lists a conversation not yet removed (one created
  meanwhile), which is then removed too. A delete interrupted half-way leaves the agent in place,
  and deleting it again finishes the job. The tenant's index entries go with each record (an entry
  whose record is gone is skipped by listings). Run records and streams are left to expire on their
  own (``stream_ttl_s``), like those of any finished run; fencing epochs are given the same lifetime,
  so an owner that still holds a deleted conversation cannot write to it once they expire either.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, TypeVar, Unpack

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from runtime.errors import NotFoundError
from runtime.ids import new_id
from runtime.schemas.agents import AgentRecord, ConversationRecord, ConversationRef
from runtime.schemas.messages import utcnow
from runtime.schemas.model_settings import ModelSettings
from runtime.schemas.requests import MemoryBlock
from runtime.store import keyspace, replies
from runtime.store.slots import mget

# KEYS: an agent's record, its conversations index. ARGV: conversation id, creation score.
# Lists the conversation under the agent if the agent exists: 1; else 0, and nothing is written.
_JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: an agent's record, its conversations index, its runs index, its conversations' activity. ARGV: the ids of the
# conversations already removed. Deletes the agent and its indexes unless the index lists others:
# then returns those and deletes nothing. nil when the agent is gone.
_DROP_AGENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local removed = {}
for i = 1, #ARGV do removed[ARGV[i]] = true end
local left = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not removed[id] then left[#left + 1] = id end
end
if #left > 0 then return left end
redis.call('DEL', unpack(KEYS))
return {}
"""

MAX_PAGE = 1000
MAX_SCAN = 10_000  # records read by a listing in an order no index keeps (last message, last run, update), at most
CONVERSATION_REFS_MAX = 100_000
Owned = TypeVar("Owned", AgentRecord, ConversationRecord)
UPDATABLE = frozenset(
    {"name", "model", "system", "description", "tags", "metadata", "tools", "memory_blocks", "context_window_limit", "max_tokens",
     "model_settings", "tool_approvals", "timezone"}
)  # fmt: skip
CONVERSATION_UPDATABLE = frozenset(
    {"summary", "description", "model", "model_settings", "context_window_limit", "archived", "archived_at"}
)


class AgentOptions(TypedDict, total=False):
    """What an agent may be created with besides its name, model and system prompt (``AgentRecord``'s
    other fields; left out, a field takes the record's default)."""

    description: str | None
    tags: list[str]
    metadata: dict[str, Any] | None
    tools: list[str]
    memory_blocks: list[MemoryBlock]
    context_window_limit: int | None
    max_tokens: int | None
    model_settings: ModelSettings | None
    tool_approvals: dict[str, bool]
    timezone: str | None


def default_conversation_id(agent_id: str) -> str:
    """``conv-<the agent's uuid>``: every replica computes the same id, no lookup needed."""
    return f"conv-{uuid.UUID(agent_id.removeprefix('agent-'))}"


class AgentStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._drop = redis.register_script(_DROP_AGENT)

    async def create(self, *, tenant: str, name: str | None, model: str, system: str, **extra: Unpack[AgentOptions]) -> AgentRecord:
        now = utcnow()
        agent_id = new_id("agent")
        record = AgentRecord(
            id=agent_id,
            tenant=tenant,
            name=name or agent_id,
            model=model,
            system=system,
            created_at=now,
            updated_at=now,
            **extra,
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(keyspace.agent(agent_id), record.model_dump_json())
            pipe.zadd(keyspace.agents_index(tenant), {agent_id: now.timestamp()})
            await pipe.execute()
        return record

    async def get(self, agent_id: str, *, tenant: str | None) -> AgentRecord:
        """The agent; 404 if it is unknown or another tenant's (``tenant=None``: any tenant, for
        Convoy's own processes)."""
        return _owned(await self._redis.get(keyspace.agent(agent_id)), AgentRecord, tenant, f"agent {agent_id}")

    async def list(
        self, *, tenant: str, limit: int = 50, after: str | None = None, order: Literal["asc", "desc"] = "asc"
    ) -> list[AgentRecord]:
        """The tenant's agents by creation, oldest first unless ``order="desc"``."""
        raws = await _page(self._redis, keyspace.agents_index(tenant), keyspace.agent, limit, after, desc=order == "desc")
        return [AgentRecord.model_validate_json(raw) for raw in raws]

    async def count(self, *, tenant: str) -> int:
        """How many agents the tenant has."""
        return int(await self._redis.zcard(keyspace.agents_index(tenant)))

    async def every(self, *, tenant: str) -> builtins.list[AgentRecord]:
        """The tenant's agents by creation, oldest first: the first ``MAX_SCAN`` (``count`` tells
        whether that is all of them)."""
        raws = await _every(self._redis, keyspace.agents_index(tenant), keyspace.agent)
        return [AgentRecord.model_validate_json(raw) for raw in raws]

    async def update(self, agent_id: str, changes: dict[str, Any]) -> AgentRecord:
        """Apply ``changes`` (fields of ``UPDATABLE``) and move ``updated_at``; 404 if the agent is
        gone, including when it is deleted while this update is being applied."""
        return await self.modify(agent_id, lambda _: changes)

    async def modify(self, agent_id: str, change: Callable[[AgentRecord], dict[str, Any]]) -> AgentRecord:
        """``update`` with the changes worked out from the record as it is (``change`` is called
        again if another write got in first), so an attach never loses a concurrent one."""
        key = keyspace.agent(agent_id)
        updated: list[AgentRecord] = []

        async def apply(pipe: Pipeline) -> None:
            raw = await pipe.get(key)
            if raw is None:
                raise NotFoundError(f"agent {agent_id} not found")
            current = AgentRecord.model_validate_json(raw)
            changes = change(current)
            unknown = set(changes) - UPDATABLE
            if unknown:
                raise ValueError(f"not updatable: {sorted(unknown)}")
            record = current.model_copy(update={**changes, "updated_at": utcnow()})
            pipe.multi()
            pipe.set(key, record.model_dump_json(), xx=True)
            updated[:] = [record]

        await self._redis.transaction(apply, key)
        return updated[0]

    async def delete(self, agent_id: str, *, epoch_ttl_s: int) -> builtins.list[str]:
        """Remove the agent, its conversations and every index entry of theirs (see the module
        docstring); the ids of the conversations removed. 404 if the agent is already gone. A
        conversation created for the agent meanwhile is removed too."""
        tenant = (await self.get(agent_id, tenant=None)).tenant
        agent_keys = [
            keyspace.agent(agent_id),
            keyspace.agent_conversations(agent_id),
            keyspace.agent_runs(agent_id),
            keyspace.agent_conversations_activity(agent_id),
        ]
        removed: builtins.list[str] = []
        left = replies.members(await self._redis.zrange(keyspace.agent_conversations(agent_id), 0, -1))
        while left:
            for conversation_id in left:
                await _remove_conversation(self._redis, conversation_id, tenant=tenant, epoch_ttl_s=epoch_ttl_s)
            removed += left
            reply = await self._drop(keys=agent_keys, args=removed)
            if reply is None:
                raise NotFoundError(f"agent {agent_id} not found")
            left = [replies.text(i) for i in reply]
        if not removed and await self._drop(keys=agent_keys, args=[]) is None:
            raise NotFoundError(f"agent {agent_id} not found")
        await self._redis.zrem(keyspace.agents_index(tenant), agent_id)
        return removed


class ConversationStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._join = redis.register_script(_JOIN)
        # What a conversation's id says for good (its tenant and agent): never stale. A deleted
        # conversation is still found missing wherever it matters (reads, and accepting a turn,
        # which checks it exists in the same atomic step).
        self._refs: dict[str, ConversationRef] = {}

    async def ref(self, conversation_id: str, *, tenant: str | None) -> ConversationRef:
        """The conversation's tenant and agent: no round trip once this process has seen it. 404
        if it is unknown or another tenant's; whether it still exists is for the caller to check
        atomically with what it does (``Mailbox.accept`` does)."""
        known = self._refs.get(conversation_id)
        if known is None:
            known = self._remember((await self.get(conversation_id, tenant=None)).ref())
        if tenant is not None and known.tenant != tenant:
            raise NotFoundError(f"conversation {conversation_id} not found")
        return known

    def _remember(self, ref: ConversationRef) -> ConversationRef:
        if len(self._refs) >= CONVERSATION_REFS_MAX:
            self._refs.clear()
        self._refs[ref.id] = ref
        return ref

    async def create(
        self, agent: AgentRecord, *, summary: str | None = None, model: str | None = None, **extra: object
    ) -> ConversationRecord:
        """A new conversation with ``agent``, in the agent's tenant."""
        now = utcnow()
        conv_id = new_id("conv")
        agent_id = agent.id
        record = ConversationRecord(
            id=conv_id,
            agent_id=agent_id,
            tenant=agent.tenant,
            summary=summary,
            model=model,
            created_at=now,
            updated_at=now,
            **extra,  # type: ignore[arg-type]
        )
        await self._redis.set(keyspace.conversation(conv_id), record.model_dump_json())
        await self._join_agent(record, created=True)
        return record

    async def _join_agent(self, record: ConversationRecord, *, created: bool) -> None:
        """List a conversation whose record is written under its agent (if the agent still exists,
        else remove the record if ``created`` and raise NotFoundError) and in its tenant's index."""
        at = record.created_at.timestamp()
        joined = await self._join(keys=[keyspace.agent(record.agent_id), keyspace.agent_conversations(record.agent_id)], args=[record.id, at])
        if not joined:
            if created:
                await self._redis.delete(*_conversation_keys(record.id))
            raise NotFoundError(f"agent {record.agent_id} not found")
        await self._redis.zadd(keyspace.conversations_index(record.tenant), {record.id: at}, nx=True)

    async def default_for(self, agent: AgentRecord) -> ConversationRecord:
        """The agent's default conversation (Letta's agent-level message routes use it), created
        on first use; race-free across replicas, and never created for an agent that is gone
        (see the module docstring)."""
        agent_id = agent.id
        conv_id = default_conversation_id(agent_id)
        raw = await self._redis.get(keyspace.conversation(conv_id))
        if raw is not None:
            return ConversationRecord.model_validate_json(raw)
        now = utcnow()
        record = ConversationRecord(id=conv_id, agent_id=agent_id, tenant=agent.tenant, created_at=now, updated_at=now)
        earlier = replies.previous(await self._redis.set(keyspace.conversation(conv_id), record.model_dump_json(), nx=True, get=True))
        winner = record if earlier is None else ConversationRecord.model_validate_json(earlier)
        await self._join_agent(winner, created=earlier is None)
        return winner

    async def default_of(self, agent_id: str, *, tenant: str | None) -> ConversationRecord:
        """The agent's default conversation (created on first use), in one round trip once it
        exists; 404 if the agent is unknown or another tenant's."""
        raw_agent, raw_conversation = await mget(
            self._redis, [keyspace.agent(agent_id), keyspace.conversation(default_conversation_id(agent_id))]
        )
        agent = _owned(raw_agent, AgentRecord, tenant, f"agent {agent_id}")
        if raw_conversation is None:
            return await self.default_for(agent)
        return ConversationRecord.model_validate_json(raw_conversation)

    async def update(self, conversation_id: str, changes: dict[str, Any]) -> ConversationRecord:
        """Apply ``changes`` (fields of ``CONVERSATION_UPDATABLE``) as ``AgentStore.update`` does: a
        compare-and-set of the whole record, 404 if the conversation is gone meanwhile."""
        unknown = set(changes) - CONVERSATION_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        key = keyspace.conversation(conversation_id)
        updated: list[ConversationRecord] = []

        async def apply(pipe: Pipeline) -> None:
            raw = await pipe.get(key)
            if raw is None:
                raise NotFoundError(f"conversation {conversation_id} not found")
            record = ConversationRecord.model_validate_json(raw).model_copy(update={**changes, "updated_at": utcnow()})
            pipe.multi()
            pipe.set(key, record.model_dump_json(), xx=True)
            updated[:] = [record]

        await self._redis.transaction(apply, key)
        return updated[0]

    async def ids_of(self, agent_id: str) -> list[str]:
        """Every conversation id of the agent, oldest first."""
        return replies.members(await self._redis.zrange(keyspace.agent_conversations(agent_id), 0, -1))

    async def get(self, conversation_id: str, *, tenant: str | None) -> ConversationRecord:
        """The conversation; 404 if it is unknown or another tenant's (``tenant=None``: any
        tenant, for Convoy's own processes)."""
        raw = await self._redis.get(keyspace.conversation(conversation_id))
        return _owned(raw, ConversationRecord, tenant, f"conversation {conversation_id}")

    async def list(
        self,
        *,
        tenant: str,
        agent_id: str | None = None,
        limit: int = 50,
        after: str | None = None,
        order: Literal["asc", "desc"] = "asc",
        order_by: Literal["created_at", "last_message_at"] = "created_at",
    ) -> builtins.list[ConversationRecord]:
        """The tenant's conversations, or those of ``agent_id`` (an agent the caller has checked is
        the tenant's), by creation or by their last message (those never messaged last, by
        creation)."""
        if order_by == "created_at":
            index = keyspace.agent_conversations(agent_id) if agent_id else keyspace.conversations_index(tenant)
            raws = await _page(self._redis, index, keyspace.conversation, limit, after, desc=order == "desc")
            return [ConversationRecord.model_validate_json(raw) for raw in raws]
        created = keyspace.agent_conversations(agent_id) if agent_id else keyspace.conversations_index(tenant)
        active = keyspace.agent_conversations_activity(agent_id) if agent_id else keyspace.conversations_activity(tenant)
        messaged = replies.members(await self._redis.zrange(active, 0, MAX_SCAN - 1, desc=order == "desc"))
        seen = set(messaged)
        quiet = [c for c in replies.members(await self._redis.zrange(created, 0, MAX_SCAN - 1)) if c not in seen]
        ids = messaged + quiet
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        return await self._records(ids[: max(1, min(limit, MAX_PAGE))])

    async def count(self, *, tenant: str, agent_id: str | None = None) -> int:
        """How many conversations the tenant has (or ``agent_id``), the agents' own histories among them."""
        index = keyspace.agent_conversations(agent_id) if agent_id else keyspace.conversations_index(tenant)
        return int(await self._redis.zcard(index))

    async def every(self, *, tenant: str, agent_id: str | None = None) -> builtins.list[ConversationRecord]:
        """The tenant's conversations (or ``agent_id``'s) by creation, oldest first: the first
        ``MAX_SCAN`` (``count`` tells whether that is all of them)."""
        index = keyspace.agent_conversations(agent_id) if agent_id else keyspace.conversations_index(tenant)
        raws = await _every(self._redis, index, keyspace.conversation)
        return [ConversationRecord.model_validate_json(raw) for raw in raws]

    async def last_message_at(self, ids: Sequence[str], *, tenant: str) -> dict[str, datetime]:
        """When each conversation was last sent a message (absent: never)."""
        scores = await self._redis.zmscore(keyspace.conversations_activity(tenant), list(ids)) if ids else []
        return {i: datetime.fromtimestamp(s / 1000, UTC) for i, s in zip(ids, scores, strict=True) if s is not None}

    async def delete(self, conversation: ConversationRecord, *, epoch_ttl_s: int) -> None:
        """``close`` the conversation, then ``remove`` the rest. 404 if it is gone already."""
        await self.close(conversation.id)
        await self.remove(conversation, epoch_ttl_s=epoch_ttl_s)

    async def close(self, conversation_id: str) -> None:
        """Delete the conversation's record, which accepting a turn checks in the same step: no turn
        gets in after this (what got in before is for the caller to cancel). 404 if it is gone."""
        if not await self._redis.delete(keyspace.conversation(conversation_id)):
            raise NotFoundError(f"conversation {conversation_id} not found")
        self._refs.pop(conversation_id, None)

    async def remove(self, conversation: ConversationRecord, *, epoch_ttl_s: int) -> None:
        """Remove what a closed conversation owns (history, mailbox), then its index entries; its
        runs expire on their own and its fencing epoch with them (as an agent's delete does)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*_conversation_keys(conversation.id))
            pipe.expire(keyspace.epoch(conversation.id), epoch_ttl_s)
            await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keyspace.conversations_index(conversation.tenant), conversation.id)
            pipe.zrem(keyspace.conversations_activity(conversation.tenant), conversation.id)
            pipe.zrem(keyspace.agent_conversations(conversation.agent_id), conversation.id)
            pipe.zrem(keyspace.agent_conversations_activity(conversation.agent_id), conversation.id)
            await pipe.execute()

    async def _records(self, ids: Sequence[str]) -> builtins.list[ConversationRecord]:
        raws = await mget(self._redis, [keyspace.conversation(i) for i in ids]) if ids else []
        return [ConversationRecord.model_validate_json(raw) for raw in raws if raw is not None]


def _owned(raw: bytes | str | None, kind: type[Owned], tenant: str | None, what: str) -> Owned:
    """The record in ``raw``; 404 (``what`` not found) when there is none or it is another
    tenant's (``tenant=None``: any tenant)."""
    if raw is None:
        raise NotFoundError(f"{what} not found")
    record = kind.model_validate_json(raw)
    if tenant is not None and record.tenant != tenant:
        raise NotFoundError(f"{what} not found")
    return record


async def _remove_conversation(redis: aioredis.Redis, conversation_id: str, *, tenant: str, epoch_ttl_s: int) -> None:
    """What a conversation owns, removed in one step (its slot); then its tenant's index entry."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(*_conversation_keys(conversation_id))
        pipe.expire(keyspace.epoch(conversation_id), epoch_ttl_s)
        await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keyspace.conversations_index(tenant), conversation_id)
        pipe.zrem(keyspace.conversations_activity(tenant), conversation_id)
        await pipe.execute()


def _conversation_keys(conversation_id: str) -> list[str]:
    """What a conversation owns and a delete removes (its lease expires on its own)."""
    return [
        keyspace.conversation(conversation_id),
        keyspace.mailbox(conversation_id),
        keyspace.mailbox_cursor(conversation_id),
        keyspace.history(conversation_id),
        keyspace.history_index(conversation_id),
        keyspace.conversation_runs(conversation_id),
    ]


async def _every(redis: aioredis.Redis, index: str, key_of: Callable[[str], str]) -> list[bytes | str]:
    """The records of the first ``MAX_SCAN`` ids in ``index`` (creation order), ``MAX_PAGE`` a read."""
    ids = replies.members(await redis.zrange(index, 0, MAX_SCAN - 1))
    raws: list[bytes | str | None] = []
    for start in range(0, len(ids), MAX_PAGE):
        raws += await mget(redis, [key_of(i) for i in ids[start : start + MAX_PAGE]])
    return [raw for raw in raws if raw is not None]


async def _page(
    redis: aioredis.Redis,
    index: str,
    key_of: Callable[[str], str],
    limit: int,
    after: str | None,
    *,
    desc: bool = False,
) -> list[bytes | str]:
    """Records in creation order (newest first if ``desc``), ``limit`` at most, starting after the
    id ``after``."""
    limit = max(1, min(limit, MAX_PAGE))
    start = 0
    if after is not None:
        rank = await (redis.zrevrank(index, after) if desc else redis.zrank(index, after))
        if not isinstance(rank, int):  # None: not in the index (a rank read without its score is an int)
            return []
        start = rank + 1
    ids = replies.members(await redis.zrange(index, start, start + limit - 1, desc=desc))
    if not ids:
        return []
    raws = await mget(redis, [key_of(i) for i in ids])
    return [raw for raw in raws if raw is not None]
