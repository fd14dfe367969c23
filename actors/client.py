"""The one door into conversations: everything another process asks of them, in plain Python.

An API replica (or a benchmark) never runs a turn, never ends a run and never calls Ray itself: it
builds the turn from its request and hands it here. ``ConversationClient``:

- **accepts** a turn: the run is indexed and the turn appended to the conversation's mailbox in one
  atomic step (idempotency, busy policy, pending approval: ``actors.mailbox``), then the owner is
  woken through a host's doorbell: its owner's host when the conversation is active, else the
  host that is to activate it (``actors.router``: a Ray call only when no host is known alive). Once accepted, a turn is durable: a failure to wake anyone is
  logged, never returned (a client would send again and run it twice), and a reader that hears
  nothing wakes the conversation itself (``nudge``).
- **cancels** out of band: a queued run is ended here (``RunStore.end``, the one terminal write); a
  running one at its owner, by a direct call that cancels the turn's task. Either way the run is
  first marked ``cancel_requested``, so an owner about to start it ends it as cancelled instead.
  ``interrupt`` cancels everything accepted before the new turn.
- **deletes** a conversation, or an agent with all of its conversations: their unfinished runs
  cancelled first, then their histories and records removed (``runtime.store.agents``).
- **nudges** a silent run for a reader: a run that left the mailbox without ending is ended as
  ``owner_lost``; a run nobody owns gets its conversation woken up.

Ray's errors stop here: what leaves is ``runtime.errors`` (``UnavailableError`` when no host could
be reached).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeGuard

import redis.asyncio as aioredis
from ray.exceptions import RayError
from redis.exceptions import RedisError

from actors.directory import Directory
from actors.mailbox import Mailbox
from actors.router import ConversationRouter
from runtime.agent.context import HISTORY_WINDOW
from runtime.errors import ConflictError, InvalidRequestError, NotFoundError, OwnerLostError, UnavailableError
from runtime.metrics import QUIET, Recorder
from runtime.schemas.agents import AgentRecord, ConversationRecord, ConversationRef
from runtime.schemas.messages import ApprovalRequestMessage, HistoryMessage, Ping
from runtime.schemas.model_settings import ModelSettings
from runtime.schemas.requests import ApprovalCreate, OnBusy
from runtime.schemas.runs import RunView
from runtime.schemas.turns import TurnRequest
from runtime.settings import Settings
from runtime.store import keyspace, replies
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.fencing import through_outage
from runtime.store.history import HistoryStore
from runtime.store.runs import TERMINAL, UNFINISHED_RUN_TTL_S, RunStore
from runtime.stream import wire
from runtime.stream.items import last_seq
from runtime.stream.tailer import TailerPool

log = logging.getLogger(__name__)

WAIT_TERMINAL_S = 10.0


# What the mailbox's accept answers when it wrote nothing (busy and approval conflicts are
# ConflictErrors); anything else (Redis unreachable, a reply lost) may have landed.
REFUSALS = (ConflictError, InvalidRequestError, NotFoundError)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The run a send belongs to; ``duplicate`` when it joined an earlier run (same idempotency key)."""

    run: RunView
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What a conversation's cancel did: each unfinished run's status after it, and whether it closed
    an approval request that was waiting for an answer."""

    runs: dict[str, str]
    approval_closed: bool

    @property
    def anything(self) -> bool:
        return bool(self.runs) or self.approval_closed


class Nudge(enum.Enum):
    """What a nudge found about a silent run (``ConversationClient.nudge``)."""

    ENDED = "ended"  # terminal: its last items are in its stream
    OWNED = "owned"  # someone owns its conversation and will run or end it
    ORPHAN_ENDED = "orphan_ended"  # it had left the mailbox without ending: ended here, owner_lost
    WOKEN = "woken"  # nobody owned it: a host was asked to take its conversation
    NO_HOST = "no_host"  # nobody owns it and no host could be reached


def idempotency_key(header: str | None, otid: str | None) -> str | None:
    """What makes a retried send recognisable: the client's ``Idempotency-Key`` header, else the
    ``otid`` of its first input message (Letta SDKs reuse otids when they retry)."""
    if header:
        return f"key:{header}"
    return f"otid:{otid}" if otid else None


class ConversationClient:
    def __init__(
        self, settings: Settings, redis: aioredis.Redis, runs: RunStore, tailers: TailerPool, metrics: Recorder = QUIET
    ) -> None:
        """``metrics`` counts the runs this door ends itself (cancelled while queued, orphans); their
        owners count the rest."""
        self._settings = settings
        self._metrics = metrics
        self._redis = redis
        self._runs = runs
        self._history = HistoryStore(redis)
        self._agents = AgentStore(redis)
        self._conversations = ConversationStore(redis)
        self._tailers = tailers
        self._mailbox = Mailbox(redis)
        self._directory = Directory(redis, lease_ttl_ms=settings.lease_ttl_ms)
        self._router = ConversationRouter(settings, self._directory, redis)

    # -- accepting ------------------------------------------------------------------------------

    async def accept(
        self,
        conversation: ConversationRef,
        turn: TurnRequest,
        run: RunView,
        *,
        on_busy: OnBusy,
        idempotency: str | None,
        approval: ApprovalCreate | None,
        key_id: str | None,
    ) -> Accepted:
        """Accept ``turn`` (its run described by ``run``) into the conversation's mailbox and wake its
        owner. ``idempotency``: ``idempotency_key(...)``; ``approval``: the answer to the pending
        approval the turn starts with, if any (checked against it here); ``key_id``: the API
        key whose concurrent-run slot the run holds. Refusals (busy, approval pending, unknown
        conversation) raise the mailbox's errors and leave no trace.

        Redis failing mid-way is told apart from a refusal: an accept whose reply was lost may have
        landed, so its run stays indexed (a retry with the same key joins it and finds it); an
        accept that landed while its indexing failed is indexed again before its owner is woken.
        A retry that joins its run wakes the owner too, in case the send it repeats never did."""
        first = wire.encode(Ping(id=f"ping-{turn.run_id[4:]}", run_id=turn.run_id, seq_id=1))
        # Indexing and accepting go out together; both are done before the client hears anything.
        # A run refused, or found to retry an earlier one, is unindexed again.
        indexing = asyncio.ensure_future(self._runs.index(run))
        accepting = asyncio.ensure_future(
            self._mailbox.accept(
                conversation.id,
                turn.run_id,
                turn.model_dump_json().encode(),
                on_busy="reject" if on_busy == "reject" else "queue",
                run_fields=self._runs.initial_fields(run, key_id=key_id),
                first_item=first,
                stream_ttl_s=self._settings.stream_ttl_s,
                run_ttl_s=UNFINISHED_RUN_TTL_S,
                idempotency_key=idempotency,
                answers_approval=None if approval is None else (approval.approval_request_id or ""),
                answered_calls=tuple(a.tool_call_id for a in approval.approvals or ()) if approval else (),
                answers_all_calls=approval is not None and approval.approve is None,
            )
        )
        try:
            await asyncio.gather(indexing, accepting)
        except BaseException:
            await asyncio.gather(indexing, accepting, return_exceptions=True)
            if not accepting.done() or accepting.cancelled() or accepting.exception() is not None:
                refusal = accepting.exception() if accepting.done() and not accepting.cancelled() else None
                if isinstance(refusal, REFUSALS):  # refused: nothing was accepted, leave no trace
                    await self._runs.unindex(run, conversation_gone=isinstance(refusal, NotFoundError))
                raise
            # Accepted, but its indexing failed: the run must be findable before anyone hears of it.
            await through_outage(lambda: self._runs.index(run), patience_s=self._settings.store_outage_s, what="indexing a run")
        accepted = accepting.result()
        if accepted.duplicate:
            await self._runs.unindex(run)
            joined = await self._runs.get(accepted.run_id, conversation.id, tenant=None)
            await self._wake(conversation.id, accepted.owner, accepted.run_id)
            return Accepted(joined, duplicate=True)
        if on_busy == "interrupt":
            assert accepted.entry_id is not None
            try:
                await self._cancel_ahead_of(conversation.id, accepted.entry_id)
            except (UnavailableError, RedisError, RayError) as exc:
                log.warning("accepted a turn but could not interrupt the runs ahead", extra={"run_id": turn.run_id, "error": repr(exc)})
        await self._wake(conversation.id, accepted.owner, turn.run_id)
        return Accepted(run, duplicate=False)

    async def _wake(self, conversation_id: str, owner: str | None, run_id: str) -> None:
        """Ring the conversation's owner, or wake one; a failure is logged (the owner's own sweeps
        find the turn later), never raised: the turn is accepted either way."""
        try:
            if owner:
                await self._router.ring(owner, conversation_id)
            else:
                await self._router.wake(conversation_id)
        except (UnavailableError, RedisError, RayError) as exc:
            log.warning("accepted a turn but could not wake its owner", extra={"run_id": run_id, "error": repr(exc)})

    async def run_of_otid(self, conversation_id: str, otid: str) -> str | None:
        """The run a send with this ``otid`` started in the conversation, if any (still known)."""
        found = await self._redis.get(keyspace.idempotency(conversation_id, idempotency_key(None, otid) or ""))
        return replies.text(found) if found else None

    # -- cancelling -----------------------------------------------------------------------------

    async def cancel_run(self, conversation_id: str, run_id: str) -> str:
        """Cancel one run; its status afterwards (``cancelled``, another terminal status if it ended
        first, or ``running`` if its owner could not be reached yet; "" for an unknown run)."""
        raw = await self._runs.raw(conversation_id, run_id)
        status = raw.get("status", "")
        if status in TERMINAL or not status:
            return status
        await self._runs.request_cancel(conversation_id, run_id)
        if status == "created":
            ended = await self._runs.end(
                run_id,
                conversation_id=conversation_id,
                ending=wire.Cancelled(),
                fence=None,
                expect="created",
                mailbox_entry=raw.get("mailbox_entry", ""),
            )
            if ended:
                self._metrics.run_ended("cancelled", "cancelled")
                return "cancelled"
        try:
            await self._router.cancel(conversation_id, run_id, raw.get("owner") or None)
        except RayError as exc:
            log.warning("cancel: the owner could not be asked", extra={"run_id": run_id, "error": repr(exc)})
        return await self.wait_terminal(conversation_id, run_id)

    async def cancel_abandoned(self, conversation_id: str, run_id: str) -> str:
        """``cancel_run`` for a foreground client that left, done again while Redis is unreachable
        (every step of it can be done twice) for up to ``CONVOY_STORE_OUTAGE_S``: a client that
        leaves during an outage must not leave its run to complete."""
        return await through_outage(
            lambda: self.cancel_run(conversation_id, run_id),
            patience_s=self._settings.store_outage_s,
            what="cancelling the run of a client that left",
        )

    async def cancel_conversation(self, conversation_id: str) -> Cancelled:
        """Cancel every unfinished run of a conversation (running and queued), then close an approval
        request still waiting (its calls get error results in the next request), so the conversation
        is never stuck."""
        run_ids = await self._mailbox.run_ids(conversation_id)
        statuses = await asyncio.gather(*(self.cancel_run(conversation_id, r) for r in run_ids))
        closed = await self._redis.delete(keyspace.pending_approval(conversation_id))
        return Cancelled(dict(zip(run_ids, statuses, strict=True)), approval_closed=bool(closed))

    async def cancel_agent(self, agent_id: str) -> Cancelled:
        """``cancel_conversation`` for every conversation of the agent, at once; what they did, together."""
        conversation_ids = await self._conversations.ids_of(agent_id)
        cancelled = await asyncio.gather(*(self.cancel_conversation(c) for c in conversation_ids))
        runs = {run_id: status for c in cancelled for run_id, status in c.runs.items()}
        return Cancelled(runs, approval_closed=any(c.approval_closed for c in cancelled))

    # -- deleting -------------------------------------------------------------------------------

    async def delete_conversation(self, conversation: ConversationRecord) -> Cancelled:
        """Close it to new turns, cancel its unfinished runs, then remove it, its history and its
        index entries (404 if it is gone already); its runs stay readable until they expire.
        Closed first: a turn accepted after the cancel looked would be left in a mailbox about to
        be removed, its run ``created`` for good (and its API key's run slot held)."""
        await self._conversations.close(conversation.id)
        cancelled = await self.cancel_conversation(conversation.id)
        await self._history.forget(conversation.id)
        await self._conversations.remove(conversation, epoch_ttl_s=self._settings.stream_ttl_s)
        return cancelled

    async def delete_agent(self, agent_id: str) -> Cancelled:
        """Close its conversations to new turns, cancel their unfinished runs, then remove the
        agent, its conversations and their histories (``AgentStore.delete``); its runs stay
        readable until they expire."""
        for conversation_id in await self._conversations.ids_of(agent_id):
            with contextlib.suppress(NotFoundError):  # deleted meanwhile
                await self._conversations.close(conversation_id)
        cancelled = await self.cancel_agent(agent_id)
        await asyncio.gather(*(self._history.forget(c) for c in await self._conversations.ids_of(agent_id)))
        await self._agents.delete(agent_id, epoch_ttl_s=self._settings.stream_ttl_s)
        return cancelled

    async def record_callback(
        self, conversation_id: str, run_id: str, *, sent_at: datetime, status_code: int | None, error: str | None
    ) -> None:
        """Note on an ended run that its callback was sent, and what came back."""
        await self._runs.note_callback(
            conversation_id, run_id, sent_at_ms=int(sent_at.timestamp() * 1000), status_code=status_code, error=error
        )

    async def pending_approval(self, conversation_id: str) -> ApprovalRequestMessage | None:
        """The approval request the conversation waits on an answer to, if any."""
        request_id = await self._redis.hget(keyspace.pending_approval(conversation_id), "request")
        if request_id is None:
            return None
        try:
            parts = await self._history.parts(conversation_id, replies.text(request_id))
        except NotFoundError:
            return None
        return next((m for m in parts if isinstance(m, ApprovalRequestMessage)), None)

    async def fork(
        self,
        agent: AgentRecord,
        source_id: str,
        *,
        up_to: str | None,
        model: str | None,
        model_settings: ModelSettings | None,
        context_window_limit: int | None = None,
        hidden: bool = False,
    ) -> ConversationRecord:
        """A new conversation of ``agent`` that starts with the messages of ``source_id`` the model is
        shown (``HISTORY_WINDOW``), up to and including ``up_to``; 404 if ``up_to`` is not one of
        them. Written before anyone can know the new id, so no owner can be writing it."""
        messages = await self._history.window(source_id, limit=HISTORY_WINDOW, through=up_to)
        record = await self._conversations.create(
            agent, model=model, model_settings=model_settings, context_window_limit=context_window_limit, hidden=hidden
        )
        return await self._seeded(record, messages)

    async def start_history(self, agent: AgentRecord, messages: Sequence[HistoryMessage]) -> ConversationRecord:
        """Create the own (default) conversation of ``agent``, an agent just created, with ``messages``
        as its history (Letta's ``initial_message_sequence``). Done before anyone knows the agent's
        id, so no owner can be writing it; if seeding fails, the conversation is deleted again."""
        return await self._seeded(await self._conversations.default_for(agent), messages)

    async def _seeded(self, record: ConversationRecord, messages: Sequence[HistoryMessage]) -> ConversationRecord:
        """``record``, a conversation just created, with ``messages`` as its history; deleted again
        if they cannot be written."""
        try:
            await self._history.seed(record.id, messages)
        except BaseException:
            await self._conversations.delete(record, epoch_ttl_s=1)
            raise
        return record

    async def _cancel_ahead_of(self, conversation_id: str, entry_id: str) -> None:
        """For ``on_busy=interrupt``: cancel everything accepted before mailbox entry ``entry_id``
        (compared by entry id, so messages accepted after it are never touched)."""
        ahead = await self._mailbox.run_ids(conversation_id, before=entry_id)
        await asyncio.gather(*(self.cancel_run(conversation_id, r) for r in ahead))

    async def wait_terminal(self, conversation_id: str, run_id: str, timeout_s: float = WAIT_TERMINAL_S) -> str:
        """The run's status once terminal, or its current status after ``timeout_s``."""
        stream_key = keyspace.run_stream(conversation_id, run_id)
        sub = self._tailers.subscribe(stream_key, max(0, await last_seq(self._redis, stream_key) - 1))
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            while True:
                status = (await self._runs.raw(conversation_id, run_id)).get("status", "")
                remaining = deadline - asyncio.get_running_loop().time()
                if status in TERMINAL or remaining <= 0:
                    return status
                batch = await sub.get(timeout_s=min(remaining, 1.0))
                if batch and any(item.terminal for item in batch):
                    return (await self._runs.raw(conversation_id, run_id)).get("status", "")
        finally:
            sub.close()

    # -- a reader's silent run -------------------------------------------------------------------

    async def nudge(self, conversation_id: str, run_id: str) -> Nudge:
        """Make sure a run that has gone silent will end. A run's terminal items are written in the
        same atomic step as its terminal status, so its stream delivers them as long as someone owns
        it; a run that is out of the mailbox yet unfinished will never be run or ended by an owner,
        so it is ended here (``owner_lost``), in the same step an owner would use; a run nobody owns
        gets its conversation delivered to a host (its next owner ends it as ``owner_lost`` or runs
        it)."""
        raw = await self._runs.raw(conversation_id, run_id)
        status = raw.get("status")
        if not _unfinished(status):
            return Nudge.ENDED
        entry = raw.get("mailbox_entry", "")
        if not entry or not await self._mailbox.holds(conversation_id, entry):
            ending = wire.Failed(OwnerLostError("the run is no longer in its conversation's mailbox"))
            if await self._runs.end(run_id, conversation_id=conversation_id, ending=ending, fence=None, expect=status):
                self._metrics.run_ended(*wire.outcome(ending))
            return Nudge.ORPHAN_ENDED
        if await self._directory.owner(conversation_id) is not None:
            return Nudge.OWNED
        try:
            await self._router.deliver(conversation_id)
        except (UnavailableError, RayError) as exc:
            log.warning("could not wake a stalled conversation", extra={"run_id": run_id, "error": repr(exc)})
            return Nudge.NO_HOST
        return Nudge.WOKEN

    # -- health ----------------------------------------------------------------------------------

    async def hosts_alive(self) -> int:
        """How many conversation hosts answer a trivial call (for health checks)."""
        return await self._router.hosts_alive()

    async def ray_alive(self) -> bool:
        """Whether the Ray cluster answers (dedicated placement has no standing hosts to ask)."""
        return await self._router.ray_alive()


def _unfinished(status: str | None) -> TypeGuard[Literal["created", "running"]]:
    """Whether a stored run status is one no end has written yet (what ``RunStore.end`` may expect)."""
    return status in ("created", "running")
