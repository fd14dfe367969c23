"""Cancelling runs, out of band: never through the mailbox, never waiting for the next chunk.

- A queued run (``created``) is ended here, in one atomic step with its cancel items and the
  removal of its mailbox entry; if its owner started it in the meantime that step fails and we
  fall through to the running case.
- A running run is cancelled at its owner (a direct Ray call to the host), which cancels the
  turn's task at once and so closes the provider's stream.
- Either way the run is first marked ``cancel_requested``, so an owner that is about to start it
  ends it as cancelled instead.
- The run of a foreground client that left is cancelled in the background (``cancel_abandoned``),
  waiting for Redis as long as the run's owner would (``CONVOY_STORE_OUTAGE_S``): a client that
  leaves during a Redis outage must not leave its run to complete.
"""

from __future__ import annotations

import asyncio

from api.state import AppState
from runtime.store import keyspace
from runtime.store.runs import through_outage
from runtime.stream import wire
from runtime.stream.items import last_seq

TERMINAL = ("completed", "failed", "cancelled")
WAIT_TERMINAL_S = 10.0


async def cancel_run(state: AppState, conversation_id: str, run_id: str) -> str:
    """Cancel one run; returns its status afterwards (``cancelled``, or another terminal status
    if it finished first, or ``running`` if the owner could not be reached yet)."""
    raw = await state.runs.raw(conversation_id, run_id)
    status = raw.get("status", "")
    if status in TERMINAL or not status:
        return status
    await state.runs.request_cancel(conversation_id, run_id)
    if status == "created":
        first = await last_seq(state.redis, keyspace.run_stream(conversation_id, run_id)) + 1
        ended = await state.runs.finish(
            run_id,
            conversation_id=conversation_id,
            status="cancelled",
            stop_reason="cancelled",
            fence=None,
            expect="created",
            items=wire.cancel_items(run_id, first),
            mailbox_entry=raw.get("mailbox_entry", ""),
        )
        if ended:
            return "cancelled"
    await state.router.cancel(conversation_id, run_id, raw.get("owner") or None)
    return await wait_terminal(state, conversation_id, run_id)


async def cancel_abandoned(state: AppState, conversation_id: str, run_id: str) -> str:
    """``cancel_run`` for a foreground client that left, done again while Redis is unreachable
    (every step of it can be done twice) for up to ``CONVOY_STORE_OUTAGE_S``."""
    return await through_outage(
        lambda: cancel_run(state, conversation_id, run_id),
        patience_s=state.settings.store_outage_s,
        what="cancelling the run of a client that left",
    )


async def wait_terminal(state: AppState, conversation_id: str, run_id: str, timeout_s: float = WAIT_TERMINAL_S) -> str:
    """The run's status once terminal, or its current status after ``timeout_s``."""
    stream_key = keyspace.run_stream(conversation_id, run_id)
    sub = state.tailers.subscribe(stream_key, max(0, await last_seq(state.redis, stream_key) - 1))
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while True:
            status = (await state.runs.raw(conversation_id, run_id)).get("status", "")
            remaining = deadline - asyncio.get_running_loop().time()
            if status in TERMINAL or remaining <= 0:
                return status
            batch = await sub.get(timeout_s=min(remaining, 1.0))
            if batch and any(item.terminal for item in batch):
                return (await state.runs.raw(conversation_id, run_id)).get("status", "")
    finally:
        sub.close()


async def cancel_conversation(state: AppState, conversation_id: str) -> dict[str, str]:
    """Cancel every unfinished run of a conversation (running and queued), then close an approval
    request still waiting (its calls get error results in the next request), so the conversation
    is never stuck; run id -> status."""
    run_ids = await state.mailbox.run_ids(conversation_id)
    statuses = await asyncio.gather(*(cancel_run(state, conversation_id, r) for r in run_ids))
    await state.redis.delete(keyspace.pending_approval(conversation_id))
    return dict(zip(run_ids, statuses, strict=True))


async def cancel_ahead_of(state: AppState, conversation_id: str, entry_id: str) -> None:
    """For ``on_busy=interrupt``: cancel everything accepted before mailbox entry ``entry_id``
    (compared by entry id, so messages accepted after it are never touched)."""
    ahead = await state.mailbox.run_ids(conversation_id, before=entry_id)
    await asyncio.gather(*(cancel_run(state, conversation_id, r) for r in ahead))
