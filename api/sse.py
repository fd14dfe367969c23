"""Serving a run's Redis stream as Server-Sent Events: the framing, the response, its cancellation.

Every stored item becomes one SSE event with ``id: <seq>`` (so a browser ``EventSource`` resumes
by itself with ``Last-Event-ID``); error items add ``event: error``; the terminal item is
``data: [DONE]``, after which the response closes. Items the follower makes up itself (keepalive
pings, a give-up error) carry no ``id:``: they are not in Redis and must not move a cursor.
Convoy never sends SSE comments or empty events (the Letta SDK's decoder cannot parse them once
it has seen an ``id:``). The items come from ``actors.follow.RunFollower``, which decides when a
silent run has ended or will never end; this module only frames them.

Cancellation flows (one task per response; the first of these to happen ends it):

- the terminal item arrives: sent, then the generator returns and the response closes;
- the client disconnects: Starlette cancels the response, ``finally`` closes the subscription
  and, for a foreground request (``background: false``) whose run has not ended, cancels the run;
- silence: every ``ping_interval_s`` a keepalive ``ping`` is sent (when asked for) and the
  follower checks the run: a stream that vanished, a run that stays ownerless, or a Redis that
  stays unreachable ends the response with an error item (``actors.follow``). No reader waits
  forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import Response, StreamingResponse

from api.metrics import SSE_DISCONNECTS, SSE_ITEMS, SSE_STREAMS
from api.state import AppState
from runtime import logs
from runtime.ids import new_id
from runtime.schemas.messages import Ping
from runtime.store.stream_tokens import StreamGrant
from runtime.stream.items import StoredItem
from runtime.stream.wire import encode

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
_background: set[asyncio.Task[Any]] = set()


def frame(item: StoredItem, *, with_id: bool = True) -> bytes:
    head = b"id: %d\n" % item.seq if with_id else b""
    if item.kind == "done":
        return head + b"data: [DONE]\n\n"
    event = b"event: error\n" if item.kind == "error" else b""
    return head + event + b"data: " + item.payload + b"\n\n"


def ping_frame(run_id: str) -> bytes:
    return b"data: " + encode(Ping(id=f"ping-{new_id('message')[8:]}", run_id=run_id)) + b"\n\n"


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
        async for got in state.follower.batches(conversation_id, run_id, after=after):
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
) -> Response:
    """What every resume route answers once it has found its run: the items after ``after``,
    the cursor checked first (``RunFollower.check_cursor``). Resuming never cancels: the reader may leave.

    ``retry_ms`` (an ``EventSource``'s route): a cursor at the end of a run that has ended gets
    204 No Content, which tells an ``EventSource`` to stop reconnecting (an empty stream would make
    it reconnect for ever)."""
    logs.bind(run_id=run_id, conversation_id=conversation_id)
    ended = await state.follower.check_cursor(conversation_id, run_id, after)
    if ended and retry_ms is not None:
        return Response(status_code=204)
    return sse_response(run_events(state, conversation_id, run_id, after=after, include_pings=include_pings, retry_ms=retry_ms))


def stream_token_view(token: str, grant: StreamGrant, **scope: str) -> dict[str, Any]:
    """What a stream-token route answers: the token, when it expires, and what it opens."""
    expires = datetime.fromtimestamp(grant.expires_at_s, UTC)
    return {"token": token, "expires_at": expires.isoformat(), "expires_in_s": max(0, grant.expires_at_s - int(time.time())), **scope}
