"""Runs: one turn of a conversation, from acceptance to a terminal status.

A run is a Redis hash next to its conversation (same hash slot). Status only moves forward::

    created -> running -> completed | failed | cancelled
    created -> cancelled                      (cancelled while queued)

Every transition is a compare-and-set in one script, so a late writer can never move a run back
out of a terminal status. Transitions made by the conversation's owner are also fenced by its
epoch (see ``actors.directory``), and the terminal transition deletes the run's mailbox entry in
the same script: "finished" and "no longer queued" can never disagree.

The owner's writes are fenced and outlast a Redis outage: see ``runtime.store.fencing``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic_core import to_json
from redis.typing import EncodableT, FieldT

from runtime.errors import NotFoundError, UnavailableError
from runtime.schemas.auth import DEFAULT_TENANT
from runtime.schemas.runs import RunQuery, RunStatus, RunView
from runtime.store import keyspace, replies
from runtime.store.fencing import Fence, call_fenced, through_outage
from runtime.store.mux import send_together
from runtime.stream.items import last_seq
from runtime.stream.wire import Ending, Item, terminal

log = logging.getLogger(__name__)
T = TypeVar("T")

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

# Runs that never reach a terminal status (a bug) still expire eventually.
UNFINISHED_RUN_TTL_S = 7 * 24 * 3600
LIST_SCAN_MAX = 10_000  # live runs one listing reads at most
LIST_PRUNE_MAX = 10_000  # entries of expired runs one listing passes (and prunes) at most
LIST_WINDOW = 200  # index entries read per round trip when listing runs
INDEX_TRIM_EVERY = 64  # runs indexed by a process between two trims of the indexes it writes
PRUNE_GRACE_MS = 60_000  # an index entry without its run is pruned only once this old

# created -> running, for the owner ``owner`` (see ``RunStore.start`` for the outcomes). A Lua
# function, so that the mailbox's take (``actors.mailbox``) starts a run exactly as this does.
START_RUN_LUA = """
local function start_run(run, now_ms, owner)
  local status = redis.call('HGET', run, 'status')
  if status == 'running' and redis.call('HGET', run, 'owner') == owner then return 'resumed' end
  if status ~= 'created' then return status or '' end
  if redis.call('HGET', run, 'cancel_requested') then return 'cancel_requested' end
  redis.call('HSET', run, 'status', 'running', 'started_at_ms', now_ms, 'owner', owner)
  return 'started'
end
"""

# KEYS: epoch, run. ARGV: epoch, now_ms, owner.
_START = START_RUN_LUA + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
return start_run(KEYS[2], ARGV[2], ARGV[3])
"""

# The terminal transition: final stream items, terminal status and mailbox ack in one atomic step.
# KEYS: epoch, run, mailbox, stream, steps, the conversation's pending approval, its record.
# ARGV: epoch ('' = unfenced), expected status ('' = any unfinished), mailbox entry id, ttl_s, maxlen,
#       number of field/value arguments, pending approval ('-' leave, '' clear, else the request id),
#       run id, the field/value pairs, then (seq, kind, payload) triples.
# A run that answered the pending approval closes it however it ends ('-' included): it was the one
# answer taken, so leaving the approval answered-but-open would refuse every later answer and fail
# every later message (its calls get error results when the next request is built).
# A run ending after its conversation was deleted (its owner could not be reached by the delete's
# cancel) opens no approval: the conversation's other keys are gone and no answer can be accepted,
# so the hash would live for ever (and block the agent's own conversation, made again under the
# same id on its next message). The run itself still ends, and expires, as any run does.
_FINISH = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return '' end
local nfields = tonumber(ARGV[6])
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  -- Already ended. By this very call, sent again after its reply was lost, if the stream holds its
  -- last item as sent (a script runs whole): then it reports what it did the first time.
  if #ARGV >= 11 + nfields then
    local last = '0-' .. ARGV[#ARGV - 2]
    local held = redis.call('XRANGE', KEYS[4], last, last)
    if #held == 1 and held[1][2][4] == ARGV[#ARGV] then
      return 'ok ' .. (redis.call('HGET', KEYS[2], 'key_id') or '')
    end
  end
  return status
end
if ARGV[2] ~= '' and status ~= ARGV[2] then return status end
for i = 9 + nfields, #ARGV, 3 do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '0-' .. ARGV[i], 'k', ARGV[i + 1], 'p', ARGV[i + 2])
  redis.call('SPUBLISH', KEYS[4], ARGV[i] .. ' ' .. ARGV[i + 1] .. ' ' .. ARGV[i + 2])  -- to readers (runtime.stream.writer)
end
redis.call('EXPIRE', KEYS[4], ARGV[4])
local fields = {}
for i = 9, 8 + nfields do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
if ARGV[3] ~= '' then redis.call('XDEL', KEYS[3], ARGV[3]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[5], ARGV[4])
if ARGV[7] == '' or (ARGV[7] == '-' and redis.call('HGET', KEYS[6], 'answered') == ARGV[8]) then
  redis.call('DEL', KEYS[6])
elseif ARGV[7] ~= '-' then
  redis.call('DEL', KEYS[6])
  if redis.call('EXISTS', KEYS[7]) == 1 then
    local request, calls = string.match(ARGV[7], '^([^ ]*) ?(.*)$')
    redis.call('HSET', KEYS[6], 'request', request, 'calls', calls)
  end
end
return 'ok ' .. (redis.call('HGET', KEYS[2], 'key_id') or '')
"""

# KEYS: epoch, steps list. ARGV: epoch, ttl_s, step JSON. A trace already last in the list is this
# call sent again (traces carry their step's id and times): it is not added twice.
_ADD_STEP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
if redis.call('LINDEX', KEYS[2], -1) == ARGV[3] then return 'ok' end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 'ok'
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """The approval request a run ends waiting on, and the tool calls it asks about."""

    request_id: str
    call_ids: tuple[str, ...]

    def encode(self) -> str:
        return " ".join((self.request_id, ",".join(self.call_ids)))


class RunStore:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int, maxlen: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._maxlen = maxlen
        self._start = redis.register_script(_START)
        self._finish_script = redis.register_script(_FINISH)
        self._add_step = redis.register_script(_ADD_STEP)
        self._indexed = 0  # runs this store has indexed (``index`` trims every ``INDEX_TRIM_EVERY``)

    def initial_fields(self, view: RunView, *, key_id: str | None = None) -> dict[str, str | int]:
        """The run hash of a newly accepted run (written by the mailbox's accept step); ``key_id``:
        the API key whose concurrent-run slot the run holds."""
        doc = view.model_dump(
            mode="json",
            exclude={"status", "stop_reason", "completed_at", "metadata", "callback_sent_at", "callback_status_code", "callback_error"},
        )
        fields: dict[str, str | int] = {
            "doc": json.dumps(doc),
            "status": view.status,
            "created_at_ms": now_ms(),
            "metadata": json.dumps(view.metadata or {}),
            "tenant": view.tenant,
        }
        if key_id is not None:
            fields["key_id"] = key_id  # its concurrency slot is given back when the run ends
        return fields

    async def index(self, view: RunView) -> None:
        """Make a run findable by id and in listings. Done while it is being accepted; a run that
        is then refused or deduplicated is unindexed (``unindex``); one whose refusal could not be
        undone (a crash in between) leaves an index entry pointing at nothing, which readers skip."""
        at = now_ms()
        indexes = (keyspace.runs_index(view.tenant), keyspace.conversation_runs(view.conversation_id), keyspace.agent_runs(view.agent_id))
        # Every INDEX_TRIM_EVERY runs this process indexes, the entries of runs that can no longer
        # exist go too: an index that is never listed (a tenant's) stays about as large as what it
        # finds, at a fraction of a command per accept.
        self._indexed += 1
        expired = f"({at - UNFINISHED_RUN_TTL_S * 1000}"
        trims = [("ZREMRANGEBYSCORE", index, "-inf", expired) for index in indexes] if self._indexed % INDEX_TRIM_EVERY == 0 else []
        # Sent together, not as a pipeline: on one server they leave in one write on the shared
        # connection (runtime.store.mux), where a pipeline takes a pooled connection of its own.
        await send_together(
            self._redis,
            [
                ("SET", keyspace.run_ref(view.id), view.conversation_id, "EX", UNFINISHED_RUN_TTL_S),
                *(("ZADD", index, at, view.id) for index in indexes),
                *trims,
                # A conversation's last message is when its newest run was asked for (Letta's last_message_at).
                ("ZADD", keyspace.conversations_activity(view.tenant), at, view.conversation_id),
                ("ZADD", keyspace.agent_conversations_activity(view.agent_id), at, view.conversation_id),
            ],
        )

    async def unindex(self, view: RunView, *, conversation_gone: bool = False) -> None:
        """Undo ``index`` for a run that was then refused or found to be a retry of another;
        ``conversation_gone``: refused because its conversation no longer exists, which must not
        stay listed by its last message either."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keyspace.run_ref(view.id))
            pipe.zrem(keyspace.runs_index(view.tenant), view.id)
            pipe.zrem(keyspace.conversation_runs(view.conversation_id), view.id)
            pipe.zrem(keyspace.agent_runs(view.agent_id), view.id)
            if conversation_gone:
                pipe.zrem(keyspace.conversations_activity(view.tenant), view.conversation_id)
                pipe.zrem(keyspace.agent_conversations_activity(view.agent_id), view.conversation_id)
            await pipe.execute()

    async def latest(self, conversation_id: str) -> str | None:
        """The conversation's most recently accepted run."""
        ids = replies.members(await self._redis.zrevrange(keyspace.conversation_runs(conversation_id), 0, 0))
        return ids[0] if ids else None

    async def list(self, query: RunQuery, *, tenant: str) -> list[RunView]:
        """The tenant's runs matching ``query``, newest first unless ascending, from the narrowest
        index (conversation, agent, or the tenant's); ``after``/``before``: run ids, positions in the
        index (one not in it gives nothing), whether or not their runs have expired since.

        The work of one request is bounded. A listing starts right after ``after`` (found by its
        rank, not by reading what comes before it), reads at most ``LIST_SCAN_MAX`` live runs, and
        passes at most ``LIST_PRUNE_MAX`` entries whose run has expired, taking them out of the
        index as it goes (an index is also trimmed as runs are added: ``index``). An index that
        has gathered more expired entries than that (runs expire ``ttl_s`` after they end, their
        entries stay until met) is cleaned by the requests that meet them, that many each, not all
        by the first one:

        - a listing that found runs when it reached that bound returns them, a page shorter than
          ``limit``: its last run is the cursor to go on from (what it passed is gone from the
          index, so the next page starts at what it had not read). ``limit`` is honoured whenever
          the live runs come within the bound: only expired entries count towards it;
        - one that found none raises ``UnavailableError`` (a 503, which clients retry) rather than
          answer an empty page that would say no run is left: the same request, repeated, goes on
          past what was cleaned."""
        if query.conversation_id:
            index = keyspace.conversation_runs(query.conversation_id)
        elif query.agent_id:
            index = keyspace.agent_runs(query.agent_id)
        else:
            index = keyspace.runs_index(tenant)
        desc = not query.ascending
        rank = 0  # of the next entry to read, among those still in the index
        if query.after is not None:
            at = await self._rank(index, query.after, desc=desc)
            if at is None:
                return []
            rank = at + 1
        if query.before is not None:
            at = await self._rank(index, query.before, desc=desc)
            if at is None or at < rank:
                return []
        found: builtins.list[RunView] = []
        read = passed = 0
        while read < LIST_SCAN_MAX and passed < LIST_PRUNE_MAX:
            window = min(LIST_WINDOW, LIST_PRUNE_MAX - passed)  # never past the bound, were they all expired
            entries = replies.scored(await self._redis.zrange(index, rank, rank + window - 1, desc=desc, withscores=True))
            last = len(entries) < window
            ids = [run_id for run_id, _ in entries]
            if query.before in ids:
                entries, last = entries[: ids.index(query.before)], True
            live, pruned = await self._live(index, entries)
            rank += len(entries) - pruned  # what was pruned left the index: the ranks after it moved up
            read += len(live)
            passed += len(entries) - len(live)
            for _, raw in live:
                view = _view(raw)
                if view.tenant == tenant and query.matches(view):
                    found.append(view)
                    if len(found) >= query.limit:
                        return found
            if last:
                return found
        if not found and passed >= LIST_PRUNE_MAX:
            raise UnavailableError(
                f"this listing passed {passed} runs that have expired before it found any that matches, and stopped "
                f"there (at most {LIST_PRUNE_MAX} a request); they are gone from the index now: repeat the request to go on"
            )
        return found

    async def _rank(self, index: str, run_id: str, *, desc: bool) -> int | None:
        """Where ``run_id`` stands in ``index``, in the listing's order (None if it is not there)."""
        at = await (self._redis.zrevrank(index, run_id) if desc else self._redis.zrank(index, run_id))
        return at if isinstance(at, int) else None

    async def _live(
        self, index: str, entries: builtins.list[tuple[str, float]]
    ) -> tuple[builtins.list[tuple[str, dict[bytes | str, bytes | str]]], int]:
        """The runs of ``entries`` (id, indexed at ms) still readable, in order, with their records;
        and how many entries were taken out of ``index``: those whose run expired (no reference
        left) more than ``PRUNE_GRACE_MS`` after they were indexed (a run being accepted has its
        reference written alongside its index entries, which may land first on a cluster)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id, _ in entries:
                pipe.get(keyspace.run_ref(run_id))
            refs = await pipe.execute()
        named = [(r, replies.text(c)) for (r, _), c in zip(entries, refs, strict=True) if c is not None]
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id, conversation_id in named:
                pipe.hgetall(keyspace.run(conversation_id, run_id))
            records = await pipe.execute()
        live = [(r, raw) for (r, _), raw in zip(named, records, strict=True) if raw]
        settled = now_ms() - PRUNE_GRACE_MS
        gone = [r for (r, at), ref in zip(entries, refs, strict=True) if ref is None and at < settled]
        if gone:
            await self._redis.zrem(index, *gone)
        return live, len(gone)

    async def note_callback(
        self, conversation_id: str, run_id: str, *, sent_at_ms: int, status_code: int | None, error: str | None
    ) -> None:
        """Record how a run's callback went (an ended run's record: nothing else writes it then)."""
        fields: dict[FieldT, EncodableT] = {"callback_sent_at_ms": sent_at_ms}
        if status_code is not None:
            fields["callback_status_code"] = status_code
        if error is not None:
            fields["callback_error"] = error[:1000]
        key = keyspace.run(conversation_id, run_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(key)
            pipe.hset(key, mapping=fields)
            exists, _ = await pipe.execute()
        if not exists:  # expired meanwhile: do not leave a record with no expiry
            await self._redis.delete(key)

    async def conversation_of(self, run_id: str) -> str:
        conv = await self._redis.get(keyspace.run_ref(run_id))
        if conv is None:
            raise NotFoundError(f"run {run_id} not found")
        return replies.text(conv)

    async def get(self, run_id: str, conversation_id: str | None = None, *, tenant: str | None) -> RunView:
        """The run; 404 if it is unknown or belongs to another tenant (``tenant=None``: any tenant,
        for Convoy's own processes)."""
        conversation_id = conversation_id or await self.conversation_of(run_id)
        raw = await self._redis.hgetall(keyspace.run(conversation_id, run_id))
        if not raw:
            raise NotFoundError(f"run {run_id} not found")
        view = _view(raw)
        if tenant is not None and view.tenant != tenant:
            raise NotFoundError(f"run {run_id} not found")
        return view

    async def raw(self, conversation_id: str, run_id: str) -> dict[str, str]:
        return replies.fields(await self._redis.hgetall(keyspace.run(conversation_id, run_id)))

    async def start(self, fence: Fence, run_id: str) -> str:
        """created -> running. Returns ``"started"`` if this call started it (its stream then holds
        only the accept-time ping, seq 1), ``"resumed"`` if this same owner had started it already,
        ``"cancel_requested"``
        if a cancel arrived first (the run stays ``created``; the caller ends it as cancelled), else
        the status it already had (``running`` means a previous owner started it and never finished)."""
        return await self._fenced(
            self._start,
            fence,
            keys=[keyspace.epoch(fence.conversation_id), keyspace.run(fence.conversation_id, run_id)],
            args=[fence.epoch, now_ms(), fence.owner],
        )

    async def end(
        self,
        run_id: str,
        *,
        conversation_id: str,
        ending: Ending,
        fence: Fence | None,
        next_seq: int | None = None,
        mailbox_entry: str = "",
        expect: RunStatus | None = None,
        extra: dict[str, Any] | None = None,
        pending_approval: PendingApproval | str | None = None,
    ) -> bool:
        """End a run, the one way every run ends (its owner's success, failure or cancel; a queued
        run cancelled; a run no owner will finish): its terminal items (``runtime.stream.wire``), its
        terminal status, the removal of its mailbox entry and the bookkeeping of the conversation's
        pending approval, in one atomic step; then its run reference's lifetime and its key's slot.

        ``fence``: the owner's (None for a run no owner holds: then ``expect`` names the status it
        must still be in). ``next_seq``: the seq of the first terminal item, when the caller's writer
        knows it; else it follows the last item stored. False if the run was already terminal,
        unknown, or not in status ``expect``. ``pending_approval``: None leaves the conversation's
        pending approval alone (unless this run was its answer: then it is closed), "" clears it,
        a ``PendingApproval`` opens it (clients may then answer that approval request) if the
        conversation still exists (a deleted one takes no answer: nothing is opened)."""
        if next_seq is None:
            stream = keyspace.run_stream(conversation_id, run_id)
            patience_s = fence.patience_s if fence else 0.0
            next_seq = await through_outage(lambda: last_seq(self._redis, stream), patience_s=patience_s, what="where a stream ends") + 1
        done = terminal(run_id, next_seq, ending)
        return await self._finish(
            run_id,
            conversation_id=conversation_id,
            status=done.status,
            stop_reason=done.stop_reason,
            fence=fence,
            items=done.items,
            mailbox_entry=mailbox_entry,
            expect=expect,
            error=done.error,
            extra=extra,
            pending_approval=pending_approval,
        )

    async def _finish(
        self,
        run_id: str,
        *,
        conversation_id: str,
        status: RunStatus,
        stop_reason: str,
        fence: Fence | None,
        items: builtins.list[Item],
        mailbox_entry: str,
        expect: RunStatus | None,
        error: dict[str, Any] | None,
        extra: dict[str, Any] | None,
        pending_approval: PendingApproval | str | None,
    ) -> bool:
        assert status in TERMINAL
        fields: dict[str, Any] = {"status": status, "stop_reason": stop_reason, "completed_at_ms": now_ms()}
        if error is not None:
            fields["error"] = json.dumps(error)
        fields.update(extra or {})
        flat: list[Any] = []
        for name, value in fields.items():
            flat.extend((name, value))
        if pending_approval is None:
            pending = "-"
        else:
            pending = pending_approval.encode() if isinstance(pending_approval, PendingApproval) else pending_approval
        args: list[Any] = [
            fence.epoch if fence else "", expect or "", mailbox_entry, self._ttl_s, self._maxlen, len(flat), pending, run_id, *flat
        ]
        for seq, kind, payload in items:
            args.extend((seq, kind, payload))
        patience_s = fence.patience_s if fence else 0.0
        # The run's id -> conversation reference gets the ended run's lifetime in the same write as
        # the end itself (one event-loop turn: the auto-pipelined client sends both at once), not in
        # a round trip after it: a process that died in between left it for a week. (Harmless if the
        # end is refused: an ended run's reference has that lifetime already, and the owner that
        # took a run over sets it again when it ends the run.)
        reply, _ = await asyncio.gather(
            self._fenced(
                self._finish_script,
                fence,
                keys=[
                    keyspace.epoch(conversation_id),
                    keyspace.run(conversation_id, run_id),
                    keyspace.mailbox(conversation_id),
                    keyspace.run_stream(conversation_id, run_id),
                    keyspace.run_steps(conversation_id, run_id),
                    keyspace.pending_approval(conversation_id),
                    keyspace.conversation(conversation_id),
                ],
                args=args,
            ),
            through_outage(
                lambda: self._redis.expire(keyspace.run_ref(run_id), self._ttl_s), patience_s=patience_s, what="a run's reference"
            ),
        )
        if not reply.startswith("ok "):
            return False
        if key_id := reply[3:]:
            await through_outage(  # its concurrency slot (runtime.store.api_keys; it expires on its own if this never runs)
                lambda: self._redis.zrem(keyspace.api_key_runs(key_id), run_id), patience_s=patience_s, what="a run's slot"
            )
        return True

    async def add_step(self, fence: Fence, run_id: str, step: dict[str, Any]) -> None:
        """Record one step's trace (owner only). It expires with the run (``finish`` sets the TTL)."""
        await self._fenced(
            self._add_step,
            fence,
            keys=[keyspace.epoch(fence.conversation_id), keyspace.run_steps(fence.conversation_id, run_id)],
            args=[fence.epoch, UNFINISHED_RUN_TTL_S, to_json(step, fallback=str)],  # pydantic-core's: ~5x json's speed
        )

    async def steps(self, conversation_id: str, run_id: str) -> builtins.list[dict[str, Any]]:
        """A run's step traces, oldest first."""
        raw = await self._redis.lrange(keyspace.run_steps(conversation_id, run_id), 0, -1)
        return [json.loads(r) for r in raw]

    async def request_cancel(self, conversation_id: str, run_id: str) -> None:
        """Mark a run as to be cancelled; an owner about to start it will not (see ``start``)."""
        await self._redis.hset(keyspace.run(conversation_id, run_id), "cancel_requested", now_ms())

    async def _fenced(self, script: Any, fence: Fence | None, *, keys: builtins.list[str], args: builtins.list[Any]) -> str:
        reply = await call_fenced(
            script, fence=fence, keys=keys, args=args, refused=f"write refused for a stale owner ({keys[1]})"
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)


def _view(raw: dict[bytes | str, bytes | str]) -> RunView:
    fields = replies.fields(raw)
    doc = json.loads(fields["doc"])
    doc["status"] = fields["status"]
    doc["stop_reason"] = fields.get("stop_reason") or None
    metadata = json.loads(fields.get("metadata") or "{}")
    if "error" in fields:
        metadata["error"] = json.loads(fields["error"])
    if fields.get("finish_reason"):
        metadata["finish_reason"] = fields["finish_reason"]
    doc["metadata"] = metadata
    if fields.get("completed_at_ms"):
        doc["completed_at"] = int(fields["completed_at_ms"]) / 1000
    if fields.get("started_at_ms"):
        doc["started_at"] = int(fields["started_at_ms"]) / 1000
    doc["owner"] = fields.get("owner") or None
    doc["tenant"] = fields.get("tenant") or DEFAULT_TENANT
    for name in ("ttft_ns", "total_duration_ns", "callback_status_code"):
        if fields.get(name):
            doc[name] = int(fields[name])
    if fields.get("callback_sent_at_ms"):
        doc["callback_sent_at"] = int(fields["callback_sent_at_ms"]) / 1000
    if fields.get("callback_error"):
        doc["callback_error"] = fields["callback_error"]
    return RunView.model_validate(doc)
