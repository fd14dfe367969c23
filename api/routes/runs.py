"""``/v1/runs``: read and cancel runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.cancel import cancel_run
from api.state import AppState, get_state
from api.validation import RunId

router = APIRouter(prefix="/v1/runs", tags=["runs"])
State = Annotated[AppState, Depends(get_state)]


@router.get("/{run_id}", summary="Get a run")
async def get_run(run_id: RunId, state: State) -> dict[str, Any]:
    return (await state.runs.get(run_id)).model_dump(mode="json")


@router.post("/{run_id}/cancel", summary="Cancel a run (running or queued)")
async def cancel(run_id: RunId, state: State) -> dict[str, Any]:
    conversation_id = await state.runs.conversation_of(run_id)
    await cancel_run(state, conversation_id, run_id)
    return (await state.runs.get(run_id, conversation_id)).model_dump(mode="json")
