"""``/v1/agents``: create, list, read, update and delete agents (Letta's ``AgentState`` shape),
and Letta's agent-level message routes, which use the agent's default conversation."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import Response

from api.auth import Caller
from api.model_settings import check_agent, check_agent_update
from api.routes.conversations import send
from api.sse import SSE_RESPONSES
from api.state import AppState, State
from api.validation import AgentId, AgentIdQuery, ConversationIdQuery, Limit, MessageIdQuery
from runtime.errors import NotFoundError
from runtime.schemas.auth import Principal
from runtime.schemas.requests import (
    CancelRunsRequest,
    CreateAgentRequest,
    SendMessageRequest,
)
from runtime.store.agents import default_conversation_id

router = APIRouter(prefix="/v1/agents", tags=["agents"])
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
async def create_agent(body: CreateAgentRequest, state: State, caller: Caller) -> dict[str, Any]:
    model = state.providers.validate(body.model) if body.model else state.settings.resolved_default_model()
    check_agent(state, model=model, settings=body.model_settings, max_tokens=body.max_tokens)
    record = await state.agents.create(
        tenant=caller.tenant,
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
        model_settings=body.model_settings,
    )
    return record.state()


@router.get("", summary="List agents")
@router.get("/", include_in_schema=False)
async def list_agents(
    state: State,
    caller: Caller,
    limit: Limit = 50,
    after: AgentIdQuery | None = None,
) -> list[dict[str, Any]]:
    return [record.state() for record in await state.agents.list(tenant=caller.tenant, limit=limit, after=after)]


@router.get("/{agent_id}", summary="Get an agent")
async def get_agent(agent_id: AgentId, state: State, caller: Caller) -> dict[str, Any]:
    return (await state.agents.get(agent_id, tenant=caller.tenant)).state()


@router.patch("/{agent_id}", summary="Update an agent (name, system, model, model settings, description, tags, metadata)")
async def update_agent(agent_id: AgentId, body: UpdateAgentRequest, state: State, caller: Caller) -> dict[str, Any]:
    """Later turns use the new values (an owner reads its agent at the start of every turn).
    ``model_settings`` is replaced as a whole (``{}`` clears it) and checked, with the agent's model,
    against the agent's conversations too (``api.model_settings``)."""
    current = await state.agents.get(agent_id, tenant=caller.tenant)
    changes = body.changes()
    if "model" in changes:
        state.providers.validate(changes["model"])
    if "tools" in changes:
        changes["tools"] = state.tools.check(changes["tools"])
    if changes.keys() & {"model", "model_settings", "max_tokens"}:
        await check_agent_update(state, current.model_copy(update=changes))
    return (await state.agents.update(agent_id, changes)).state()


@router.delete("/{agent_id}", summary="Delete an agent and its conversations")
async def delete_agent(agent_id: AgentId, state: State, caller: Caller) -> dict[str, Any]:
    """Cancels the agent's unfinished runs, then removes the agent, its conversations and their
    histories from records and indexes in one step. Its runs stay readable until they expire."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    runs = await _cancel_all(state, agent_id)
    await state.agents.delete(agent_id, epoch_ttl_s=state.settings.stream_ttl_s)
    return {"message": f"Agent id={agent_id} successfully deleted", "agent_id": agent_id, "runs": runs}


@router.post(
    "/{agent_id}/messages",
    summary="Send a message to the agent's default conversation; JSON unless streaming is true",
    response_model=None,
    responses=SSE_RESPONSES,
)
async def send_agent_message(
    agent_id: AgentId, body: AgentMessageRequest, state: State, caller: Caller, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _send_to_default(state, caller, agent_id, body, idempotency_key)


@router.post(
    "/{agent_id}/messages/stream",
    summary="Send a message to the agent's default conversation; always Server-Sent Events",
    response_model=None,
    response_class=Response,
    responses=SSE_RESPONSES,
)
async def stream_agent_message(
    agent_id: AgentId, body: SendMessageRequest, state: State, caller: Caller, idempotency_key: IdempotencyKey = None
) -> Response:
    streaming = body.model_copy(update={"streaming": True})
    return await _send_to_default(state, caller, agent_id, streaming, idempotency_key)


@router.get("/{agent_id}/messages", summary="List the messages of the agent's default conversation (or of conversation_id)")
async def list_agent_messages(
    agent_id: AgentId,
    state: State,
    caller: Caller,
    conversation_id: ConversationIdQuery | None = None,
    limit: Limit = 100,
    after: MessageIdQuery | None = None,
    before: MessageIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> list[dict[str, Any]]:
    """Newest first unless ``order=asc``, as Letta. The default conversation needs no creating to
    be read: before the agent's first message it simply has no history."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    if conversation_id is not None:
        conversation = await state.conversations.get(conversation_id, tenant=caller.tenant)
        if conversation.agent_id != agent_id:
            raise NotFoundError(f"conversation {conversation_id} not found for agent {agent_id}")
    target = conversation_id or default_conversation_id(agent_id)
    messages = await state.history.page(target, limit=limit, after=after, before=before, order=order)
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


@router.post("/{agent_id}/messages/cancel", summary="Cancel the agent's running and queued runs")
async def cancel_agent_runs(
    agent_id: AgentId, state: State, caller: Caller, body: Annotated[CancelRunsRequest | None, Body()] = None
) -> dict[str, Any]:
    """All unfinished runs of all the agent's conversations, or only ``run_ids`` when given."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    runs: dict[str, str] = {}
    if body is not None and body.run_ids:
        for run_id in body.run_ids:
            conversation_id = await state.runs.conversation_of(run_id)
            if (await state.runs.get(run_id, conversation_id, tenant=caller.tenant)).agent_id != agent_id:
                raise NotFoundError(f"run {run_id} not found for agent {agent_id}")
            runs[run_id] = await state.client.cancel_run(conversation_id, run_id)
        return {"agent_id": agent_id, "runs": runs}
    return {"agent_id": agent_id, "runs": await _cancel_all(state, agent_id)}


async def _send_to_default(
    state: AppState, caller: Principal, agent_id: str, body: SendMessageRequest, idempotency_key: str | None
) -> Response:
    """Exactly what ``POST /v1/conversations/{id}/messages`` does, in the agent's default conversation."""
    conversation = await state.conversations.default_of(agent_id, tenant=caller.tenant)
    return await send(state, caller, conversation.ref(), body, idempotency_key)


async def _cancel_all(state: AppState, agent_id: str) -> dict[str, str]:
    """Cancel every unfinished run of every conversation of the agent; run id -> status."""
    runs: dict[str, str] = {}
    conversation_ids = await state.conversations.ids_of(agent_id)
    for cancelled in await asyncio.gather(*(state.client.cancel_conversation(c) for c in conversation_ids)):
        runs.update(cancelled)
    return runs
