"""``/v1/conversations``: create and read conversations, send messages, resume, cancel, history."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import JSONResponse, Response

from api.auth import Caller
from api.model_settings import check_conversation
from api.responses import collect_response
from api.sse import SSE_RESPONSES, resume_response, run_events, sse_response, stream_token_view
from api.state import AppState, State
from api.turns import accept_turn
from api.validation import AgentIdQuery, ConversationId, ConversationIdQuery, Limit, MessageIdQuery
from runtime.errors import NotFoundError
from runtime.schemas.agents import ConversationRef
from runtime.schemas.auth import Principal
from runtime.schemas.requests import CreateConversationRequest, ResumeRequest, SendMessageRequest

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
    check_conversation(state, agent, body.model, body.model_settings)
    record = await state.conversations.create(agent, summary=body.summary, model=body.model, model_settings=body.model_settings)
    return record.view()


class UpdateConversationRequest(CreateConversationRequest):
    """Body of ``PATCH /v1/conversations/{id}``: only the fields sent change (``null``: unchanged);
    ``model_settings`` is replaced as a whole (``{}`` clears it)."""


@router.patch("/{conversation_id}", summary="Update a conversation (summary, model, model settings)")
async def update_conversation(
    conversation_id: ConversationId, body: UpdateConversationRequest, state: State, caller: Caller
) -> dict[str, Any]:
    """Later turns use the new values; a model or settings the provider cannot honour is a 400 and
    changes nothing."""
    current = await state.conversations.get(conversation_id, tenant=caller.tenant)
    changes = {name: getattr(body, name) for name in body.model_fields_set if getattr(body, name) is not None}
    if "model" in changes:
        state.providers.validate(changes["model"])
    if changes.keys() & {"model", "model_settings"}:
        after = current.model_copy(update=changes)
        agent = await state.agents.get(current.agent_id, tenant=caller.tenant)
        check_conversation(state, agent, after.model, after.model_settings)
    return (await state.conversations.update(conversation_id, changes)).view()


@router.get("", summary="List conversations")
@router.get("/", include_in_schema=False)
async def list_conversations(
    state: State,
    caller: Caller,
    agent_id: AgentIdQuery | None = None,
    limit: Limit = 50,
    after: ConversationIdQuery | None = None,
) -> list[dict[str, Any]]:
    if agent_id is not None:
        await state.agents.get(agent_id, tenant=caller.tenant)
    conversations = await state.conversations.list(tenant=caller.tenant, agent_id=agent_id, limit=limit, after=after)
    return [c.view() for c in conversations]


@router.get("/{conversation_id}", summary="Get a conversation")
async def get_conversation(conversation_id: ConversationId, state: State, caller: Caller) -> dict[str, Any]:
    return (await state.conversations.get(conversation_id, tenant=caller.tenant)).view()


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message; streams Server-Sent Events unless streaming is false",
    response_model=None,
    responses=SSE_RESPONSES,
)
async def send_message(
    conversation_id: ConversationId,
    body: SendMessageRequest,
    state: State,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    conversation = await state.conversations.ref(conversation_id, tenant=caller.tenant)
    return await send(state, caller, conversation, body, idempotency_key)


async def send(
    state: AppState, caller: Principal, conversation: ConversationRef, body: SendMessageRequest, idempotency_key: str | None
) -> Response:
    """Accept a turn, then stream its run or answer once it ends (also the agent-level routes)."""
    run = await accept_turn(state, caller, conversation, body, idempotency_header=idempotency_key)
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
    conversation_id: ConversationId,
    state: State,
    caller: Caller,
    limit: Limit = 100,
    after: MessageIdQuery | None = None,
    before: MessageIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
) -> list[dict[str, Any]]:
    await state.conversations.get(conversation_id, tenant=caller.tenant)
    messages = await state.history.page(conversation_id, limit=limit, after=after, before=before, order=order)
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


@router.post(
    "/{conversation_id}/stream",
    summary="Resume a run's stream (by run_id, otid, or the latest run)",
    response_class=Response,
    responses=SSE_RESPONSES,
)
async def resume(
    conversation_id: ConversationId, state: State, caller: Caller, body: Annotated[ResumeRequest | None, Body()] = None
) -> Response:
    body = body or ResumeRequest()
    await state.conversations.get(conversation_id, tenant=caller.tenant)
    run_id = body.run_id
    if run_id is None and body.otid is not None:
        found = await state.client.run_of_otid(conversation_id, body.otid)
        if found is None:
            raise NotFoundError(f"no run of conversation {conversation_id} was started by otid {body.otid}")
        run_id = found
    if run_id is None:
        run_id = await state.runs.latest(conversation_id)
        if run_id is None:
            raise NotFoundError(f"conversation {conversation_id} has no run to resume")
    elif await state.runs.conversation_of(run_id) != conversation_id:
        raise NotFoundError(f"run {run_id} not found in conversation {conversation_id}")
    return await resume_response(state, conversation_id, run_id, after=body.starting_after, include_pings=body.include_pings)


@router.post("/{conversation_id}/cancel", summary="Cancel the conversation's running and queued runs")
async def cancel(conversation_id: ConversationId, state: State, caller: Caller) -> dict[str, Any]:
    await state.conversations.get(conversation_id, tenant=caller.tenant)
    return {"conversation_id": conversation_id, "runs": await state.client.cancel_conversation(conversation_id)}


@router.post(
    "/{conversation_id}/stream-token", summary="Mint a short-lived token that opens the GET streams of this conversation's runs"
)
async def stream_token(conversation_id: ConversationId, state: State, caller: Caller) -> dict[str, Any]:
    """For a page that follows a conversation with ``EventSource``: one token opens
    ``GET /v1/runs/{id}/stream?token=`` for any run of this conversation until it expires."""
    await state.conversations.get(conversation_id, tenant=caller.tenant)
    token, grant = await state.stream_tokens.mint("conversation", conversation_id, caller.tenant)
    return stream_token_view(token, grant, conversation_id=conversation_id)
