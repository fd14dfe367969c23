"""One activation of a conversation: the grain. Plain Python; a host holds thousands of them.

While it holds the conversation's lease, an activation runs exactly one worker task that takes
mailbox entries strictly in order and runs each turn to a terminal status. Guarantees:

- **One at a time, in order.** The worker never starts entry N+1 before entry N's terminal status
  is recorded (which also removes N from the mailbox).
- **Every run ends once.** Success, model failure, cancellation or an unexpected error all end in
  one atomic write of the terminal items + status + mailbox ack (``RunStore.finish``). A run left
  ``running`` by a previous owner that died is ended as failed (``owner_lost``) before anything
  else happens, so the next message always works.
- **A stale activation cannot write.** Every write carries this activation's epoch; on
  ``FencedError`` the activation stops at once without touching anything.
- **A Redis outage pauses a turn; only a long one fails it.** Every write of the owner is
  idempotent and sent again while Redis is unreachable (``runtime.store.fencing.through_outage``: the take,
  chunk appends, step traces, history appends, the run's end), and the reads a turn starts with
  wait too, each for up to ``CONVOY_STORE_OUTAGE_S``; so a turn streams through an outage shorter
  than that, and the lease it lapsed meanwhile is taken back (``actors.directory``). A longer
  outage fails the run with ``error_type`` ``store_unavailable`` (saying for how long Redis was
  unreachable), never ``owner_lost``: the run's end, the worker's take and the reads in between
  wait for Redis as long as it takes, so the end lands once Redis is back, its stream continuing
  right after the last stored item. Only a real change of owner stops an activation.
- **Cancel is out of band.** ``cancel(run_id)`` cancels the running turn's task directly; it does
  not queue behind the mailbox or wait for the next chunk, and closing the task closes the
  provider's stream. A cancel that comes while the run is already being ended does not interrupt
  the end: the run ends as it was ending (its real error, say), and the activation goes on.
- **The history it shows the model is Redis's.** The activation keeps the recent history in memory
  between turns; an append that raised (it may have landed) drops that copy, and the next turn
  reads it again.
- **Measured, and logged with its ids.** Each run this activation ends is counted once by its final
  status and stop reason, each take records its mailbox's depth (``runtime.metrics``), and every
  line logged while a run is processed carries its ``run_id`` and the conversation's ``tenant``
  (``runtime.logs.log_context``; the host binds ``conversation_id`` for the whole activation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.directory import Lease
from actors.mailbox import Mailbox, MailboxEntry, Taken
from runtime.agent.context import HISTORY_WINDOW
from runtime.agent.loop import ModelFactory, run_turn
from runtime.agent.prompt import ChatCache
from runtime.agent.step import Emit
from runtime.errors import FencedError, InternalRunError, OwnerLostError, RunFailure, StoreUnavailableError
from runtime.logs import log_context
from runtime.metrics import QUIET, DeactivationReason, Recorder
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import HistoryMessage, WireItem
from runtime.schemas.runs import RunStatus
from runtime.schemas.turns import TurnRequest
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.fencing import Fence, through_outage
from runtime.store.history import HistoryStore
from runtime.store.runs import PendingApproval, RunStore
from runtime.stream import wire
from runtime.stream.items import last_seq
from runtime.stream.writer import ChunkWriter
from runtime.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Loaded:
    agent: AgentRecord
    conversation: ConversationRecord
    history: list[HistoryMessage]
    approval_pending: bool


@dataclass(frozen=True)
class Services:
    """What every activation of a host shares: built once per host process."""

    redis: aioredis.Redis
    settings: Settings
    mailbox: Mailbox
    runs: RunStore
    history: HistoryStore
    agents: AgentStore
    conversations: ConversationStore
    models: ModelFactory
    tools: ToolRegistry
    metrics: Recorder = QUIET


class Activation:
    def __init__(self, lease: Lease, services: Services) -> None:
        self.lease = lease
        self.conversation_id = lease.conversation_id
        self._s = services
        self._fence = Fence(lease.conversation_id, lease.epoch, lease.owner, patience_s=services.settings.store_outage_s)
        # What must land however long Redis is away: the worker's take and a run's end.
        self._until_landed = dataclasses.replace(self._fence, patience_s=math.inf)
        self._wake = asyncio.Event()
        self._turn: asyncio.Task[None] | None = None
        self._current_run: str | None = None
        self._cancel_requested: set[str] = set()
        # Whether a user's cancel may interrupt the turn's task now: while it runs the model, not
        # while it ends its run (``cancel``).
        self._interrupt_ok = False
        self._taking = False  # a take is on its way to Redis and back
        self._agent_id: str | None = None  # the conversation's agent, once a turn has loaded it
        self._tenant: str | None = None  # the conversation's tenant, once a turn has loaded it
        self._history: list[HistoryMessage] | None = None
        self._chat = ChatCache()  # the history converted for the model, part by part

    def poke(self) -> None:
        self._wake.set()

    @property
    def current_run(self) -> str | None:
        return self._current_run

    def cancel(self, run_id: str) -> bool:
        """Cancel ``run_id`` if it is the turn this activation is starting or running; True if so.

        A cancel reaches an owner only for a run already ``running``, which only this activation's
        take can have made it: one arriving while a take is on its way back is for the run being
        taken, and is kept for it (the turn then ends as cancelled before it starts). One arriving
        while the run is being ended (completed, failed, or cancelled already) is recorded and
        interrupts nothing: an end cut short would leave the run ``running`` and stop the
        activation, and the run would end as ``owner_lost`` instead of what really happened."""
        if self._current_run != run_id and not self._taking:
            log.info("cancel: not running here", extra={"run_id": run_id, "current": self._current_run})
            return False
        if run_id in self._cancel_requested:
            return True  # already on its way out: a second cancel must not interrupt the ending
        self._cancel_requested.add(run_id)
        if self._current_run == run_id and self._interrupt_ok and self._turn is not None and not self._turn.done():
            self._turn.cancel()
        return True

    async def run(self) -> DeactivationReason:
        """The worker: process the mailbox until idle for ``idle_passivate_s`` (then ``idle``), or
        until a newer owner fences it out (``fenced``)."""
        idle_s = self._s.settings.idle_passivate_s
        expecting = True  # an entry is likely there: just activated, or poked
        while True:
            # Cleared before each take, not when a wait ends: a poke seen by a take must not make
            # the next empty take look again; one arriving during the take, after the clear, must.
            self._wake.clear()
            try:
                taken, loaded = await self._take(prefetch=expecting)
            except FencedError:
                log.warning("activation fenced out")
                return "fenced"
            if taken is None:
                if self._wake.is_set():
                    expecting = True
                    continue  # re-check: a poke raced with the empty read
                try:
                    async with asyncio.timeout(idle_s):  # not wait_for: a task per wait on Python 3.11
                        await self._wake.wait()
                except TimeoutError:
                    return "idle"
                expecting = True
                continue
            self._s.metrics.mailbox_depth(taken.depth)
            try:
                with log_context(run_id=taken.entry.run_id, tenant=self._tenant):
                    await self._process(taken, loaded)
            except FencedError:
                log.warning("activation fenced out")
                return "fenced"
            expecting = False  # the next take usually finds the mailbox empty: read nothing else

    async def _take(self, *, prefetch: bool) -> tuple[Taken | None, _Loaded | Exception | None]:
        """The next entry, its run started (``Mailbox.take``). With ``prefetch``, what a turn
        needs is read in the same round trip, for the conversation's agent (it never changes)."""
        self._taking = True
        try:
            if prefetch and self._agent_id is not None:
                return await asyncio.gather(self._s.mailbox.take(self._until_landed), self._load(self._agent_id))
            return await self._s.mailbox.take(self._until_landed), None
        finally:
            self._taking = False

    async def _process(self, taken: Taken, loaded: _Loaded | Exception | None) -> None:
        entry, status = taken.entry, taken.status
        try:
            turn = TurnRequest.model_validate_json(entry.payload)
        except ValidationError as exc:
            # An entry this version cannot read (e.g. written by a newer replica mid-upgrade): end
            # its run visibly instead of crashing on it forever.
            self._cancel_requested.clear()
            await self._end(entry.run_id, entry, failure=InternalRunError(f"unreadable turn: {exc}"), skip_missing=True)
            return
        self._current_run = turn.run_id  # from here on an out-of-band cancel can reach it
        try:
            if status in ("started", "resumed"):
                if loaded is None or (isinstance(loaded, _Loaded) and loaded.agent.id != turn.agent_id):
                    loaded = await self._load(turn.agent_id)
                with log_context(tenant=self._tenant):  # known once a turn has loaded the conversation
                    await self._execute(turn, entry, loaded, fresh=status == "started")
                return
        finally:
            self._current_run = None
            self._cancel_requested.clear()
        if status == "cancel_requested":
            await self._end(turn.run_id, entry, cancelled=True, turn=turn, expect="created")
        elif status == "running":
            await self._end(turn.run_id, entry, failure=OwnerLostError("the previous owner stopped mid-run"), turn=turn)
        elif status == "":
            await self._end(turn.run_id, entry, failure=InternalRunError("run record missing"), skip_missing=True)
        else:
            # Finished elsewhere (e.g. cancelled while queued), which removes the entry in the same
            # step; removing it again is harmless and guarantees the worker can never spin on it.
            await self._drop(entry)

    async def _load(self, agent_id: str) -> _Loaded | Exception:
        """Agent, conversation, history and whether an approval is pending (read again while Redis
        is unreachable, up to the owner's patience); a failure is returned (and raised inside the
        turn, which ends the run visibly), never raised here."""
        s = self._s

        async def read() -> tuple[AgentRecord, ConversationRecord, list[HistoryMessage], int]:
            return await asyncio.gather(
                s.agents.get(agent_id, tenant=None),
                s.conversations.get(self.conversation_id, tenant=None),
                self._recent_history(),
                s.redis.hexists(keyspace.pending_approval(self.conversation_id), "request"),
            )

        try:
            agent, conversation, history, pending = await through_outage(
                read, patience_s=self._fence.patience_s, what="reading what a turn needs"
            )
        except Exception as exc:  # noqa: BLE001 - handed to the turn, which ends the run with it
            return exc
        self._agent_id = conversation.agent_id
        self._tenant = conversation.tenant
        return _Loaded(agent, conversation, list(history), bool(pending))

    async def _execute(self, turn: TurnRequest, entry: MailboxEntry, loaded: _Loaded | Exception, *, fresh: bool) -> None:
        conv_id = self.conversation_id
        stream_key = keyspace.run_stream(conv_id, turn.run_id)
        # A run this call started holds only its accept-time ping (seq 1): no need to ask Redis.
        last = 1 if fresh else await self._last_seq(turn.run_id)
        writer = ChunkWriter(
            self._s.redis,
            stream_key=stream_key,
            epoch_key=keyspace.epoch(conv_id),
            epoch=self._fence.epoch,
            next_seq=last + 1,
            maxlen=self._s.settings.stream_maxlen,
            ttl_s=self._s.settings.stream_ttl_s,
            patience_s=self._fence.patience_s,
            window_s=self._s.settings.stream_write_window_ms / 1000,
        )

        async def emit(item: WireItem) -> None:
            item.run_id = turn.run_id
            await writer.write_item(item)

        self._turn = asyncio.create_task(self._turn_body(turn, entry, loaded, writer, emit))
        try:
            await asyncio.shield(self._turn)
        except asyncio.CancelledError:
            # The host is stopping (not a user cancel, which only cancels the inner task):
            # stop the turn too; the next owner ends the run as owner_lost.
            self._turn.cancel()
            raise
        finally:
            self._turn = None

    async def _turn_body(
        self, turn: TurnRequest, entry: MailboxEntry, loaded: _Loaded | Exception, writer: ChunkWriter, emit: Emit
    ) -> None:
        s = self._s
        try:
            if turn.run_id in self._cancel_requested:
                raise asyncio.CancelledError  # cancelled while it was being started
            if isinstance(loaded, Exception):
                raise loaded
            with self._interruptible():
                outcome = await run_turn(
                    turn,
                    agent=loaded.agent,
                    conversation=loaded.conversation,
                    history=loaded.history,
                    models=s.models,
                    tools=s.tools,
                    emit=emit,
                    record_step=lambda step: s.runs.add_step(self._fence, turn.run_id, step),
                    persist=self._persist,
                    cancelled=lambda: turn.run_id in self._cancel_requested,
                    approval_pending=loaded.approval_pending,
                    chat=self._chat,
                    metrics=s.metrics,
                    trace_request_max_bytes=s.settings.trace_request_max_bytes,
                )
                await writer.flush()
            ending = wire.Completed(outcome.stop_reason, outcome.usage)
            ended = await s.runs.end(
                turn.run_id,
                conversation_id=self.conversation_id,
                ending=ending,
                fence=self._fence,
                next_seq=writer.reserve(),
                mailbox_entry=entry.entry_id,
                extra=_timings(turn, outcome.ttft_ns) | ({"finish_reason": outcome.finish_reason} if outcome.finish_reason else {}),
                pending_approval=PendingApproval(outcome.approval_request[0], tuple(outcome.approval_request[1]))
                if outcome.approval_request
                else "",
            )
            if ended:
                s.metrics.run_ended(*wire.outcome(ending))
        except asyncio.CancelledError:
            if turn.run_id not in self._cancel_requested:
                raise
            await self._end(turn.run_id, entry, writer=writer, cancelled=True, turn=turn)
        except FencedError:
            raise
        except RunFailure as failure:
            await self._end(turn.run_id, entry, writer=writer, failure=failure, turn=turn)
        except (RedisConnectionError, RedisTimeoutError) as exc:  # a call not made through_outage
            log.warning("turn lost Redis", extra={"run_id": turn.run_id, "error": str(exc)})
            await self._end(turn.run_id, entry, writer=writer, failure=StoreUnavailableError(str(exc)), turn=turn)
        except Exception as exc:  # a bug must still end the run, visibly
            log.exception("turn failed unexpectedly", extra={"run_id": turn.run_id})
            await self._end(turn.run_id, entry, writer=writer, failure=InternalRunError(repr(exc)), turn=turn)

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """While inside, a user's cancel interrupts the turn's task (``cancel``); the run's end,
        which follows, is never interrupted by one. (The host stopping still stops it all: that
        cancels the task directly.)"""
        self._interrupt_ok = True
        try:
            yield
        finally:
            self._interrupt_ok = False

    async def _recent_history(self) -> list[HistoryMessage]:
        """The conversation's recent history. Read from Redis once per activation, then kept in
        memory: this activation is the only writer (its appends are fenced), so the copy stays true
        (one whose append raised is dropped and read again: ``_persist``)."""
        if self._history is None:
            self._history = await self._s.history.recent(self.conversation_id, limit=HISTORY_WINDOW)
        return self._history

    async def _persist(self, messages: list[HistoryMessage]) -> None:
        """Append a turn's messages to the history, and to this activation's copy once they landed.

        An append that raised (cancelled while its reply was on its way, or given up after Redis
        stayed away) may have landed all the same: the copy is dropped, with the model's converted
        form of it, so the next turn reads the history again rather than show the model one
        without them."""
        try:
            await self._s.history.append(self._fence, messages)
        except BaseException:
            self._history = None
            self._chat = ChatCache()
            raise
        if self._history is not None:
            self._history.extend(messages)
            del self._history[:-HISTORY_WINDOW]

    async def _end(
        self,
        run_id: str,
        entry: MailboxEntry,
        *,
        failure: RunFailure | None = None,
        cancelled: bool = False,
        writer: ChunkWriter | None = None,
        turn: TurnRequest | None = None,
        skip_missing: bool = False,
        expect: RunStatus | None = None,
    ) -> None:
        """Write the terminal sequence for a run that did not succeed."""
        first: int | None = None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.flush()
                first = writer.reserve()
        # ``first`` None: a failed writer dropped what it had not sent; the end follows what is stored.
        ending: wire.Ending
        if cancelled:
            ending = wire.Cancelled()
        else:
            assert failure is not None
            ending = wire.Failed(failure)
        done = await self._s.runs.end(
            run_id,
            conversation_id=self.conversation_id,
            ending=ending,
            fence=self._until_landed,
            next_seq=first,
            mailbox_entry=entry.entry_id,
            expect=expect,
            extra=_timings(turn, None) if turn else None,
            # A failed answer closes its approval (``RunStore.end``); a failed ordinary turn
            # leaves an approval requested meanwhile open.
        )
        if done:
            self._s.metrics.run_ended(*wire.outcome(ending))
        elif skip_missing:
            await self._drop(entry)

    async def _last_seq(self, run_id: str) -> int:
        """The run stream's last seq, read however long Redis is away (a turn cannot go on, nor end,
        without it)."""
        stream_key = keyspace.run_stream(self.conversation_id, run_id)
        return await through_outage(
            lambda: last_seq(self._s.redis, stream_key), patience_s=math.inf, what="reading where a stream ends"
        )

    async def _drop(self, entry: MailboxEntry) -> None:
        """Remove a mailbox entry whose run has ended (idempotent; however long Redis is away)."""
        mailbox = keyspace.mailbox(self.conversation_id)
        await through_outage(
            lambda: self._s.redis.xdel(mailbox, entry.entry_id), patience_s=math.inf, what="dropping a mailbox entry"
        )


def _timings(turn: TurnRequest | None, ttft_ns: int | None) -> dict[str, int]:
    if turn is None:
        return {}
    timings = {"total_duration_ns": time.time_ns() - turn.accepted_at_ns}
    if ttft_ns is not None:
        timings["ttft_ns"] = ttft_ns
    return timings
