"""``/v1/runs``: read a run."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.state import AppState, get_state
from api.validation import RunId

router = APIRouter(prefix="/v1/runs", tags=["runs"])
State = Annotated[AppState, Depends(get_state)]


@router.get("/{run_id}", summary="Get a run")
async def get_run(run_id: RunId, state: State) -> dict[str, Any]:
    return (await state.runs.get(run_id)).model_dump(mode="json")
