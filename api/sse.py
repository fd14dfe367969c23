"""Serving a run's Redis stream as Server-Sent Events.

Every stored item becomes one SSE event with ``id: <seq>`` (so a browser ``EventSource`` resumes
by itself with ``Last-Event-ID``); error items add ``event: error``; the terminal item is
``data: [DONE]``, after which the response closes. Items the reader makes up itself (keepalive
pings, a give-up error) carry no ``id:``: they are not in Redis and must not move a cursor.
Convoy never sends SSE comments or empty events (the Letta SDK's decoder cannot parse them once
it has seen an ``id:``).

Cancellation flows (one task per response; the first of these to happen ends it):

- the terminal item arrives: sent, then the generator returns and the response closes;
- the client disconnects: Starlette cancels the response, ``finally`` closes the subscription
  and, for a foreground request (``background: false``) whose run has not ended, cancels the run;
- silence: every ``ping_interval_s`` a keepalive ``ping`` is sent and the run is checked. A
  stream that vanished (expired) ends at once with an error. A run whose conversation has no owner
  gets its conversation woken up (its next owner ends or runs it); if it stays silent and
  ownerless for ``2 * stream_idle_timeout_s``, the reader gives up with an error item. So it does
  if Redis stays unreachable that long, frozen included (each check waits at most
  ``stream_idle_timeout_s``): ``store_unavailable``, though the run itself may still finish, as
  its owner's writes wait for Redis (``CONVOY_STORE_OUTAGE_S``). No reader waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import StreamingResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.client import Nudge
from api.metrics import SSE_DISCONNECTS, SSE_ITEMS, SSE_STREAMS
from api.state import AppState
from runtime import logs
from runtime.errors import ConvoyError, InvalidRequestError, NotFoundError, RunFailure, StreamGoneError
from runtime.ids import new_id
from runtime.schemas.messages import Ping
from runtime.store import keyspace
from runtime.store.stream_tokens import StreamGrant
from runtime.stream.items import StoredItem, first_seq, last_seq, read_after
from runtime.stream.wire import encode, failure_items

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
_background: set[asyncio.Task[Any]] = set()


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


def frame(item: StoredItem, *, with_id: bool = True) -> bytes:
    head = b"id: %d\n" % item.seq if with_id else b""
    if item.kind == "done":
        return head + b"data: [DONE]\n\n"
    event = b"event: error\n" if item.kind == "error" else b""
    return head + event + b"data: " + item.payload + b"\n\n"


def ping_frame(run_id: str) -> bytes:
    return b"data: " + encode(Ping(id=f"ping-{new_id('message')[8:]}", run_id=run_id)) + b"\n\n"


async def check_cursor(state: AppState, conversation_id: str, run_id: str, after: int) -> None:
    """Refuse a resume cursor that cannot be honoured exactly (before anything is sent)."""
    if after < 0:
        raise InvalidRequestError(f"starting_after must be >= 0, got {after}")
    stream_key = keyspace.run_stream(conversation_id, run_id)
    last = await last_seq(state.redis, stream_key)
    if last == 0:
        if not await state.runs.raw(conversation_id, run_id):
            raise NotFoundError(f"run {run_id} not found")
        raise StreamGoneError(
            f"the stream of run {run_id} has expired (streams are kept {state.settings.stream_ttl_s} s after "
            "their last item); its outcome is still available with GET /v1/runs/{id}"
        )
    if after > last:
        raise InvalidRequestError(f"starting_after {after} is past the end of run {run_id} (last seq_id {last})")
    first = await first_seq(state.redis, stream_key)
    if first is not None and first > after + 1:
        raise StreamGoneError(
            f"items {after + 1}..{first - 1} of run {run_id} were trimmed (streams keep at most "
            f"{state.settings.stream_maxlen} items); resume from starting_after={first - 1} or later"
        )


async def run_batches(
    state: AppState, conversation_id: str, run_id: str, *, after: int
) -> AsyncGenerator[tuple[list[StoredItem], bool] | None, None]:
    """``(items, stored)``: the items after ``after`` in the batches they arrive in, the last one
    ending with a terminal item; ``None`` marks each ``ping_interval_s`` of silence. ``stored`` is
    False for items the reader made up itself."""
    settings = state.settings
    if after > 0 and await _has_everything(state, keyspace.run_stream(conversation_id, run_id), after):
        return  # the client already has everything, [DONE] included
    sub = state.tailers.subscribe(keyspace.run_stream(conversation_id, run_id), after)
    watch = _Liveness()
    try:
        while True:
            batch = await sub.get(timeout_s=settings.ping_interval_s)
            if batch is None:
                yield None
                checked_at = time.monotonic()
                try:
                    ending = await _stalled_ending(state, conversation_id, run_id, sub.cursor, watch)
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


async def _has_everything(state: AppState, stream_key: str, after: int) -> bool:
    """Whether the item at ``after`` is the run's terminal item. Only a shortcut: should Redis fail
    to answer, the subscription reads the stream itself (and ends however the run ends)."""
    try:
        if after != await last_seq(state.redis, stream_key):
            return False
        # Only the item at the cursor: the run may append more between these two reads, and then
        # the last item is no longer the one the cursor points at (found by `convoy bench soak`).
        at_cursor = await read_after(state.redis, stream_key, after - 1, count=1)
    except RedisError:
        log.warning("could not check a resume cursor; reading the stream instead", exc_info=True)
        return False
    return bool(at_cursor) and at_cursor[0].seq == after and at_cursor[0].terminal


class _Liveness:
    """What a reader knows about its run's producer: when it last saw an item, since when it has
    seen the run without an owner, and since when it has failed to check (Redis unreachable)."""

    def __init__(self) -> None:
        self.last_item_at = time.monotonic()
        self.ownerless_since: float | None = None
        self.unreachable_since: float | None = None

    def progress(self) -> None:
        self.last_item_at = time.monotonic()
        self.ownerless_since = None


async def _stalled_ending(
    state: AppState, conversation_id: str, run_id: str, cursor: int, watch: _Liveness
) -> list[StoredItem] | None:
    """A terminal sequence to send if the run can no longer produce one itself, else None.

    A stream that vanished (expired) ends at once. A run silent for ``stream_idle_timeout_s`` is
    nudged (``ConversationClient.nudge``: an orphan is ended, an ownerless run's conversation
    woken); the reader gives up only after the run has stayed ownerless for
    ``2 * stream_idle_timeout_s`` in spite of that, i.e. no host at all could take it.
    """
    idle_s = state.settings.stream_idle_timeout_s
    try:
        # Bounded: a frozen Redis accepts connections and never answers, and a client's patient
        # reconnects would hold this check (and so the reader's giving up) for minutes.
        async with asyncio.timeout(idle_s):
            exists = await state.redis.exists(keyspace.run_stream(conversation_id, run_id))
            now = time.monotonic()
            if not exists or now - watch.last_item_at < idle_s:
                nudge = None
            else:
                nudge = await state.client.nudge(conversation_id, run_id)
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


def _synthetic(run_id: str, cursor: int, failure: RunFailure) -> list[StoredItem]:
    return [StoredItem(seq, kind, payload) for seq, kind, payload in failure_items(run_id, cursor + 1, failure)]


async def run_events(
    state: AppState,
    conversation_id: str,
    run_id: str,
    *,
    after: int,
    include_pings: bool,
    on_abandon: Callable[[], Coroutine[Any, Any, object]] | None = None,
    retry_ms: int | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of one run; ``on_abandon`` runs if the client leaves before the end.
    ``retry_ms`` tells an ``EventSource`` how soon to reconnect (sent inside the first event, never
    on its own: a lone ``retry:`` would be an empty event to other clients)."""
    finished = False
    client_left = False
    retry = b"retry: %d\n" % retry_ms if retry_ms else b""
    SSE_STREAMS.inc()
    try:
        async for got in run_batches(state, conversation_id, run_id, after=after):
            if got is None:
                if include_pings:
                    yield ping_frame(run_id)
                continue
            items, stored = got
            SSE_ITEMS.inc(len(items))
            # Everything that arrived together leaves in one write.
            yield retry + b"".join([frame(item, with_id=stored) for item in items])
            retry = b""
            finished = items[-1].terminal
        finished = True
    except (asyncio.CancelledError, GeneratorExit):
        client_left = True  # Starlette cancels or closes the body when the client disconnects
        raise
    finally:
        SSE_STREAMS.dec()
        if not finished and client_left:
            SSE_DISCONNECTS.labels("foreground" if on_abandon else "background").inc()
            if on_abandon is not None:
                in_background(on_abandon())


def in_background(work: Coroutine[Any, Any, object]) -> None:
    """Run ``work`` past the request that started it (e.g. cancelling the run of a client that
    left), keeping a reference so the task is not collected before it ends."""
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


# For the OpenAPI schema of every route that may answer with a stream.
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: one `data:` JSON item per event (with its `seq_id` as `id:`), "
        "ending with `data: [DONE]`",
        # Each event's data: a Letta message item (JSON), or the literal [DONE].
        "content": {"text/event-stream": {"schema": {}}},
    }
}


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def resume_response(
    state: AppState, conversation_id: str, run_id: str, *, after: int, include_pings: bool, retry_ms: int | None = None
) -> StreamingResponse:
    """What every resume route answers once it has found its run: the items after ``after``,
    the cursor checked first (``check_cursor``). Resuming never cancels: the reader may leave."""
    logs.bind(run_id=run_id, conversation_id=conversation_id)
    await check_cursor(state, conversation_id, run_id, after)
    return sse_response(run_events(state, conversation_id, run_id, after=after, include_pings=include_pings, retry_ms=retry_ms))


def stream_token_view(token: str, grant: StreamGrant, **scope: str) -> dict[str, Any]:
    """What a stream-token route answers: the token, when it expires, and what it opens."""
    expires = datetime.fromtimestamp(grant.expires_at_s, UTC)
    return {"token": token, "expires_at": expires.isoformat(), "expires_in_s": max(0, grant.expires_at_s - int(time.time())), **scope}
