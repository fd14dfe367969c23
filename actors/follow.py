"""Following a run for a reader: which run, its items after a cursor in the batches they arrive in
to its end, or its outcome read whole.

``RunFollower.batches`` yields ``(items, stored)`` batches, the last one ending with the run's
terminal item, and ``None`` for each ``ping_interval_s`` of silence (the reader's chance to send a
keepalive). ``stored`` is False for items the follower made up itself (a give-up ending): they are
not in Redis, so they must not move a client's cursor, neither by an SSE ``id:`` nor by a
``seq_id`` in their JSON (Letta's SDKs resume after the last ``seq_id`` they saw; a made-up one
past the cursor would make them skip the run's real items, or be refused as past its end). Whoever
reads (an SSE response, a non-streaming reply, a chat completion) only frames what it gets.

No reader waits forever. At each silence the run is checked:

- a stream that vanished (expired) ends at once with ``stream_lost``;
- a reader that fell so far behind that the items after its cursor were trimmed away (streams keep
  at most ``stream_maxlen`` items) ends with ``stream_gone``, in the words a resume from that cursor
  is refused with (410), never by jumping over them;
- a run silent for ``stream_idle_timeout_s`` is nudged through the conversations' door
  (``ConversationClient.nudge``): an orphan is ended there, an ownerless run's conversation woken
  (its next owner ends or runs it); if it stays ownerless ``2 * stream_idle_timeout_s`` in spite of
  that (no host at all could take it), the follower gives up with ``stream_stalled``;
- if Redis stays unreachable that long, frozen included (each check waits at most
  ``stream_idle_timeout_s``), it gives up with ``store_unavailable``, though the run itself may
  still finish, as its owner's writes wait for Redis (``CONVOY_STORE_OUTAGE_S``).

``check_cursor`` refuses, before anything is read, a resume cursor that cannot be honoured exactly;
``run_to_resume`` finds the run a resume names. ``outcome`` follows a run from its start to its end
and sorts its items into what a whole answer holds (Letta's ``LettaResponse``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.client import ConversationClient, Nudge
from runtime.errors import ConvoyError, InvalidRequestError, NotFoundError, RunFailure, StreamGoneError
from runtime.schemas.messages import StopReasonItem
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.runs import RunStore
from runtime.stream.items import StoredItem, first_seq, last_item, last_seq, read_after
from runtime.stream.tailer import ItemsTrimmedError, TailerPool
from runtime.stream.wire import DONE_PAYLOAD, encode, error_message

log = logging.getLogger(__name__)

Batch = tuple[list[StoredItem], bool]  # the items, and whether they are the stream's own (module docstring)
ACTIVE = ("created", "running")
NOT_MESSAGES = {"ping", "stop_reason", "usage_statistics"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A run read to its end: the messages it produced, its stop reason and usage items, and the
    error item it failed with (None if it did not fail)."""

    messages: list[dict[str, Any]]
    stop_reason: dict[str, Any]
    usage: dict[str, Any]
    error: dict[str, Any] | None


class StreamLost(RunFailure):
    error_type = "stream_lost"
    public_message = "The run's stream is no longer available; read its outcome with GET /v1/runs/{id}."


class StoreUnreachable(RunFailure):
    error_type = "store_unavailable"
    public_message = (
        "Convoy cannot reach Redis, so this stream cannot go on. The run may still finish: "
        "resume the stream or read the run with GET /v1/runs/{id} later."
    )


class StreamTrimmed(RunFailure):
    """Items after a live reader's cursor were trimmed before it read them; ``error_type`` is the
    code a resume from that cursor is refused with (``StreamGoneError``, 410)."""

    error_type = StreamGoneError.code
    public_message = (
        "This reader fell behind and the run's next items were trimmed from its stream before they could be "
        "sent; resume from a later starting_after, or read the run's messages with GET /v1/runs/{id}/messages."
    )


class StreamStalled(RunFailure):
    error_type = "stream_stalled"
    public_message = "The run produced nothing for too long and no process owns it; the reader gave up."


class RunFollower:
    """Follows runs for the readers of one process: the stream tailers it shares, the run store it
    checks, and the conversations' door it nudges silent runs through."""

    def __init__(
        self, settings: Settings, redis: aioredis.Redis, runs: RunStore, tailers: TailerPool, client: ConversationClient
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._runs = runs
        self._tailers = tailers
        self._client = client

    async def check_cursor(self, conversation_id: str, run_id: str, after: int) -> bool:
        """Refuse a resume cursor that cannot be honoured exactly (before anything is sent); whether
        the run's stream has ended at or before it (nothing is left to send, nor ever will be)."""
        if after < 0:
            raise InvalidRequestError(f"starting_after must be >= 0, got {after}")
        stream_key = keyspace.run_stream(conversation_id, run_id)
        tail = await last_item(self._redis, stream_key)
        last = tail.seq if tail is not None else 0
        if last == 0:
            if not await self._runs.raw(conversation_id, run_id):
                raise NotFoundError(f"run {run_id} not found")
            raise StreamGoneError(
                f"the stream of run {run_id} has expired (streams are kept {self._settings.stream_ttl_s} s after "
                "their last item); its outcome is still available with GET /v1/runs/{id}"
            )
        if after > last:
            raise InvalidRequestError(f"starting_after {after} is past the end of run {run_id} (last seq_id {last})")
        first = await first_seq(self._redis, stream_key)
        if first is not None and first > after + 1:
            raise StreamGoneError(self._trimmed(run_id, after, first))
        return tail is not None and tail.terminal and after >= tail.seq

    def _trimmed(self, run_id: str, after: int, first: int) -> str:
        """What a reader is told when items ``after + 1`` to ``first - 1`` were trimmed: a resume from
        ``after`` (410) and a live reader that fell that far behind alike."""
        return (
            f"items {after + 1}..{first - 1} of run {run_id} were trimmed (streams keep at most "
            f"{self._settings.stream_maxlen} items); resume from starting_after={first - 1} or later"
        )

    async def run_to_resume(self, conversation_id: str, *, run_id: str | None, otid: str | None, tenant: str) -> str:
        """The run a resume of the conversation names: ``run_id`` (any run of it, finished or not:
        every run's stream is kept; 404 if it is another conversation's), else the run ``otid``
        started (404 if none), else the conversation's active run (400 when none is active)."""
        if run_id is None and otid is not None:
            found = await self._client.run_of_otid(conversation_id, otid)
            if found is None:
                raise NotFoundError(f"No run found for otid={otid} in conversation {conversation_id}")
            run_id = found
        if run_id is None:
            run_id = await self._runs.latest(conversation_id)
            if run_id is None or (await self._runs.get(run_id, conversation_id, tenant=tenant)).status not in ACTIVE:
                raise InvalidRequestError("No active runs found for this conversation.")
        elif await self._runs.conversation_of(run_id) != conversation_id:
            raise NotFoundError(f"run {run_id} not found in conversation {conversation_id}")
        return run_id

    async def outcome(self, conversation_id: str, run_id: str) -> Outcome:
        """Follow the run from its start to its end; the messages, stop reason and usage it
        produced, or the error item it failed with."""
        messages: list[dict[str, Any]] = []
        stop_reason: dict[str, Any] = {"message_type": "stop_reason", "stop_reason": "error"}
        usage: dict[str, Any] = {"message_type": "usage_statistics"}
        error: dict[str, Any] | None = None
        async for got in self.batches(conversation_id, run_id, after=0):
            for item in got[0] if got else ():
                if item.terminal:
                    break
                doc = json.loads(item.payload)
                kind = doc.get("message_type")
                if item.kind == "error":
                    error = doc
                elif kind == "stop_reason":
                    stop_reason = doc
                elif kind == "usage_statistics":
                    usage = doc
                elif kind not in NOT_MESSAGES:
                    messages.append(doc)
        return Outcome(messages, stop_reason, usage, error)

    async def batches(self, conversation_id: str, run_id: str, *, after: int) -> AsyncGenerator[Batch | None, None]:
        """The items after ``after`` in the batches they arrive in, the last one ending with a
        terminal item; ``None`` marks each ``ping_interval_s`` of silence (module docstring)."""
        settings = self._settings
        if after > 0 and await self._has_everything(keyspace.run_stream(conversation_id, run_id), after):
            return  # the client already has everything, [DONE] included
        sub = self._tailers.subscribe(keyspace.run_stream(conversation_id, run_id), after)
        watch = _Liveness()
        try:
            while True:
                try:
                    batch = await sub.get(timeout_s=settings.ping_interval_s)
                except ItemsTrimmedError as exc:
                    yield _synthetic(run_id, sub.cursor, StreamTrimmed(self._trimmed(run_id, exc.after, exc.first))), False
                    return
                if batch is None:
                    yield None
                    checked_at = time.monotonic()
                    try:
                        ending = await self._stalled_ending(conversation_id, run_id, sub.cursor, watch)
                        watch.unreachable_since = None
                    except (RedisConnectionError, RedisTimeoutError) as exc:
                        watch.unreachable_since = watch.unreachable_since or checked_at
                        if time.monotonic() - watch.unreachable_since > 2 * settings.stream_idle_timeout_s:
                            yield _synthetic(run_id, sub.cursor, StoreUnreachable(str(exc))), False
                            return
                        log.warning("liveness check could not reach Redis; trying again", extra={"error": str(exc)})
                        continue
                    except (RedisError, ConvoyError):
                        log.warning("liveness check failed; trying again at the next silence", exc_info=True)
                        continue
                    if ending is not None:
                        yield ending, False
                        return
                    continue
                watch.progress()
                for i, item in enumerate(batch):
                    if item.terminal:
                        yield batch[: i + 1], True
                        return
                yield batch, True
        finally:
            sub.close()

    async def _has_everything(self, stream_key: str, after: int) -> bool:
        """Whether the item at ``after`` is the run's terminal item. Only a shortcut: should Redis
        fail to answer, the subscription reads the stream itself (and ends however the run ends)."""
        try:
            if after != await last_seq(self._redis, stream_key):
                return False
            # Only the item at the cursor: the run may append more between these two reads, and then
            # the last item is no longer the one the cursor points at (found by `convoy bench soak`).
            at_cursor = await read_after(self._redis, stream_key, after - 1, count=1)
        except RedisError:
            log.warning("could not check a resume cursor; reading the stream instead", exc_info=True)
            return False
        return bool(at_cursor) and at_cursor[0].seq == after and at_cursor[0].terminal

    async def _stalled_ending(
        self, conversation_id: str, run_id: str, cursor: int, watch: _Liveness
    ) -> list[StoredItem] | None:
        """A terminal sequence to send if the run can no longer produce one itself, else None.

        A stream that vanished (expired) ends at once. A run silent for ``stream_idle_timeout_s`` is
        nudged (``ConversationClient.nudge``: an orphan is ended, an ownerless run's conversation
        woken); the follower gives up only after the run has stayed ownerless for
        ``2 * stream_idle_timeout_s`` in spite of that, i.e. no host at all could take it.
        """
        idle_s = self._settings.stream_idle_timeout_s
        nudge: Nudge | None
        try:
            # Bounded: a frozen Redis accepts connections and never answers, and a client's patient
            # reconnects would hold this check (and so the reader's giving up) for minutes.
            async with asyncio.timeout(idle_s):
                exists = await self._redis.exists(keyspace.run_stream(conversation_id, run_id))
                now = time.monotonic()
                if not exists or now - watch.last_item_at < idle_s:
                    nudge = None
                else:
                    nudge = await self._client.nudge(conversation_id, run_id)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"Redis did not answer within {idle_s:g} s") from exc
        if not exists:
            return _synthetic(run_id, cursor, StreamLost())
        if nudge not in (Nudge.WOKEN, Nudge.NO_HOST):
            watch.ownerless_since = None
            return None
        if watch.ownerless_since is None:
            watch.ownerless_since = now
        elif now - watch.ownerless_since > 2 * idle_s:
            return _synthetic(run_id, cursor, StreamStalled(f"no owner for {now - watch.ownerless_since:.0f} s"))
        return None


class _Liveness:
    """What a follower knows about its run's producer: when it last saw an item, since when it has
    seen the run without an owner, and since when it has failed to check (Redis unreachable)."""

    def __init__(self) -> None:
        self.last_item_at = time.monotonic()
        self.ownerless_since: float | None = None
        self.unreachable_since: float | None = None

    def progress(self) -> None:
        self.last_item_at = time.monotonic()
        self.ownerless_since = None


def _synthetic(run_id: str, cursor: int, failure: RunFailure) -> list[StoredItem]:
    """A give-up ending the follower makes up: the failure's terminal sequence (``stop_reason``,
    the error, ``[DONE]``) with no ``seq_id`` in any payload, held at the reader's ``cursor``. These
    items are not in the run's stream; a ``seq_id`` on them would name positions the run's real
    items will take (module docstring). The stored terminal sequence is ``runtime.stream.wire``'s."""
    stop = StopReasonItem(stop_reason=failure.stop_reason, run_id=run_id)
    return [
        StoredItem(cursor, "data", encode(stop)),
        StoredItem(cursor, "error", encode(error_message(run_id, failure))),
        StoredItem(cursor, "done", DONE_PAYLOAD),
    ]
