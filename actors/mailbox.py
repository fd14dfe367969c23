"""A conversation's durable mailbox: a Redis stream of accepted messages, in acceptance order.

Guarantees:

- **Accepted means durable.** The API answers 200/202 only after ``accept`` returned, i.e. after
  the entry is in Redis (append-only file on). If the owner dies before processing it, the next
  owner finds it there.
- **Order without locks.** Redis assigns entry ids in the order it executes the appends; the owner
  processes entries strictly in id order, one at a time.
- **Busy policy decided atomically.** ``accept`` with ``reject`` checks for unfinished entries and
  appends in one script, so two racing senders cannot both get in.
- **Idempotent.** A send carrying an idempotency key (the client's ``otid`` or an
  ``Idempotency-Key`` header) that was already accepted returns the earlier run, in the same
  atomic step, so a retried POST joins the existing turn instead of starting a second one.
- **Only unfinished entries stay.** An entry is deleted in the same fenced script that records its
  run's terminal status (see ``runtime.store.runs``), so the stream length is the queue depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from runtime.errors import (
    ConflictError,
    ConversationBusyError,
    InvalidRequestError,
    NotFoundError,
    PendingApprovalError,
)
from runtime.store import keyspace, replies
from runtime.store.fencing import Fence, call_fenced
from runtime.store.runs import START_RUN_LUA, now_ms

# Accepting a turn is one atomic step: idempotency check, approval check, busy check, run record,
# the run stream's first item and the mailbox entry are all written, or none is.
# KEYS: mailbox, run hash, run stream, idempotency key (a slot-mate placeholder when unused), lease,
#       pending approval, the conversation's record (it must exist: the API may know the
#       conversation from earlier, and a deleted one takes no turn).
# ARGV: on_busy, run id, turn payload, stream ttl_s, run ttl_s, first item payload,
#       use idempotency ('1'/'0'), kind ('m' messages, 'a' an approval), the approval request id
#       it answers ('' any), the tool call ids it decides on (comma-separated, '' none), whether
#       those must be all the pending calls ('1': no decision for the rest) or some ('0'), then
#       the run hash's field/value pairs.
# Returns {1, entry id, current owner or ''} accepted, {0, active run id} busy, {2, existing run id}
# duplicate, {3, request id} an approval is pending, {4, ''} no approval is pending,
# {5, run id} the approval was already answered, {6, request id} the answer names another request,
# {7, ''} the conversation does not exist, {8, pending call ids} the answer names other calls (or
# not all of them), {9, call id} the answer names a call twice (counted twice, it would pass for
# "all calls named" while another call got no decision).
_ACCEPT = """
if redis.call('EXISTS', KEYS[7]) == 0 then return {7, ''} end
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {2, existing} end
end
local pending = redis.call('HGET', KEYS[6], 'request')
local answered = redis.call('HGET', KEYS[6], 'answered')
if ARGV[8] == 'a' then
  if not pending then return {4, ''} end
  if answered then return {5, answered} end
  if ARGV[9] ~= '' and ARGV[9] ~= pending then return {6, pending} end
  local calls = redis.call('HGET', KEYS[6], 'calls') or ''
  if ARGV[10] ~= '' and calls ~= '' then
    local named, seen = 0, {}
    for id in string.gmatch(ARGV[10], '[^,]+') do
      if not string.find(',' .. calls .. ',', ',' .. id .. ',', 1, true) then return {8, calls} end
      if seen[id] then return {9, id} end
      seen[id] = true
      named = named + 1
    end
    local _, commas = string.gsub(calls, ',', '')
    if ARGV[11] == '1' and named ~= commas + 1 then return {8, calls} end
  end
elseif pending and not answered then
  return {3, pending}
end
if ARGV[1] == 'reject' then
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #head > 0 then
    local fields = head[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'r' then return {0, fields[i + 1]} end
    end
    return {0, ''}
  end
end
local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[2], 'p', ARGV[3])
local fields = {'mailbox_entry', id}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
if ARGV[8] == 'a' then redis.call('HSET', KEYS[6], 'answered', ARGV[2]) end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], '0-1', 'k', 'data', 'p', ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if ARGV[7] == '1' then redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[4]) end
return {1, id, redis.call('GET', KEYS[5]) or ''}
"""


# The owner takes the oldest entry and starts its run, in one step. KEYS: epoch, mailbox.
# ARGV: epoch, now_ms, owner, the conversation's run key prefix. Returns nil when the mailbox is
# empty, else {entry id, run id, payload, outcome of start_run, entries in the mailbox}.
_TAKE = START_RUN_LUA + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head == 0 then return false end
local id, fields = head[1][1], head[1][2]
local run_id, payload = '', ''
for i = 1, #fields, 2 do
  if fields[i] == 'r' then run_id = fields[i + 1] elseif fields[i] == 'p' then payload = fields[i + 1] end
end
return {id, run_id, payload, start_run(ARGV[4] .. run_id, ARGV[2], ARGV[3]), redis.call('XLEN', KEYS[2])}
"""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The run a send belongs to; ``entry_id`` is None when it joined an earlier run (same key)."""

    run_id: str
    entry_id: str | None
    owner: str | None = None  # the activation holding the conversation when it was accepted

    @property
    def duplicate(self) -> bool:
        return self.entry_id is None


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    entry_id: str
    run_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Taken:
    """The oldest entry, and what starting its run found (``RunStore.start``'s outcomes)."""

    entry: MailboxEntry
    status: str
    depth: int  # entries in the mailbox when it was taken, this one included


class Mailbox:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._accept = redis.register_script(_ACCEPT)
        self._take = redis.register_script(_TAKE)

    async def accept(
        self,
        conversation_id: str,
        run_id: str,
        payload: bytes,
        *,
        on_busy: str,
        run_fields: dict[str, str | int],
        first_item: bytes,
        stream_ttl_s: int,
        run_ttl_s: int,
        idempotency_key: str | None = None,
        answers_approval: str | None = None,
        answered_calls: tuple[str, ...] = (),
        answers_all_calls: bool = False,
    ) -> Accepted:
        """Create the run and append its turn. Raises ConversationBusyError for ``reject`` when the
        conversation has unfinished turns, NotFoundError when it does not exist (any more);
        returns the earlier run instead when ``idempotency_key`` was already used (a retried
        send). In all these cases nothing is written.

        While an approval is pending only its answer gets in (``answers_approval``: the request id
        it names, or "" for whichever is pending); other messages raise PendingApprovalError. An
        answer that names calls (``answered_calls``) must name pending calls only, each once, and all
        of them when it decides nothing for the rest (``answers_all_calls``): otherwise it raises
        InvalidRequestError naming the calls at fault, before any tool could run on it."""
        flat: list[str | int] = []
        for name, value in run_fields.items():
            flat.extend((name, value))
        idem_key = keyspace.idempotency(conversation_id, idempotency_key) if idempotency_key else keyspace.mailbox(conversation_id)
        code, value, *rest = await self._accept(
            keys=[
                keyspace.mailbox(conversation_id),
                keyspace.run(conversation_id, run_id),
                keyspace.run_stream(conversation_id, run_id),
                idem_key,
                keyspace.lease(conversation_id),
                keyspace.pending_approval(conversation_id),
                keyspace.conversation(conversation_id),
            ],
            args=[
                on_busy,
                run_id,
                payload,
                stream_ttl_s,
                run_ttl_s,
                first_item,
                "1" if idempotency_key else "0",
                "m" if answers_approval is None else "a",
                answers_approval or "",
                ",".join(answered_calls),
                "1" if answers_all_calls else "0",
                *flat,
            ],
        )
        text = value.decode() if isinstance(value, bytes) else str(value)
        if int(code) == 0:
            raise ConversationBusyError(conversation_id, text or None)
        if int(code) == 3:
            raise PendingApprovalError(conversation_id, text)
        if int(code) == 4:
            raise InvalidRequestError(
                "Cannot process approval response: No tool call is currently awaiting approval. "
                "Please send a regular message to interact with the agent."
            )
        if int(code) == 5:
            raise ConflictError(f"this approval request was already answered by run {text}")
        if int(code) == 6:
            raise InvalidRequestError(f"approval_request_id does not match the pending approval request {text}")
        if int(code) == 8:
            raise _calls_mismatch(text.split(","), answered_calls)
        if int(code) == 9:
            raise InvalidRequestError(f"each pending tool call takes exactly one decision; {text} is decided more than once")
        if int(code) == 7:
            raise NotFoundError(f"conversation {conversation_id} not found")
        if int(code) == 2:
            return Accepted(run_id=text, entry_id=None)
        owner = rest[0].decode() if rest and rest[0] else None
        return Accepted(run_id=run_id, entry_id=text, owner=owner)

    async def take(self, fence: Fence) -> Taken | None:
        """The oldest unfinished entry with its run started for ``fence``'s owner, in one step (one
        round trip where reading the head and then ``RunStore.start`` took two); None if the mailbox is empty.
        Raises FencedError for a stale owner. Idempotent (sent again after it ran, it finds the same
        entry, ``resumed``), so it is sent again while Redis is unreachable, for ``fence.patience_s``."""
        conv = fence.conversation_id
        reply = await call_fenced(
            self._take,
            fence=fence,
            keys=[keyspace.epoch(conv), keyspace.mailbox(conv)],
            args=[fence.epoch, now_ms(), fence.owner, keyspace.run_prefix(conv)],
            refused=f"take refused for a stale owner of {conv}",
        )
        if reply is None:
            return None
        entry_id, run_id, payload, status, depth = reply
        return Taken(MailboxEntry(entry_id.decode(), run_id.decode(), payload), status.decode(), int(depth))

    async def holds(self, conversation_id: str, entry_id: str) -> bool:
        """Whether entry ``entry_id`` is still in the mailbox (its run has not ended)."""
        return bool(await self._redis.xrange(keyspace.mailbox(conversation_id), min=entry_id, max=entry_id))

    async def depth(self, conversation_id: str) -> int:
        return int(await self._redis.xlen(keyspace.mailbox(conversation_id)))

    async def run_ids(self, conversation_id: str, *, before: str | None = None) -> list[str]:
        """Run ids of every unfinished entry (accepted before entry ``before``), oldest first."""
        entries = replies.entries(await self._redis.xrange(keyspace.mailbox(conversation_id), max=f"({before}" if before else "+"))
        return [fields[b"r"].decode() for _, fields in entries]


def _calls_mismatch(pending: list[str], answered_calls: tuple[str, ...]) -> InvalidRequestError:
    """Letta's message for an answer naming other calls than the pending ones, saying which."""
    stray = [c for c in answered_calls if c not in pending]
    missing = [c for c in pending if c not in answered_calls]
    detail = f"not pending: {stray}" if stray else f"no decision for: {missing}"
    return InvalidRequestError(
        f"Invalid tool call IDs. Expected '{', '.join(pending)}', but received '{', '.join(answered_calls)}' ({detail})."
    )
