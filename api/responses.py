"""Non-streaming answers: wait for a run's terminal item and build Letta's ``LettaResponse``."""

from __future__ import annotations

import json
from typing import Any

from api.errors import RunErrorResponse, run_error_status
from api.sse import run_batches
from api.state import AppState
from runtime.schemas.runs import RunView

NOT_MESSAGES = {"ping", "stop_reason", "usage_statistics"}


async def collect_response(state: AppState, run: RunView) -> dict[str, Any]:
    """Follow the run's stream to its end; the messages, stop reason and usage it produced."""
    messages: list[dict[str, Any]] = []
    stop_reason: dict[str, Any] = {"message_type": "stop_reason", "stop_reason": "error"}
    usage: dict[str, Any] = {"message_type": "usage_statistics"}
    error: dict[str, Any] | None = None
    async for got in run_batches(state, run.conversation_id, run.id, after=0):
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
    return {"messages": _merge(messages), "stop_reason": stop_reason, "usage": usage}


def _merge(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Token deltas of one message (same id and otid) joined into one message."""
    merged: list[dict[str, Any]] = []
    for doc in deltas:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.get("id") == doc.get("id")
            and last.get("otid") == doc.get("otid")
            and last.get("message_type") == doc.get("message_type")
            and isinstance(last.get("content"), str)
            and isinstance(doc.get("content"), str)
        ):
            last["content"] += doc["content"]
        else:
            merged.append(dict(doc))
    return merged
