"""Non-streaming answers: wait for a run's terminal item and build Letta's ``LettaResponse``.

A run answered this way is always step-streamed (``api.turns``), so its stream holds whole
messages, one per segment, as Letta's non-streaming reply does."""

from __future__ import annotations

import json
from typing import Any

from api.errors import RunErrorResponse, run_error_status
from api.state import AppState
from runtime.schemas.runs import RunView

NOT_MESSAGES = {"ping", "stop_reason", "usage_statistics"}


async def collect_response(state: AppState, run: RunView) -> dict[str, Any]:
    """Follow the run's stream to its end; the messages, stop reason and usage it produced."""
    messages: list[dict[str, Any]] = []
    stop_reason: dict[str, Any] = {"message_type": "stop_reason", "stop_reason": "error"}
    usage: dict[str, Any] = {"message_type": "usage_statistics"}
    error: dict[str, Any] | None = None
    async for got in state.follower.batches(run.conversation_id, run.id, after=0):
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
    if error is not None:
        raise RunErrorResponse(run_error_status(error["error_type"]), error)
    return {"messages": messages, "stop_reason": stop_reason, "usage": usage}
