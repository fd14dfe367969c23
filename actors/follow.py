"""Following a run for a reader: its items after a cursor, in the batches they arrive in, to its end.

``RunFollower.batches`` yields ``(items, stored)`` batches, the last one ending with the run's
terminal item, and ``None`` for each ``ping_interval_s`` of silence (the reader's chance to send a
keepalive). ``stored`` is False for items the follower made up itself (a give-up ending): they are
not in Redis, so they must not move a client's cursor. Whoever reads (an SSE response, a
non-streaming reply, a chat completion) only frames what it gets.

No reader waits forever. At each silence the run is checked:

- a stream that vanished (expired) ends at once with ``stream_lost``;
- a run silent for ``stream_idle_timeout_s`` is nudged through the conversations' door
  (``ConversationClient.nudge``): an orphan is ended there, an ownerless run's conversation woken
  (its next owner ends or runs it); if it stays ownerless ``2 * stream_idle_timeout_s`` in spite of
  that (no host at all could take it), the follower gives up with ``stream_stalled``;
- if Redis stays unreachable that long, frozen included (each check waits at most
  ``stream_idle_timeout_s``), it gives up with ``store_unavailable``, though the run itself may
  still finish, as its owner's writes wait for Redis (``CONVOY_STORE_OUTAGE_S``).

``check_cursor`` refuses, before anything is read, a resume cursor that cannot be honoured exactly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.client import ConversationClient, Nudge
from runtime.errors import ConvoyError, InvalidRequestError, NotFoundError, RunFailure, StreamGoneError
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.runs import RunStore
from runtime.stream.items import StoredItem, first_seq, last_seq, read_after
from runtime.stream.tailer import TailerPool
from runtime.stream.wire import failure_items

log = logging.getLogger(__name__)

Batch = tuple[list[StoredItem], bool]  # the items, and whether they are the stream's own (module docstring)


class StreamLost(RunFailure):
    error_type = "stream_lost"
    public_message = "The run's stream is no longer available; read its outcome with GET /v1/runs/{id}."


class StoreUnreachable(RunFailure):
    error_type = "store_unavailable"
    public_message = (
        "Convoy cannot reach Redis, so this stream cannot go on. The run may still finish: "
        "resume the stream or read the run with GET /v1/runs/{id} later."
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

    async def check_cursor(self, conversation_id: str, run_id: str, after: int) -> None:
        """Refuse a resume cursor that cannot be honoured exactly (before anything is sent)."""
        if after < 0:
            raise InvalidRequestError(f"starting_after must be >= 0, got {after}")
        stream_key = keyspace.run_stream(conversation_id, run_id)
        last = await last_seq(self._redis, stream_key)
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
            raise StreamGoneError(
                f"items {after + 1}..{first - 1} of run {run_id} were trimmed (streams keep at most "
                f"{self._settings.stream_maxlen} items); resume from starting_after={first - 1} or later"
            )

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
                batch = await sub.get(timeout_s=settings.ping_interval_s)
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
    return [StoredItem(seq, kind, payload) for seq, kind, payload in failure_items(run_id, cursor + 1, failure)]
