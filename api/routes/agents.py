"""``/v1/agents``: create, list, read, update and delete agents (Letta's ``AgentState`` shape),
and Letta's agent-level message routes, which use the agent's default conversation."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header
from fastapi.responses import Response

from api.cancel import cancel_conversation, cancel_run
from api.routes.conversations import send_message
from api.state import AppState, get_state
from api.validation import AgentId, AgentIdQuery, Limit
from runtime.errors import NotFoundError
from runtime.schemas.requests import (
    CancelRunsRequest,
    CreateAgentRequest,
    SendMessageRequest,
)

router = APIRouter(prefix="/v1/agents", tags=["agents"])
State = Annotated[AppState, Depends(get_state)]
IdempotencyKey = Annotated[str | None, Header(max_length=256)]


class AgentMessageRequest(SendMessageRequest):
    """Body of ``POST /v1/agents/{id}/messages``: as Letta, a JSON ``LettaResponse`` unless
    ``streaming`` is true (the conversation route streams by default)."""

    streaming: bool = False


class UpdateAgentRequest(CreateAgentRequest):
    """Body of ``PATCH /v1/agents/{id}``: the fields of a create; only the fields sent change.
    ``null`` clears ``description`` and ``metadata``; for the other fields it means "unchanged"."""

    def changes(self) -> dict[str, Any]:
        clearable = {"description", "metadata"}
        return {
            name: getattr(self, name)
            for name in self.model_fields_set
            if getattr(self, name) is not None or name in clearable
        }


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
        tools=state.tools.check(body.tools or []),
        memory_blocks=body.memory_blocks or [],
        context_window_limit=body.context_window_limit,
        max_tokens=body.max_tokens,
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


@router.patch("/{agent_id}", summary="Update an agent (name, system, model, description, tags, metadata)")
async def update_agent(agent_id: AgentId, body: UpdateAgentRequest, state: State) -> dict[str, Any]:
    """Later turns use the new values (an owner reads its agent at the start of every turn)."""
    changes = body.changes()
    if "model" in changes:
        state.providers.validate(changes["model"])
    if "tools" in changes:
        changes["tools"] = state.tools.check(changes["tools"])
    return (await state.agents.update(agent_id, changes)).state()


@router.delete("/{agent_id}", summary="Delete an agent and its conversations")
async def delete_agent(agent_id: AgentId, state: State) -> dict[str, Any]:
    """Cancels the agent's unfinished runs, then removes the agent, its conversations and their
    histories from records and indexes in one step. Its runs stay readable until they expire."""
    await state.agents.get(agent_id)
    runs = await _cancel_all(state, agent_id)
    await state.agents.delete(agent_id, epoch_ttl_s=state.settings.stream_ttl_s)
    return {"message": f"Agent id={agent_id} successfully deleted", "agent_id": agent_id, "runs": runs}


@router.post(
    "/{agent_id}/messages",
    summary="Send a message to the agent's default conversation; JSON unless streaming is true",
    response_model=None,
)
async def send_agent_message(
    agent_id: AgentId, body: AgentMessageRequest, state: State, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _send_to_default(state, agent_id, body, idempotency_key)


@router.post(
    "/{agent_id}/messages/stream",
    summary="Send a message to the agent's default conversation; always Server-Sent Events",
    response_model=None,
)
async def stream_agent_message(
    agent_id: AgentId, body: SendMessageRequest, state: State, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _send_to_default(state, agent_id, body.model_copy(update={"streaming": True}), idempotency_key)


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
    return {"agent_id": agent_id, "runs": await _cancel_all(state, agent_id)}


async def _send_to_default(
    state: AppState, agent_id: str, body: SendMessageRequest, idempotency_key: str | None
) -> Response:
    """Exactly what ``POST /v1/conversations/{id}/messages`` does, in the agent's default conversation."""
    conversation = await state.conversations.default_for(agent_id)
    return await send_message(conversation.id, body, state, idempotency_key)


async def _cancel_all(state: AppState, agent_id: str) -> dict[str, str]:
    """Cancel every unfinished run of every conversation of the agent; run id -> status."""
    runs: dict[str, str] = {}
    conversation_ids = await state.conversations.ids_of(agent_id)
    for cancelled in await asyncio.gather(*(cancel_conversation(state, c) for c in conversation_ids)):
        runs.update(cancelled)
    return runs
