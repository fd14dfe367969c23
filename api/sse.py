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
  ownerless for ``2 * stream_idle_timeout_s``, the reader gives up with an error item. No reader
  waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi.responses import StreamingResponse

from api.metrics import SSE_DISCONNECTS, SSE_ITEMS, SSE_STREAMS
from api.state import AppState
from runtime import bus, keys
from runtime.bus import StreamItem
from runtime.errors import InvalidRequestError, NotFoundError, RunFailure, StreamGoneError
from runtime.ids import new_id
from runtime.schemas.messages import Ping
from runtime.wire import encode, failure_items

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
_background: set[asyncio.Task[Any]] = set()


class StreamLost(RunFailure):
    error_type = "stream_lost"
    public_message = "The run's stream is no longer available; read its outcome with GET /v1/runs/{id}."


class StreamStalled(RunFailure):
    error_type = "stream_stalled"
    public_message = "The run produced nothing for too long and no process owns it; the reader gave up."


def frame(item: StreamItem, *, with_id: bool = True) -> bytes:
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
    stream_key = keys.run_stream(conversation_id, run_id)
    last = await bus.last_seq(state.redis, stream_key)
    if last == 0:
        if not await state.runs.raw(conversation_id, run_id):
            raise NotFoundError(f"run {run_id} not found")
        raise StreamGoneError(
            f"the stream of run {run_id} has expired (streams are kept {state.settings.stream_ttl_s} s after "
            "their last item); its outcome is still available with GET /v1/runs/{id}"
        )
    if after > last:
        raise InvalidRequestError(f"starting_after {after} is past the end of run {run_id} (last seq_id {last})")
    first = await bus.first_seq(state.redis, stream_key)
    if first is not None and first > after + 1:
        raise StreamGoneError(
            f"items {after + 1}..{first - 1} of run {run_id} were trimmed (streams keep at most "
            f"{state.settings.stream_maxlen} items); resume from starting_after={first - 1} or later"
        )


async def run_items(
    state: AppState, conversation_id: str, run_id: str, *, after: int
) -> AsyncIterator[tuple[StreamItem, bool] | None]:
    """``(item, stored)`` pairs after ``after``, ending with a terminal item; ``None`` marks each
    ``ping_interval_s`` of silence. ``stored`` is False for items the reader made up itself."""
    settings = state.settings
    if after > 0 and after == await bus.last_seq(state.redis, keys.run_stream(conversation_id, run_id)):
        last = await bus.read_after(state.redis, keys.run_stream(conversation_id, run_id), after - 1)
        if last and last[-1].terminal:
            return  # the client already has everything, [DONE] included
    sub = state.tailers.subscribe(keys.run_stream(conversation_id, run_id), after)
    last_item_at = time.monotonic()
    try:
        while True:
            batch = await sub.get(timeout_s=settings.ping_interval_s)
            if batch is None:
                yield None
                silent_s = time.monotonic() - last_item_at
                ending = await _stalled_ending(state, conversation_id, run_id, sub.cursor, silent_s)
                if ending is not None:
                    for item in ending:
                        yield item, False
                    return
                continue
            last_item_at = time.monotonic()
            for item in batch:
                yield item, True
                if item.terminal:
                    return
    finally:
        sub.close()


async def _stalled_ending(
    state: AppState, conversation_id: str, run_id: str, cursor: int, silent_s: float
) -> list[StreamItem] | None:
    """A terminal sequence to send if the run can no longer produce one itself, else None.

    A run's terminal items are written in the same atomic step as its terminal status, so a stream
    that still exists will deliver them unless nobody owns the run any more.
    """
    if not await state.redis.exists(keys.run_stream(conversation_id, run_id)):
        return _synthetic(run_id, cursor, StreamLost())
    idle_s = state.settings.stream_idle_timeout_s
    if silent_s > idle_s and await state.directory.owner(conversation_id) is None:
        status = (await state.runs.raw(conversation_id, run_id)).get("status")
        if status in ("created", "running"):
            if silent_s > 2 * idle_s:
                return _synthetic(run_id, cursor, StreamStalled(f"no item for {silent_s:.0f} s and no owner"))
            # Nobody holds the conversation: wake it, so its next owner ends or runs this run.
            try:
                await state.router.deliver(conversation_id)
            except Exception:  # still nobody: the next silence check tries again or gives up
                log.warning("could not wake a stalled conversation", extra={"run_id": run_id})
    return None


def _synthetic(run_id: str, cursor: int, failure: RunFailure) -> list[StreamItem]:
    return [StreamItem(seq, kind, payload) for seq, kind, payload in failure_items(run_id, cursor + 1, failure)]  # type: ignore[arg-type]


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
    retry = b"retry: %d\n" % retry_ms if retry_ms else b""
    SSE_STREAMS.inc()
    try:
        async for pair in run_items(state, conversation_id, run_id, after=after):
            if pair is None:
                if include_pings:
                    yield ping_frame(run_id)
                continue
            item, stored = pair
            SSE_ITEMS.inc()
            yield retry + frame(item, with_id=stored)
            retry = b""
            finished = item.terminal
        finished = True
    finally:
        SSE_STREAMS.dec()
        if not finished:
            SSE_DISCONNECTS.labels("foreground" if on_abandon else "background").inc()
            if on_abandon is not None:
                task = asyncio.get_running_loop().create_task(on_abandon())
                _background.add(task)
                task.add_done_callback(_background.discard)


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
