"""A conversation's persisted messages: a Redis stream of Letta messages in order.

Appends come from the conversation's owner and are fenced by its epoch, so a stale owner cannot
add to the history after a takeover. A turn's messages are appended together, so a crash never
leaves half a turn.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from pydantic import TypeAdapter
from redis.exceptions import ResponseError

from runtime import keys
from runtime.errors import FencedError
from runtime.runs import Fence
from runtime.schemas.messages import HistoryMessage

_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
for i = 2, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'm', ARGV[i])
end
return #ARGV - 1
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
        payloads = [m.model_dump_json(exclude={"seq_id"}) for m in messages]
        try:
            await self._append(
                keys=[keys.epoch(fence.conversation_id), keys.history(fence.conversation_id)],
                args=[fence.epoch, *payloads],
            )
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise FencedError("history append refused for a stale owner") from exc
            raise

    async def list(self, conversation_id: str, *, limit: int = 100, order: str = "asc") -> list[HistoryMessage]:
        limit = max(1, min(limit, MAX_PAGE))
        key = keys.history(conversation_id)
        if order == "desc":
            entries = await self._redis.xrevrange(key, count=limit)
        else:
            entries = await self._redis.xrange(key, count=limit)
        return [_MESSAGE.validate_json(fields[b"m"]) for _, fields in entries]
