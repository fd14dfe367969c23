"""``/v1/conversations``: create and read conversations, and send messages to them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse, Response

from api.cancel import cancel_conversation
from api.responses import collect_response
from api.sse import run_events, sse_response
from api.state import AppState, get_state
from api.turns import accept_turn
from api.validation import AgentIdQuery, ConversationId, ConversationIdQuery, Limit
from runtime.schemas.requests import CreateConversationRequest, SendMessageRequest

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])
State = Annotated[AppState, Depends(get_state)]


@router.post("", summary="Create a conversation with an agent")
@router.post("/", include_in_schema=False)
async def create_conversation(
    agent_id: AgentIdQuery,
    state: State,
    body: Annotated[CreateConversationRequest | None, Body()] = None,
) -> dict[str, Any]:
    await state.agents.get(agent_id)
    body = body or CreateConversationRequest()
    record = await state.conversations.create(agent_id=agent_id, summary=body.summary, model=body.model)
    return record.view()


@router.get("", summary="List conversations")
@router.get("/", include_in_schema=False)
async def list_conversations(
    state: State,
    agent_id: AgentIdQuery | None = None,
    limit: Limit = 50,
    after: ConversationIdQuery | None = None,
) -> list[dict[str, Any]]:
    return [c.view() for c in await state.conversations.list(agent_id=agent_id, limit=limit, after=after)]


@router.get("/{conversation_id}", summary="Get a conversation")
async def get_conversation(conversation_id: ConversationId, state: State) -> dict[str, Any]:
    return (await state.conversations.get(conversation_id)).view()


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message; streams Server-Sent Events unless streaming is false",
    response_model=None,
)
async def send_message(conversation_id: ConversationId, body: SendMessageRequest, state: State) -> Response:
    conversation = await state.conversations.get(conversation_id)
    agent = await state.agents.get(conversation.agent_id)
    run = await accept_turn(state, agent, conversation, body)
    if body.streaming:
        return sse_response(run_events(state, conversation.id, run.id, after=0, include_pings=body.include_pings))
    return JSONResponse(await collect_response(state, run))


@router.post("/{conversation_id}/cancel", summary="Cancel the conversation's running and queued runs")
async def cancel(conversation_id: ConversationId, state: State) -> dict[str, Any]:
    await state.conversations.get(conversation_id)
    return {"conversation_id": conversation_id, "runs": await cancel_conversation(state, conversation_id)}
