"""``/v1/agents``: create, list, read, update and delete agents (Letta's ``AgentState`` shape),
and Letta's agent-level message routes, which use the agent's default conversation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import Response
from pydantic import AnyHttpUrl, Field, UrlConstraints, model_validator

from api.auth import Caller
from api.callbacks import Owed
from api.errors import RunErrorResponse
from api.responses import collect_response
from api.routes.conversations import send
from api.routes.tools import tool_view
from api.sse import SSE_RESPONSES
from api.state import AppState, State
from api.turns import accept_turn
from api.validation import AgentId, AgentIdQuery, ConversationIdQuery, GroupIdQuery, Limit, MessageIdQuery, no_groups
from runtime.agent.context import HISTORY_WINDOW, overview
from runtime.errors import ConflictError, InvalidRequestError, NotFoundError
from runtime.letta import listings
from runtime.letta.listings import system_message_id
from runtime.letta.model_checks import check_agent, check_agent_update, check_window
from runtime.schemas.agents import AgentRecord
from runtime.schemas.auth import Principal
from runtime.schemas.requests import (
    MAX_NAME_CHARS,
    MAX_TAGS,
    TOOL_RULE,
    CancelRunsRequest,
    CreateAgentRequest,
    MessageType,
    SendMessageRequest,
)
from runtime.schemas.runs import RunView, StopReason
from runtime.store.agents import default_conversation_id
from runtime.tools.turn import Toolbox

router = APIRouter(prefix="/v1/agents", tags=["agents"])
IdempotencyKey = Annotated[str | None, Header(max_length=256)]
T = TypeVar("T")


class AgentMessageRequest(SendMessageRequest):
    """Body of ``POST /v1/agents/{id}/messages``: as Letta, a JSON ``LettaResponse`` unless
    ``streaming`` is true (the conversation route streams by default)."""

    streaming: bool = False

    @model_validator(mode="after")
    def _streaming_options(self) -> AgentMessageRequest:
        if not self.streaming and (self.stream_tokens or self.background):
            raise ValueError(
                "Streaming options set without streaming enabled: stream_tokens and background apply only "
                "with streaming: true"
            )
        return self


# What an update stores as it comes (tools, tool rules and model settings are worked out first).
STORED_FIELDS = frozenset(
    {"name", "model", "system", "description", "tags", "metadata", "memory_blocks", "context_window_limit", "max_tokens",
     "model_settings", "timezone"}
)  # fmt: skip
RUN_FIELDS = ("last_run_completion", "last_run_duration_ms", "last_stop_reason")


class UpdateAgentRequest(CreateAgentRequest):
    """Body of ``PATCH /v1/agents/{id}`` (Letta's ``UpdateAgent``): the fields of a create; only the
    fields sent change. ``null`` clears ``description`` and ``metadata``; for the other fields it
    means "unchanged". ``initial_message_sequence`` (not in Letta's update) is refused unless
    empty: a history is started only when the agent is created. Letta's update-only fields:
    ``message_ids`` only as the agent has them (``update_agent``); the last run's fields and
    ``hidden: true`` are refused; ``project_id``, ``template_id`` and ``base_template_id`` are
    Letta Cloud's bookkeeping, ignored."""

    message_ids: Annotated[list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]], Field(max_length=HISTORY_WINDOW + 1)] | None = None
    hidden: bool | None = None
    last_run_completion: datetime | None = None
    last_run_duration_ms: int | None = None
    last_stop_reason: Annotated[str, Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _settable(self) -> UpdateAgentRequest:
        refused = []
        kept = [name for name in RUN_FIELDS if getattr(self, name) is not None]
        if kept:
            refused.append(f"{', '.join(kept)}: Convoy keeps the last run's fields from the agent's runs; they cannot be set")
        if self.hidden:
            refused.append("hidden: Convoy lists every agent; leave it out or false")
        if self.initial_message_sequence:
            refused.append(
                "initial_message_sequence: an agent's history is started only when it is created; send the messages "
                "to the agent instead (agents.messages.create)"
            )
        if refused:
            raise ValueError(". ".join(refused))
        return self

    def changes(self) -> dict[str, Any]:
        clearable = {"description", "metadata"}
        return {
            name: getattr(self, name)
            for name in self.model_fields_set & STORED_FIELDS
            if getattr(self, name) is not None or name in clearable
        }


@router.post("", summary="Create an agent")
@router.post("/", include_in_schema=False)
async def create_agent(body: CreateAgentRequest, state: State, caller: Caller) -> dict[str, Any]:
    """``initial_message_sequence`` becomes the start of the agent's own history (its default
    conversation, created here); if it cannot be written, the agent is deleted again and the
    request fails, so no agent is left without the history asked for."""
    model = state.providers.validate(body.model) if body.model else state.settings.resolved_default_model()
    settings = body.settings_over(body.model_settings)
    check_agent(state.providers, model=model, settings=settings, max_tokens=body.max_tokens)
    tools = state.tools.check(body.tool_names() or [])
    record = await state.agents.create(
        tenant=caller.tenant,
        name=body.name,
        model=model,
        system=body.system or "",
        description=body.description,
        tags=body.tags or [],
        metadata=body.metadata,
        tools=tools,
        tool_approvals=body.tool_approvals(tools) or {},
        memory_blocks=body.memory_blocks or [],
        context_window_limit=body.context_window_limit,
        max_tokens=body.max_tokens,
        model_settings=settings,
        timezone=body.timezone,
    )
    if body.initial_message_sequence:
        try:
            await state.client.start_history(record, [m.stored() for m in body.initial_message_sequence])
        except BaseException:
            await state.client.delete_agent(record.id)
            raise
    return await agent_state(state, record)


ListInclude = Literal[
    "agent.blocks", "agent.identities", "agent.managed_group", "agent.pending_approval", "agent.secrets", "agent.sources",
    "agent.tags", "agent.tools",
]  # fmt: skip
UNHELD_FILTERS = {
    "identity_id": "identities",
    "identifier_keys": "identities",
    "template_id": "templates",
    "base_template_id": "templates",
    "created_by_id": "users (an API key is a tenant, not a user)",
}
IdFilter = Annotated[str | None, Query(max_length=256)]


@router.get("", summary="List agents")
@router.get("/", include_in_schema=False)
async def list_agents(
    state: State,
    caller: Caller,
    limit: Limit = 50,
    after: AgentIdQuery | None = None,
    before: AgentIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"] | None, Query()] = None,
    order_by: Annotated[listings.AgentOrderBy | None, Query()] = None,
    ascending: Annotated[bool | None, Query(deprecated=True)] = None,
    sort_by: Annotated[listings.AgentOrderBy | None, Query(deprecated=True)] = None,
    name: Annotated[str | None, Query(max_length=MAX_NAME_CHARS)] = None,
    query_text: Annotated[str | None, Query(max_length=MAX_NAME_CHARS)] = None,
    tags: Annotated[list[Annotated[str, Query(max_length=MAX_NAME_CHARS)]] | None, Query(max_length=MAX_TAGS)] = None,
    match_all_tags: bool = False,
    last_stop_reason: StopReason | None = None,
    include: Annotated[list[ListInclude] | None, Query(max_length=16)] = None,
    include_relationships: Annotated[list[Annotated[str, Query(max_length=64)]] | None, Query(max_length=16)] = None,
    project_id: IdFilter = None,
    identity_id: IdFilter = None,
    identifier_keys: Annotated[list[Annotated[str, Query(max_length=256)]] | None, Query(max_length=16)] = None,
    template_id: IdFilter = None,
    base_template_id: IdFilter = None,
    created_by_id: IdFilter = None,
) -> list[dict[str, Any]]:
    """Newest first unless ``order=asc`` (deprecated: ``ascending``), by creation unless
    ``order_by`` (deprecated: ``sort_by``) says ``updated_at`` or ``last_run_completion`` (never
    run: last; ``runtime.letta.listings``); ``after``/``before``: agent ids. ``name``: only agents
    of that name; ``query_text``: whose name holds it (case-insensitive); ``tags``: with any of
    them (all of them with ``match_all_tags``); ``last_stop_reason``: whose last run ended so.
    ``include=agent.pending_approval`` adds each agent's pending approval. Blocks, tags, tools and
    sources are always included, whatever ``include`` or the legacy ``include_relationships`` say.
    ``project_id`` names no subset: Convoy has no projects, a tenant's agents are all one's. The
    filters on identities, templates and creators are refused: Convoy has none of them."""
    unheld = {
        "identity_id": identity_id,
        "identifier_keys": identifier_keys,
        "template_id": template_id,
        "base_template_id": base_template_id,
        "created_by_id": created_by_id,
    }
    sent = [f"{param} (Convoy has no {UNHELD_FILTERS[param]})" for param, value in unheld.items() if value]
    if sent:
        raise InvalidRequestError(f"Cannot filter agents by {', '.join(sent)}: leave it out, or filter by name, query_text or tags")
    found, last = await listings.find_agents(
        state.agents,
        state.runs,
        tenant=caller.tenant,
        limit=limit,
        after=after,
        before=before,
        order=_either("order", order, "ascending", None if ascending is None else "asc" if ascending else "desc") or "desc",
        order_by=_either("order_by", order_by, "sort_by", sort_by) or "created_at",
        name=name,
        query_text=query_text,
        tags=tags,
        match_all_tags=match_all_tags,
        last_stop_reason=last_stop_reason,
    )
    pending = "agent.pending_approval" in (include or ())
    return list(
        await asyncio.gather(
            *(agent_state(state, r, message_ids=False, pending_approval=pending, last_runs=last) for r in found)
        )
    )


def _either(name: str, value: T | None, deprecated: str, old: T | None) -> T | None:
    """A parameter given by its name or its deprecated one; 400 if both, saying different things."""
    if value is not None and old is not None and value != old:
        raise InvalidRequestError(f"{name}={value} and {deprecated} (deprecated) say different things: send {name} alone")
    return value if value is not None else old


@router.get("/{agent_id}", summary="Get an agent")
async def get_agent(
    agent_id: AgentId,
    state: State,
    caller: Caller,
    include: Annotated[list[Annotated[str, Query(max_length=64)]] | None, Query(max_length=16)] = None,
) -> dict[str, Any]:
    """With ``include=agent.pending_approval``: the approval request the agent's own history waits
    on (null when none). Tools, tags and memory blocks are always included."""
    record = await state.agents.get(agent_id, tenant=caller.tenant)
    return await agent_state(state, record, pending_approval="agent.pending_approval" in (include or ()))


async def agent_state(
    state: AppState,
    agent: AgentRecord,
    *,
    pending_approval: bool = False,
    message_ids: bool = True,
    last_runs: Mapping[str, RunView | None] | None = None,
) -> dict[str, Any]:
    """The agent as Letta's ``AgentState``, with what only the registry, the runs and the history
    know: its tools and approval rules, ``message_ids`` (its own history's system message, then the
    messages the model is shown; null in listings, where reading every agent's history would cost
    too much), and its last finished run's stop reason and time (from ``last_runs`` when it has the
    agent's: what a listing sorted or filtered by)."""
    conversation_id = default_conversation_id(agent.id)
    known: Mapping[str, RunView | None] = last_runs if last_runs is not None and agent.id in last_runs else {}
    ids, lasts, pending = await asyncio.gather(
        state.history.recent_ids(conversation_id, limit=HISTORY_WINDOW) if message_ids else asyncio.sleep(0, None),
        asyncio.sleep(0, known) if known else listings.last_runs(state.runs, [agent.id], of="agent", tenant=agent.tenant),
        state.client.pending_approval(conversation_id) if pending_approval else asyncio.sleep(0, None),
    )
    last = lasts[agent.id]
    tools = [(tool, agent.tool_approvals.get(name, tool.requires_approval)) for name in agent.tools if (tool := state.tools.get(name))]
    extra: dict[str, Any] = {
        "tools": [tool_view(tool, requires_approval=approves) for tool, approves in tools],
        "tool_rules": [{"type": TOOL_RULE, "tool_name": tool.name} for tool, approves in tools if approves],
        "message_ids": [system_message_id(conversation_id), *ids] if ids is not None else None,
        "last_stop_reason": last.stop_reason if last else None,
        "last_run_completion": last.completed_at.isoformat() if last and last.completed_at else None,
        "last_run_duration_ms": last.total_duration_ns // 1_000_000 if last and last.total_duration_ns else None,
    }
    if pending_approval:
        extra["pending_approval"] = pending.model_dump(mode="json", exclude_none=True) if pending else None
    return agent.state(**extra)


@router.patch("/{agent_id}", summary="Update an agent (name, system, model, model settings, description, tags, metadata)")
async def update_agent(agent_id: AgentId, body: UpdateAgentRequest, state: State, caller: Caller) -> dict[str, Any]:
    """Later turns use the new values (an owner reads its agent at the start of every turn).
    ``model_settings`` is replaced as a whole (``{}`` clears it) and checked, with the agent's model,
    against the agent's conversations too (``runtime.letta.model_checks``); the settings that
    ``llm_config`` and the deprecated ``parallel_tool_calls`` and ``response_format`` give are set
    over it (or over the agent's, when it is not sent), field by field."""
    current = await state.agents.get(agent_id, tenant=caller.tenant)
    if body.message_ids is not None:
        held = await state.history.recent_ids(default_conversation_id(agent_id), limit=HISTORY_WINDOW)
        if body.message_ids != [system_message_id(default_conversation_id(agent_id)), *held]:
            raise InvalidRequestError(
                "message_ids cannot be changed: the model is shown the newest messages of a conversation that fit "
                "the context window; to start afresh, create a conversation (conversations.create)"
            )
    changes = body.changes()
    if "model" in changes:
        state.providers.validate(changes["model"])
    if body.implied_settings():
        changes["model_settings"] = body.settings_over(changes.get("model_settings", current.model_settings))
    names = body.tool_names()
    if names is not None:
        changes["tools"] = state.tools.check(names)
    tools = changes.get("tools", current.tools)
    approvals = body.tool_approvals(tools)
    if approvals is not None:
        changes["tool_approvals"] = approvals
    updated = current.model_copy(update=changes)
    if changes.keys() & {"context_window_limit", "max_tokens", "model_settings"}:
        check_window(updated)
    if changes.keys() & {"model", "model_settings", "max_tokens"}:
        await check_agent_update(state.providers, state.conversations, updated)
    return await agent_state(state, await state.agents.update(agent_id, changes))


@router.delete("/{agent_id}", summary="Delete an agent and its conversations")
async def delete_agent(agent_id: AgentId, state: State, caller: Caller) -> dict[str, Any]:
    """Cancels the agent's unfinished runs, then removes the agent, its conversations and their
    histories from records and indexes in one step. Its runs stay readable until they expire."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    cancelled = await state.client.delete_agent(agent_id)
    return {"message": f"Agent id={agent_id} successfully deleted", "agent_id": agent_id, "runs": cancelled.runs}


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


class AsyncMessageRequest(SendMessageRequest):
    """Body of ``POST /v1/agents/{id}/messages/async``: a send whose run is answered at once;
    ``callback_url`` is POSTed the result once the run ends (``api.callbacks``)."""

    callback_url: Annotated[AnyHttpUrl, UrlConstraints(max_length=2048)] | None = None


@router.post("/{agent_id}/messages/async", summary="Send a message and get its run at once; the run goes on in the background")
async def send_agent_message_async(
    agent_id: AgentId, body: AsyncMessageRequest, state: State, caller: Caller, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Letta's ``Run`` (``metadata.run_type``: ``send_message_async``). Poll ``GET /v1/runs/{id}``
    until it ends, then read ``GET /v1/runs/{id}/messages``; or resume its stream."""
    conversation = (await state.conversations.default_of(agent_id, tenant=caller.tenant)).ref()
    turn = body.model_copy(update={"streaming": False, "background": True, "stream_tokens": False})
    url = str(body.callback_url) if body.callback_url else None
    accepted = await accept_turn(
        state, caller, conversation, turn, idempotency_header=idempotency_key, run_type="send_message_async", callback_url=url
    )
    run = accepted.run
    if url is not None and not accepted.duplicate:  # a retry joins the run and the callback already owed for it

        async def result() -> dict[str, Any]:
            try:
                return await collect_response(state, run)
            except RunErrorResponse as failed:
                return {"messages": [], "error": failed.body}

        async def record(sent_at: datetime, status_code: int | None, error: str | None) -> None:
            await state.client.record_callback(conversation.id, run.id, sent_at=sent_at, status_code=status_code, error=error)

        state.callbacks.schedule(
            run, Owed(url, result, lambda: state.runs.get(run.id, conversation.id, tenant=None), record)
        )
    return run.model_dump(mode="json")


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
    include_return_message_types: Annotated[list[MessageType] | None, Query()] = None,
    order_by: Literal["created_at"] = "created_at",
    group_id: GroupIdQuery = None,
    include_err: bool | None = None,
    use_assistant_message: bool = True,
    assistant_message_tool_name: Annotated[str | None, Query(max_length=MAX_NAME_CHARS)] = None,
    assistant_message_tool_kwarg: Annotated[str | None, Query(max_length=MAX_NAME_CHARS)] = None,
) -> list[dict[str, Any]]:
    """As Letta: ``desc`` (the default) gives the newest ``limit`` messages, ``asc`` the oldest,
    both oldest first, the system message before all (``runtime.letta.listings``). The agent's own
    history needs no creating to be read: before its first message it holds only the system message.
    ``group_id`` is refused (``no_groups``); ``include_err`` and the legacy assistant-message
    parameters change nothing, as for Letta's current agents: no stored message is an error, and
    the model's text is always an ``assistant_message`` (Convoy has no ``send_message`` tool)."""
    no_groups(group_id)
    agent = await state.agents.get(agent_id, tenant=caller.tenant)
    if conversation_id is not None:
        conversation = await state.conversations.get(conversation_id, tenant=caller.tenant)
        if conversation.agent_id != agent_id:
            raise NotFoundError(f"conversation {conversation_id} not found for agent {agent_id}")
    target = conversation_id or default_conversation_id(agent_id)
    return await listings.messages(
        state.history, agent, target, route="agent", limit=limit, after=after, before=before, order=order, types=include_return_message_types
    )


@router.get("/{agent_id}/context", summary="What the agent's next request would hold, and its size in tokens")
async def context_window(
    agent_id: AgentId, state: State, caller: Caller, conversation_id: ConversationIdQuery | None = None
) -> dict[str, Any]:
    """Letta's ``ContextWindowOverview`` for the agent's own history, or ``conversation_id``'s:
    token counts are Convoy's estimates (``runtime.agent.context``), the same that decide what
    the model is shown."""
    agent = await state.agents.get(agent_id, tenant=caller.tenant)
    if conversation_id is not None:
        conversation = await state.conversations.get(conversation_id, tenant=caller.tenant)
        if conversation.agent_id != agent_id:
            raise NotFoundError(f"conversation {conversation_id} not found for agent {agent_id}")
        agent = conversation.window_of(agent)  # its own context window, if it sets one
    history = await state.history.recent(conversation_id or default_conversation_id(agent_id), limit=HISTORY_WINDOW)
    return overview(agent, Toolbox(state.tools, tuple(agent.tools)).specs(), history)


@router.post("/{agent_id}/messages/cancel", summary="Cancel the agent's running and queued runs")
async def cancel_agent_runs(
    agent_id: AgentId, state: State, caller: Caller, body: Annotated[CancelRunsRequest | None, Body()] = None
) -> dict[str, Any]:
    """All unfinished runs of all the agent's conversations (and their waiting approval
    requests), or only ``run_ids`` when given. Letta's answer: run id -> its status after the
    cancel; 409 when there was nothing to cancel."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    runs: dict[str, str] = {}
    if body is not None and body.run_ids:
        for run_id in body.run_ids:
            conversation_id = await state.runs.conversation_of(run_id)
            if (await state.runs.get(run_id, conversation_id, tenant=caller.tenant)).agent_id != agent_id:
                raise NotFoundError(f"run {run_id} not found for agent {agent_id}")
            runs[run_id] = await state.client.cancel_run(conversation_id, run_id)
        return dict(runs)
    cancelled = await state.client.cancel_agent(agent_id)
    if not cancelled.anything:
        raise ConflictError(f"No active runs to cancel for agent {agent_id}")
    return dict(cancelled.runs)


async def _send_to_default(
    state: AppState, caller: Principal, agent_id: str, body: SendMessageRequest, idempotency_key: str | None
) -> Response:
    """Exactly what ``POST /v1/conversations/{id}/messages`` does, in the agent's default conversation."""
    conversation = await state.conversations.default_of(agent_id, tenant=caller.tenant)
    return await send(state, caller, conversation.ref(), body, idempotency_key)
