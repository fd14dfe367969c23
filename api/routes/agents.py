"""``/v1/agents``: create, list and read agents (Letta's ``AgentState`` shape)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from api.cancel import cancel_conversation, cancel_run
from api.state import AppState, get_state
from api.validation import AgentId, AgentIdQuery, Limit
from runtime.errors import NotFoundError
from runtime.schemas.requests import CancelRunsRequest, CreateAgentRequest

router = APIRouter(prefix="/v1/agents", tags=["agents"])
State = Annotated[AppState, Depends(get_state)]


@router.post("", summary="Create an agent")
@router.post("/", include_in_schema=False)
async def create_agent(body: CreateAgentRequest, state: State) -> dict[str, Any]:
    model = state.providers.validate(body.model) if body.model else state.settings.resolved_default_model()
    record = await state.agents.create(
        name=body.name,
        model=model,
        system=body.system or "",
        description=body.description,
        tags=body.tags or [],
        metadata=body.metadata,
    )
    return record.state()


@router.get("", summary="List agents")
@router.get("/", include_in_schema=False)
async def list_agents(
    state: State,
    limit: Limit = 50,
    after: AgentIdQuery | None = None,
) -> list[dict[str, Any]]:
    return [record.state() for record in await state.agents.list(limit=limit, after=after)]


@router.get("/{agent_id}", summary="Get an agent")
async def get_agent(agent_id: AgentId, state: State) -> dict[str, Any]:
    return (await state.agents.get(agent_id)).state()


@router.post("/{agent_id}/messages/cancel", summary="Cancel the agent's running and queued runs")
async def cancel_agent_runs(
    agent_id: AgentId, state: State, body: Annotated[CancelRunsRequest | None, Body()] = None
) -> dict[str, Any]:
    """All unfinished runs of all the agent's conversations, or only ``run_ids`` when given."""
    await state.agents.get(agent_id)
    runs: dict[str, str] = {}
    if body is not None and body.run_ids:
        for run_id in body.run_ids:
            conversation_id = await state.runs.conversation_of(run_id)
            if (await state.runs.get(run_id, conversation_id)).agent_id != agent_id:
                raise NotFoundError(f"run {run_id} not found for agent {agent_id}")
            runs[run_id] = await cancel_run(state, conversation_id, run_id)
        return {"agent_id": agent_id, "runs": runs}
    for conversation in await state.conversations.list(agent_id=agent_id, limit=1000):
        runs.update(await cancel_conversation(state, conversation.id))
    return {"agent_id": agent_id, "runs": runs}
