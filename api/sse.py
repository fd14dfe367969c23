"""Serving a run's Redis stream as Server-Sent Events.

Every stored item becomes one SSE event with ``id: <seq>`` (so a browser ``EventSource`` resumes
by itself with ``Last-Event-ID``); error items add ``event: error``; the terminal item is
``data: [DONE]``, after which the response closes.

Cancellation flows (one task per response; the first of these to happen ends it):

- the terminal item arrives: sent, then the generator returns and the response closes;
- the client disconnects: Starlette stops iterating, ``finally`` closes the subscription;
- silence: after ``ping_interval_s`` without items a keepalive ``ping`` (no ``id:``, so it does not
  move the resume cursor) is sent, and the run is checked: if it already ended but its stream
  lacks a terminal item, or the stream is gone, a terminal error sequence is synthesized, so no
  reader waits forever.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from api.state import AppState
from runtime import keys
from runtime.bus import StreamItem
from runtime.errors import RunFailure
from runtime.ids import new_id
from runtime.schemas.messages import Ping
from runtime.wire import encode, failure_items

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


class StreamLost(RunFailure):
    error_type = "stream_lost"
    public_message = "The run's stream is no longer available; its result may be read with GET /v1/runs/{id}."


def frame(item: StreamItem) -> bytes:
    if item.kind == "done":
        return b"id: %d\ndata: [DONE]\n\n" % item.seq
    event = b"event: error\n" if item.kind == "error" else b""
    return b"id: %d\n%sdata: %s\n\n" % (item.seq, event, item.payload)


def ping_frame(run_id: str) -> bytes:
    return b"data: " + encode(Ping(id=f"ping-{new_id('message')[8:]}", run_id=run_id)) + b"\n\n"


async def run_items(
    state: AppState, conversation_id: str, run_id: str, *, after: int
) -> AsyncIterator[StreamItem | None]:
    """The run's items after ``after``, ending with its terminal item; ``None`` marks each
    ``ping_interval_s`` of silence (the caller decides whether to send a keepalive)."""
    settings = state.settings
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
                        yield item
                    return
                continue
            last_item_at = time.monotonic()
            for item in batch:
                yield item
                if item.terminal:
                    return
    finally:
        sub.close()


async def run_events(
    state: AppState, conversation_id: str, run_id: str, *, after: int, include_pings: bool
) -> AsyncIterator[bytes]:
    async for item in run_items(state, conversation_id, run_id, after=after):
        if item is not None:
            yield frame(item)
        elif include_pings:
            yield ping_frame(run_id)


async def _stalled_ending(
    state: AppState, conversation_id: str, run_id: str, cursor: int, silent_s: float
) -> list[StreamItem] | None:
    """A terminal sequence to send if the run can no longer produce one itself, else None.

    A run's terminal items are written in the same atomic step as its terminal status, so a stream
    that still exists will deliver them; only a vanished stream (expired, deleted) needs one made up.
    """
    if not await state.redis.exists(keys.run_stream(conversation_id, run_id)):
        return _synthetic(run_id, cursor)
    if silent_s > state.settings.stream_idle_timeout_s and await state.directory.owner(conversation_id) is None:
        status = (await state.runs.raw(conversation_id, run_id)).get("status")
        if status in ("created", "running"):
            # Nobody holds the conversation: wake it, so its next owner ends or runs this run.
            await state.router.deliver(conversation_id)
    return None


def _synthetic(run_id: str, cursor: int) -> list[StreamItem]:
    return [StreamItem(seq, kind, payload) for seq, kind, payload in failure_items(run_id, cursor + 1, StreamLost())]  # type: ignore[arg-type]


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
