"""A conversation's persisted messages: a Redis stream of Letta messages in order.

Appends come from the conversation's owner and are fenced by its epoch, so a stale owner cannot
add to the history after a takeover. The agent loop appends a turn step by step, each step's
messages in one script call, so a crash never leaves half a step. An append is idempotent: one
whose first message is already indexed had run (a script runs whole) and is skipped, so the owner
sends it again while Redis is unreachable (``runtime.store.fencing.through_outage``) without ever doubling
a message.

The parts of one model response (reasoning, text, tool calls) are separate entries sharing one
message id, as Letta's listings show them. The index keeps each id's first and last entry, so a
cursor skips every part of its message: ``after`` starts past the last, ``before`` stops short
of the first.

Each stored message also gets a reference to its conversation (``GET /v1/messages/{id}`` finds it
by id alone), written alongside the append (the same round trip). A reference whose append was
refused (a stale owner) points at a history without the message and is read as missing; an owner
that dies between the two writes can leave a message that is listed but not found by id alone.
A fork's copies keep their ids and their reference to the conversation they were first stored in;
the fork is added to each one's set of copies, where a message is looked for once its first
conversation no longer holds it (deleted). ``forget`` removes a conversation's references with it,
only those that name it, and takes it out of the sets of copies: deleting a fork leaves its
source's messages found by id, and deleting a source its forks'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import redis.asyncio as aioredis
from pydantic import TypeAdapter

from runtime.errors import NotFoundError
from runtime.schemas.messages import HistoryMessage
from runtime.store import keyspace, replies
from runtime.store.fencing import Fence, call_fenced, through_outage
from runtime.store.mux import send_together

# KEYS: epoch, history stream, message id -> entry ids index. ARGV: epoch, then (message id, json)
# pairs. Returns how many messages were appended: 0 when this append had run already (sent again).
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
for i = 2, #ARGV, 2 do
  local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[i + 1])
  local known = redis.call('HGET', KEYS[3], ARGV[i])
  local first = known and string.match(known, '^(%S+)') or id
  redis.call('HSET', KEYS[3], ARGV[i], first .. ' ' .. id)
end
return (#ARGV - 1) / 2
"""

# KEYS: a message's reference. ARGV: a conversation id. Deletes the reference if it names that one.
_FORGET_REF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: epoch, history stream, index. ARGV: (message id, json) pairs. A history is seeded only
# while nobody has ever owned its conversation (no epoch) and it is empty; 0 when refused.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[i + 1])
  local known = redis.call('HGET', KEYS[3], ARGV[i])
  local first = known and string.match(known, '^(%S+)') or id
  redis.call('HSET', KEYS[3], ARGV[i], first .. ' ' .. id)
end
return 1
"""

_MESSAGE: TypeAdapter[HistoryMessage] = TypeAdapter(HistoryMessage)
MAX_PAGE = 1000
FORGET_BATCH = 500
RUN_SCAN_BATCH = 200
CLOCK_SKEW_MS = 60_000  # how far an API replica's clock may run ahead of Redis's, for a run's messages
Order = Literal["asc", "desc"]


class HistoryStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._append = redis.register_script(_APPEND)
        self._seed = redis.register_script(_SEED)
        self._forget_ref = redis.register_script(_FORGET_REF)

    async def append(self, fence: Fence, messages: Sequence[HistoryMessage]) -> None:
        if not messages:
            return
        conversation_id = fence.conversation_id
        args: list[object] = [fence.epoch]
        for message in messages:
            args.extend((message.id, message.model_dump_json(exclude={"seq_id"})))

        async def refer() -> None:  # one write on the shared connection (see RunStore.index)
            await send_together(self._redis, [("SET", keyspace.message_ref(i), conversation_id) for i in dict.fromkeys(m.id for m in messages)])

        # Side by side, not one after the other: a turn's input is written while its first request
        # is being made, and a second round trip would make it land later.
        await asyncio.gather(
            through_outage(refer, patience_s=fence.patience_s, what="a history's message references"),
            call_fenced(
                self._append,
                fence=fence,
                keys=[keyspace.epoch(conversation_id), keyspace.history(conversation_id), keyspace.history_index(conversation_id)],
                args=args,
                refused="history append refused for a stale owner",
            ),
        )

    async def seed(self, conversation_id: str, messages: Sequence[HistoryMessage]) -> None:
        """Start a new conversation's history with ``messages`` (a fork's), before anyone owns it;
        ``ValueError`` if it has a history or an owner already. The messages keep their ids (their
        references still name the conversation they were first written to)."""
        if not messages:
            return
        args: list[str] = []
        for message in messages:
            args.extend((message.id, message.model_dump_json(exclude={"seq_id"})))
        keys = [keyspace.epoch(conversation_id), keyspace.history(conversation_id), keyspace.history_index(conversation_id)]
        if not await self._seed(keys=keys, args=args):
            raise ValueError(f"conversation {conversation_id} has a history already")
        copied = dict.fromkeys(m.id for m in messages)
        await send_together(self._redis, [("SADD", keyspace.message_copies(i), conversation_id) for i in copied])

    async def window(self, conversation_id: str, *, limit: int, through: str | None = None) -> list[HistoryMessage]:
        """The last ``limit`` messages up to and including every part of ``through`` (a message id;
        ``NotFoundError`` if it is not one of the conversation's), oldest first."""
        newest = "+" if through is None else (await self._span(conversation_id, through))[1]
        entries = replies.entries(await self._redis.xrevrange(keyspace.history(conversation_id), max=newest, count=limit))
        return [_MESSAGE.validate_json(fields[b"m"]) for _, fields in reversed(entries)]

    async def of_run(self, conversation_id: str, run_id: str, *, since_ms: int) -> list[HistoryMessage]:
        """The messages a run wrote (its input among them), oldest first. A conversation runs its
        turns one at a time, so they are together, after the run was accepted (``since_ms``, the
        accepting replica's clock; the entries' ids are Redis's, so the scan starts
        ``CLOCK_SKEW_MS`` earlier) and stops at the first message of another run after them."""
        key = keyspace.history(conversation_id)
        found: list[HistoryMessage] = []
        low = f"{max(0, since_ms - CLOCK_SKEW_MS)}-0"
        while True:
            entries = replies.entries(await self._redis.xrange(key, min=low, count=RUN_SCAN_BATCH))
            for _, fields in entries:
                message = _MESSAGE.validate_json(fields[b"m"])
                if message.run_id == run_id:
                    found.append(message)
                elif found:
                    return found
            if len(entries) < RUN_SCAN_BATCH:
                return found
            low = "(" + entries[-1][0].decode()

    async def recent_ids(self, conversation_id: str, *, limit: int) -> list[str]:
        """The ids of the last ``limit`` messages, oldest first, each once."""
        return list(dict.fromkeys(m.id for m in await self.recent(conversation_id, limit=limit)))

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
        order: Order = "asc",
        unknown_cursors: Literal["refuse", "ignore"] = "refuse",
    ) -> list[HistoryMessage]:
        """Up to ``limit`` stored messages strictly after ``after`` and before ``before`` (message
        ids; every part of a cursor's message is excluded), oldest first (``asc``) or newest first
        (``desc``). A cursor that is not a message of this conversation is a ``NotFoundError``, or
        no bound at all with ``unknown_cursors="ignore"``.

        A page never ends inside a message: when ``limit`` falls among the parts of one model
        response, the page carries its other parts too (as Letta's ``limit`` counts messages, not
        their parts), so the next page, whose cursor skips every part of that message, loses none."""
        limit = max(1, min(limit, MAX_PAGE))
        lo, hi = "-", "+"
        for cursor, is_after in ((after, True), (before, False)):
            if cursor is None:
                continue
            try:
                first, last = await self._span(conversation_id, cursor)
            except NotFoundError:
                if unknown_cursors == "refuse":
                    raise
                continue
            if is_after:
                lo = "(" + last
            else:
                hi = "(" + first
        key = keyspace.history(conversation_id)
        if order == "desc":
            entries = replies.entries(await self._redis.xrevrange(key, max=hi, min=lo, count=limit))
        else:
            entries = replies.entries(await self._redis.xrange(key, min=lo, max=hi, count=limit))
        page = [_MESSAGE.validate_json(fields[b"m"]) for _, fields in entries]
        if len(page) == limit:
            page += await self._rest_of(conversation_id, page[-1].id, entries[-1][0].decode(), order)
        return page

    async def holds(self, conversation_id: str, message_id: str) -> bool:
        """Whether ``message_id`` is one of the conversation's own stored messages (a fork's copies
        are; their references still name the conversation they were first written to)."""
        return bool(await self._redis.hexists(keyspace.history_index(conversation_id), message_id))

    async def _rest_of(self, conversation_id: str, message_id: str, entry_id: str, order: Order) -> list[HistoryMessage]:
        """The parts of ``message_id`` past its entry ``entry_id`` in reading order (``order``)."""
        try:
            first, last = await self._span(conversation_id, message_id)
        except NotFoundError:
            return []
        key = keyspace.history(conversation_id)
        if order == "asc" and last != entry_id:
            entries = replies.entries(await self._redis.xrange(key, min="(" + entry_id, max=last))
        elif order == "desc" and first != entry_id:
            entries = replies.entries(await self._redis.xrevrange(key, max="(" + entry_id, min=first))
        else:
            return []
        return [m for m in (_MESSAGE.validate_json(fields[b"m"]) for _, fields in entries) if m.id == message_id]

    async def message(self, message_id: str) -> tuple[str, list[HistoryMessage]] | None:
        """The conversation a stored message belongs to (the one it was first stored in, else a
        fork holding a copy) and the message's parts, in order; None if no history holds it."""
        first = await self._redis.get(keyspace.message_ref(message_id))
        if first is not None:
            found = await self._parts_in(replies.text(first), message_id)
            if found is not None:
                return found
        for conversation_id in sorted(replies.text(c) for c in await self._redis.smembers(keyspace.message_copies(message_id))):
            found = await self._parts_in(conversation_id, message_id)
            if found is not None:
                return found
        return None

    async def _parts_in(self, conversation_id: str, message_id: str) -> tuple[str, list[HistoryMessage]] | None:
        try:
            return conversation_id, await self.parts(conversation_id, message_id)
        except NotFoundError:
            return None

    async def parts(self, conversation_id: str, message_id: str) -> list[HistoryMessage]:
        """The parts of one of the conversation's messages, in order; ``NotFoundError`` if it has none."""
        first, last = await self._span(conversation_id, message_id)
        entries = replies.entries(await self._redis.xrange(keyspace.history(conversation_id), min=first, max=last))
        return [m for m in (_MESSAGE.validate_json(fields[b"m"]) for _, fields in entries) if m.id == message_id]

    async def forget(self, conversation_id: str) -> None:
        """Remove what finds a conversation's messages by id (before the conversation is deleted):
        the references that name it, and its place among their copies (module docstring)."""
        index = keyspace.history_index(conversation_id)
        cursor = 0
        while True:
            cursor, found = await self._redis.hscan(index, cursor, count=FORGET_BATCH)
            ids = [replies.text(i) for i in found]
            if ids:
                await asyncio.gather(
                    *(self._forget_ref(keys=[keyspace.message_ref(i)], args=[conversation_id]) for i in ids),
                    send_together(self._redis, [("SREM", keyspace.message_copies(i), conversation_id) for i in ids]),
                )
            if cursor == 0:
                return

    async def _span(self, conversation_id: str, message_id: str) -> tuple[str, str]:
        """The first and last history entry of a message's parts."""
        raw = await self._redis.hget(keyspace.history_index(conversation_id), message_id)
        if raw is None:
            raise NotFoundError(f"message {message_id} not found in conversation {conversation_id}")
        ids = replies.text(raw).split()
        return ids[0], ids[-1]
