"""Non-streaming answers: a run followed to its end (``RunFollower.outcome``) as Letta's
``LettaResponse``, or, when it failed, an HTTP error carrying its error item.

A run answered this way is always step-streamed (``api.turns``), so its stream holds whole
messages, one per segment, as Letta's non-streaming reply does."""

from __future__ import annotations

from typing import Any

from api.errors import RunErrorResponse, run_error_status
from api.state import AppState
from runtime.schemas.runs import RunView


async def collect_response(state: AppState, run: RunView) -> dict[str, Any]:
    """The messages, stop reason and usage the run produced, once it has ended."""
    ended = await state.follower.outcome(run.conversation_id, run.id)
    if ended.error is not None:
        raise RunErrorResponse(run_error_status(ended.error["error_type"]), ended.error)
    return {"messages": ended.messages, "stop_reason": ended.stop_reason, "usage": ended.usage}
