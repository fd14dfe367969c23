"""``/v1/conversations``: create, read, update, delete and fork conversations; send messages,
resume, cancel, list history.

Every route that Letta lets name an agent's own history (``default`` with ``agent_id``, or the
agent's id) takes that form too (``runtime.letta.targets``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import JSONResponse, Response

from api.auth import Caller
from api.responses import collect_response
from api.sse import SSE_RESPONSES, resume_response, run_events, sse_response, stream_token_view
from api.state import AppState, State
from api.turns import accept_turn
from api.validation import (
    AgentIdQuery,
    ConversationId,
    ConversationIdQuery,
    ConversationPath,
    GroupIdQuery,
    Limit,
    MessageIdQuery,
    no_groups,
)
from runtime.agent.context import HISTORY_WINDOW, render_system
from runtime.errors import ConflictError, InvalidRequestError
from runtime.letta import listings
from runtime.letta.listings import system_message_id
from runtime.letta.model_checks import check_conversation, check_conversation_window
from runtime.letta.targets import agent_of, target
from runtime.letta.targets import conversation as conversation_of
from runtime.schemas.agents import ConversationRecord, ConversationRef
from runtime.schemas.auth import Principal
from runtime.schemas.requests import (
    MAX_NAME_CHARS,
    CreateConversationRequest,
    MessageType,
    ResumeRequest,
    SendMessageRequest,
    UpdateConversationRequest,
)

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


@router.post("", summary="Create a conversation with an agent")
@router.post("/", include_in_schema=False)
async def create_conversation(
    agent_id: AgentIdQuery,
    state: State,
    caller: Caller,
    body: Annotated[CreateConversationRequest | None, Body()] = None,
) -> dict[str, Any]:
    agent = await state.agents.get(agent_id, tenant=caller.tenant)
    body = body or CreateConversationRequest()
    if body.model:
        state.providers.validate(body.model)
    check_conversation(state.providers, agent, body.model, body.model_settings)
    check_conversation_window(agent, body.context_window_limit, body.model_settings)
    record = await state.conversations.create(
        agent,
        summary=body.summary,
        model=body.model,
        description=body.description,
        model_settings=body.model_settings,
        context_window_limit=body.context_window_limit,
        hidden=body.hidden,
    )
    return await _view(state, record, caller)


@router.patch("/{conversation_id}", summary="Update a conversation (summary, description, model, settings, window, archived)")
async def update_conversation(
    conversation_id: ConversationId, body: UpdateConversationRequest, state: State, caller: Caller
) -> dict[str, Any]:
    """Later turns use the new values; a model, settings or window the conversation's model cannot
    honour is a 400 and changes nothing."""
    current = await state.conversations.get(conversation_id, tenant=caller.tenant)
    changes = {name: getattr(body, name) for name in body.model_fields_set if getattr(body, name) is not None}
    if "model" in changes:
        state.providers.validate(changes["model"])
    if "archived" in changes and changes["archived"] != current.archived:
        changes["archived_at"] = datetime.now(UTC) if changes["archived"] else None
    if changes.keys() & {"model", "model_settings", "context_window_limit"}:
        after = current.model_copy(update=changes)
        agent = await state.agents.get(current.agent_id, tenant=caller.tenant)
        check_conversation(state.providers, agent, after.model, after.model_settings)
        check_conversation_window(agent, after.context_window_limit, after.model_settings)
    return await _view(state, await state.conversations.update(conversation_id, changes), caller)


@router.delete("/{conversation_id}", summary="Delete a conversation and its history")
async def delete_conversation(conversation_id: ConversationId, state: State, caller: Caller) -> dict[str, Any]:
    """Cancels its unfinished runs, then removes it, its history and its index entries; its runs
    stay readable until they expire. A second delete is a 404."""
    record = await state.conversations.get(conversation_id, tenant=caller.tenant)
    cancelled = await state.client.delete_conversation(record)
    return {"message": f"Conversation id={conversation_id} successfully deleted", "runs": cancelled.runs}


@router.get("", summary="List conversations")
@router.get("/", include_in_schema=False)
async def list_conversations(
    state: State,
    caller: Caller,
    agent_id: AgentIdQuery | None = None,
    limit: Limit = 50,
    after: ConversationIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    order_by: Annotated[listings.ConversationOrderBy, Query()] = "created_at",
    archive_status: Annotated[Literal["unarchived", "archived", "all"], Query()] = "unarchived",
    summary_search: Annotated[str | None, Query(max_length=MAX_NAME_CHARS)] = None,
) -> list[dict[str, Any]]:
    """Newest first unless ``order=asc``, by creation, by last message (never messaged: last) or
    by when their last run finished (none finished: last; ``runtime.letta.listings``).
    An agent's own history (its default conversation) is not listed, as in Letta, where it is no
    conversation at all, and neither is a hidden one. ``archive_status``: the conversations not
    archived (the default), the archived ones, or all; ``summary_search``: only those whose summary
    holds that text (case-insensitive)."""
    if agent_id is not None:
        await state.agents.get(agent_id, tenant=caller.tenant)
    found = await listings.conversations(
        state.conversations,
        state.runs,
        tenant=caller.tenant,
        agent_id=agent_id,
        limit=limit,
        after=after,
        order=order,
        order_by=order_by,
        archive_status=archive_status,
        summary_search=summary_search,
    )
    last = await state.conversations.last_message_at([c.id for c in found], tenant=caller.tenant)
    return [c.view(last_message_at=last.get(c.id)) for c in found]


@router.get("/{conversation_id}", summary="Get a conversation")
async def get_conversation(conversation_id: ConversationId, state: State, caller: Caller) -> dict[str, Any]:
    """With ``in_context_message_ids``: the system message's, then those of the messages the model
    is shown (the newest ``HISTORY_WINDOW``)."""
    record = await state.conversations.get(conversation_id, tenant=caller.tenant)
    return await _view(state, record, caller, in_context=True)


@router.post("/{conversation_id}/fork", summary="Fork a conversation: a new one starting from its messages")
async def fork_conversation(
    conversation_id: ConversationPath,
    state: State,
    caller: Caller,
    agent_id: AgentIdQuery | None = None,
    message_id: MessageIdQuery | None = None,
    hidden: bool = False,
) -> dict[str, Any]:
    """A new conversation of the same agent holding the source's messages (those the model is
    shown), up to and including ``message_id`` when given, with the source's model, settings and
    context window; ``hidden`` leaves it out of listings. The source is unchanged."""
    where = target(conversation_id, agent_id)
    agent, source = await agent_of(state.agents, state.conversations, where, tenant=caller.tenant)
    record = await state.client.fork(
        agent,
        where.conversation_id,
        up_to=None if message_id == system_message_id(where.conversation_id) else message_id,
        model=source.model if source else None,
        model_settings=source.model_settings if source else None,
        context_window_limit=source.context_window_limit if source else None,
        hidden=hidden,
    )
    return await _view(state, record, caller)


@router.post("/{conversation_id}/recompile", summary="The conversation's system prompt, compiled")
async def recompile(
    conversation_id: ConversationPath,
    state: State,
    caller: Caller,
    dry_run: bool = False,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> str:
    """Convoy compiles the system prompt from the agent for every request, so it is always
    current: this returns it as the next request will send it (``dry_run`` changes nothing
    either way)."""
    agent_id = (body or {}).get("agent_id")
    if agent_id is not None and not isinstance(agent_id, str):
        raise InvalidRequestError("agent_id must be a string")
    agent, _ = await agent_of(state.agents, state.conversations, target(conversation_id, agent_id), tenant=caller.tenant)
    return render_system(agent)


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message; streams Server-Sent Events unless streaming is false",
    response_model=None,
    responses=SSE_RESPONSES,
)
async def send_message(
    conversation_id: ConversationPath,
    body: SendMessageRequest,
    state: State,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    where = target(conversation_id, body.agent_id)
    if where.agent_direct:
        conversation = (await conversation_of(state.conversations, where, tenant=caller.tenant)).ref()
    else:
        conversation = await state.conversations.ref(conversation_id, tenant=caller.tenant)
    return await send(state, caller, conversation, body, idempotency_key)


async def send(
    state: AppState, caller: Principal, conversation: ConversationRef, body: SendMessageRequest, idempotency_key: str | None
) -> Response:
    """Accept a turn, then stream its run or answer once it ends (also the agent-level routes)."""
    run = (await accept_turn(state, caller, conversation, body, idempotency_header=idempotency_key)).run
    if body.streaming:

        async def abandon() -> object:
            return await state.client.cancel_abandoned(conversation.id, run.id)

        return sse_response(
            run_events(
                state,
                conversation.id,
                run.id,
                after=0,
                include_pings=body.include_pings,
                on_abandon=None if body.background else abandon,
            )
        )
    return JSONResponse(await collect_response(state, run))


@router.get("/{conversation_id}/messages", summary="List the conversation's messages")
async def list_messages(
    conversation_id: ConversationPath,
    state: State,
    caller: Caller,
    agent_id: AgentIdQuery | None = None,
    limit: Limit = 100,
    after: MessageIdQuery | None = None,
    before: MessageIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    include_return_message_types: Annotated[list[MessageType] | None, Query()] = None,
    order_by: Literal["created_at"] = "created_at",
    group_id: GroupIdQuery = None,
    include_err: bool | None = None,
) -> list[dict[str, Any]]:
    """The system message first, then the stored messages; newest first unless ``order=asc``
    (an agent's own history is listed as ``GET /v1/agents/{id}/messages`` lists it; see
    ``runtime.letta.listings``). ``group_id`` is refused; ``include_err`` changes nothing (no stored
    message is an error)."""
    no_groups(group_id)
    where = target(conversation_id, agent_id)
    agent, _ = await agent_of(state.agents, state.conversations, where, tenant=caller.tenant)
    return await listings.messages(
        state.history,
        agent,
        where.conversation_id,
        route="agent" if where.agent_direct else "conversation",
        limit=limit,
        after=after,
        before=before,
        order=order,
        types=include_return_message_types,
    )


@router.post(
    "/{conversation_id}/stream",
    summary="Resume a run's stream (by run_id, otid, or the active run)",
    response_class=Response,
    responses=SSE_RESPONSES,
)
async def resume(
    conversation_id: ConversationPath, state: State, caller: Caller, body: Annotated[ResumeRequest | None, Body()] = None
) -> Response:
    """``run_id`` (any run of the conversation, finished or not: every run's stream is kept), else
    the run ``otid`` started, else the conversation's active run (400 when none is active; see
    ``RunFollower.run_to_resume``)."""
    body = body or ResumeRequest()
    where = target(conversation_id, body.agent_id)
    conversation = (await agent_of(state.agents, state.conversations, where, tenant=caller.tenant))[1]
    if conversation is None:  # an agent's own history before its first message: no run at all
        raise InvalidRequestError("No active runs found for this conversation.")
    conv_id = where.conversation_id
    run_id = await state.follower.run_to_resume(conv_id, run_id=body.run_id, otid=body.otid, tenant=caller.tenant)
    return await resume_response(state, conv_id, run_id, after=body.starting_after, include_pings=body.include_pings)


@router.post("/{conversation_id}/cancel", summary="Cancel the conversation's running and queued runs")
async def cancel(
    conversation_id: ConversationPath, state: State, caller: Caller, agent_id: AgentIdQuery | None = None
) -> dict[str, Any]:
    """Letta's answer: run id -> its status after the cancel. Also closes an approval request
    still waiting. 409 when there was nothing to cancel."""
    where = target(conversation_id, agent_id)
    conversation = (await agent_of(state.agents, state.conversations, where, tenant=caller.tenant))[1]
    cancelled = await state.client.cancel_conversation(where.conversation_id) if conversation else None
    if cancelled is None or not cancelled.anything:
        raise ConflictError(f"No active runs to cancel for conversation {conversation_id}")
    return dict(cancelled.runs)


@router.post(
    "/{conversation_id}/stream-token", summary="Mint a short-lived token that opens the GET streams of this conversation's runs"
)
async def stream_token(conversation_id: ConversationId, state: State, caller: Caller) -> dict[str, Any]:
    """For a page that follows a conversation with ``EventSource``: one token opens
    ``GET /v1/runs/{id}/stream?token=`` for any run of this conversation until it expires."""
    await state.conversations.get(conversation_id, tenant=caller.tenant)
    token, grant = await state.stream_tokens.mint("conversation", conversation_id, caller.tenant)
    return stream_token_view(token, grant, conversation_id=conversation_id)


async def _view(state: AppState, record: ConversationRecord, caller: Principal, *, in_context: bool = False) -> dict[str, Any]:
    last, ids = await asyncio.gather(
        state.conversations.last_message_at([record.id], tenant=caller.tenant),
        state.history.recent_ids(record.id, limit=HISTORY_WINDOW) if in_context else asyncio.sleep(0, None),
    )
    view = record.view(last_message_at=last.get(record.id))
    if in_context:
        view["in_context_message_ids"] = [system_message_id(record.id), *(ids or [])]
    return view
