"""A conversation's persisted messages: a Redis stream of Letta messages in order.

Appends come from the conversation's owner and are fenced by its epoch, so a stale owner cannot
add to the history after a takeover. The agent loop appends a turn step by step, each step's
messages in one script call, so a crash never leaves half a step. An append is idempotent: one
whose first message is already indexed had run (a script runs whole) and is skipped, so the owner
sends it again while Redis is unreachable (``runtime.store.fencing.through_outage``) without ever doubling
a message.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from pydantic import TypeAdapter

from runtime.errors import NotFoundError
from runtime.schemas.messages import HistoryMessage
from runtime.store import keyspace, replies
from runtime.store.fencing import Fence, call_fenced

# KEYS: epoch, history stream, message id -> entry id index. ARGV: epoch, then (message id, json) pairs.
# Returns how many messages were appended: 0 when this append had run already (sent again).
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
for i = 2, #ARGV, 2 do
  local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], id)
end
return (#ARGV - 1) / 2
"""

_MESSAGE: TypeAdapter[HistoryMessage] = TypeAdapter(HistoryMessage)
MAX_PAGE = 1000


class HistoryStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._append = redis.register_script(_APPEND)

    async def append(self, fence: Fence, messages: Sequence[HistoryMessage]) -> None:
        if not messages:
            return
        args: list[object] = [fence.epoch]
        for message in messages:
            args.extend((message.id, message.model_dump_json(exclude={"seq_id"})))
        await call_fenced(
            self._append,
            fence=fence,
            keys=[
                keyspace.epoch(fence.conversation_id),
                keyspace.history(fence.conversation_id),
                keyspace.history_index(fence.conversation_id),
            ],
            args=args,
            refused="history append refused for a stale owner",
        )

    async def recent(self, conversation_id: str, *, limit: int) -> list[HistoryMessage]:
        """The last ``limit`` messages, oldest first (what a model is shown)."""
        entries = replies.entries(await self._redis.xrevrange(keyspace.history(conversation_id), count=limit))
        return [_MESSAGE.validate_json(fields[b"m"]) for _, fields in reversed(entries)]

    async def page(
        self,
        conversation_id: str,
        *,
        limit: int = 100,
        after: str | None = None,
        before: str | None = None,
        order: str = "asc",
    ) -> list[HistoryMessage]:
        """One page of messages in ``order``, strictly after / before the given message ids."""
        limit = max(1, min(limit, MAX_PAGE))
        lo, hi = "-", "+"
        for cursor, is_after in ((after, True), (before, False)):
            if cursor is None:
                continue
            entry = await self._redis.hget(keyspace.history_index(conversation_id), cursor)
            if entry is None:
                raise NotFoundError(f"message {cursor} not found in conversation {conversation_id}")
            if is_after:
                lo = "(" + replies.text(entry)
            else:
                hi = "(" + replies.text(entry)
        key = keyspace.history(conversation_id)
        if order == "desc":
            entries = replies.entries(await self._redis.xrevrange(key, max=hi, min=lo, count=limit))
        else:
            entries = replies.entries(await self._redis.xrange(key, min=lo, max=hi, count=limit))
        return [_MESSAGE.validate_json(fields[b"m"]) for _, fields in entries]
