"""``/v1/runs``: read, list, resume and cancel runs; mint stream tokens.

``GET /v1/runs/{id}/stream`` is on a router of its own (``stream_router``): it is the one route
that also takes a stream token (``?token=``) instead of a key, for a browser's ``EventSource``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import Response

from api.auth import Caller, StreamReader
from api.sse import SSE_RESPONSES, resume_response, stream_token_view
from api.state import State
from api.validation import AGENT_ID, AgentIdQuery, ConversationIdQuery, Limit, MessageIdQuery, RunId, RunIdQuery
from runtime.errors import InvalidRequestError
from runtime.letta import listings
from runtime.schemas.requests import MAX_SEQ, ResumeRequest
from runtime.schemas.runs import RunQuery, RunStatus, StopReason

router = APIRouter(prefix="/v1/runs", tags=["runs"])
stream_router = APIRouter(prefix="/v1/runs", tags=["runs"])
SEQ_ID = re.compile(r"[0-9]{1,16}")  # ASCII digits only (str.isdigit() also accepts '²')
EVENTSOURCE_RETRY_MS = 1000


@router.get("", summary="List runs")
@router.get("/", include_in_schema=False)
async def list_runs(
    state: State,
    caller: Caller,
    agent_id: AgentIdQuery | None = None,
    agent_ids: Annotated[list[Annotated[str, Query(pattern=AGENT_ID)]] | None, Query(max_length=1)] = None,
    conversation_id: ConversationIdQuery | None = None,
    statuses: Annotated[list[RunStatus] | None, Query()] = None,
    active: bool | None = None,
    background: bool | None = None,
    stop_reason: StopReason | None = None,
    limit: Limit = 100,
    after: RunIdQuery | None = None,
    before: RunIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"] | None, Query()] = None,
    order_by: Literal["created_at"] = "created_at",
    ascending: bool | None = None,
) -> list[dict[str, Any]]:
    """Newest first unless ``order=asc`` (or, deprecated, ``ascending``); ``order_by``: only
    ``created_at``, as Letta's."""
    if agent_ids:
        if agent_id is not None and agent_id != agent_ids[0]:
            raise InvalidRequestError("agent_id and agent_ids name different agents; send one of them")
        agent_id = agent_ids[0]
    if agent_id is not None:
        await state.agents.get(agent_id, tenant=caller.tenant)
    if conversation_id is not None:
        await state.conversations.get(conversation_id, tenant=caller.tenant)
    query = RunQuery(
        agent_id=agent_id,
        conversation_id=conversation_id,
        statuses=statuses,
        active=active,
        background=background,
        stop_reason=stop_reason,
        limit=limit,
        after=after,
        before=before,
        ascending=order == "asc" if order is not None else bool(ascending),
    )
    return [run.model_dump(mode="json") for run in await state.runs.list(query, tenant=caller.tenant)]


@router.get("/{run_id}", summary="Get a run")
async def get_run(run_id: RunId, state: State, caller: Caller) -> dict[str, Any]:
    return (await state.runs.get(run_id, tenant=caller.tenant)).model_dump(mode="json")


@router.get("/{run_id}/messages", summary="List the messages a run wrote (its input among them)")
async def list_run_messages(
    run_id: RunId,
    state: State,
    caller: Caller,
    limit: Limit = 100,
    after: MessageIdQuery | None = None,
    before: MessageIdQuery | None = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    order_by: Literal["created_at"] = "created_at",
) -> list[dict[str, Any]]:
    """Oldest first unless ``order=desc`` (Letta's default for this route); ``after``/``before``:
    message ids; ``order_by``: only ``created_at``, as Letta's. Each part of a model response is its
    own item, as in the history listings."""
    run = await state.runs.get(run_id, tenant=caller.tenant)
    return await listings.run_messages(state.history, run, limit=limit, after=after, before=before, order=order)


@router.get("/{run_id}/steps", summary="List a run's steps with their provider traces")
async def list_steps(
    run_id: RunId,
    state: State,
    caller: Caller,
    limit: Limit = 50,
    order: Annotated[Literal["asc", "desc"] | None, Query()] = None,
    order_by: Literal["created_at"] = "created_at",
    after: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[str | None, Query(max_length=64)] = None,
) -> list[dict[str, Any]]:
    """Letta's ``Step`` objects, plus ``trace``: the request sent to the provider, a summary of its
    response, latency, time to first token and how many times the stream was opened. ``order_by``:
    only ``created_at``, as Letta's."""
    run = await state.runs.get(run_id, tenant=caller.tenant)
    return await listings.steps(state.runs, run, limit=limit, after=after, before=before, order=order)


@router.post(
    "/{run_id}/stream",
    summary="Resume a run's stream after starting_after",
    response_class=Response,
    responses=SSE_RESPONSES,
)
async def resume(
    run_id: RunId, state: State, caller: Caller, body: Annotated[ResumeRequest | None, Body()] = None
) -> Response:
    body = body or ResumeRequest()
    conversation_id = (await state.runs.get(run_id, tenant=caller.tenant)).conversation_id
    return await resume_response(state, conversation_id, run_id, after=body.starting_after, include_pings=body.include_pings)


@stream_router.get(
    "/{run_id}/stream",
    summary="Resume a run's stream (EventSource: honours Last-Event-ID; takes ?token= instead of a key)",
    response_class=Response,
    responses=SSE_RESPONSES,
)
async def resume_get(
    run_id: RunId,
    state: State,
    caller: StreamReader,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    starting_after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    include_pings: bool = True,
) -> Response:
    after = starting_after
    if last_event_id:
        if not SEQ_ID.fullmatch(last_event_id) or int(last_event_id) > MAX_SEQ:
            raise InvalidRequestError(f"Last-Event-ID must be a seq_id (a non-negative integer), got {last_event_id!r}")
        after = int(last_event_id)
    conversation_id = (await state.runs.get(run_id, tenant=caller.principal.tenant)).conversation_id
    caller.check(run_id, conversation_id)
    return await resume_response(state, conversation_id, run_id, after=after, include_pings=include_pings, retry_ms=EVENTSOURCE_RETRY_MS)


@router.post("/{run_id}/stream-token", summary="Mint a short-lived token that opens this run's GET stream")
async def stream_token(run_id: RunId, state: State, caller: Caller) -> dict[str, Any]:
    """For a browser's ``EventSource``, which cannot send ``Authorization``: the token goes in the
    stream's URL as ``?token=``, opens only this run's stream, and expires after
    ``CONVOY_STREAM_TOKEN_TTL_S``."""
    await state.runs.get(run_id, tenant=caller.tenant)
    token, grant = await state.stream_tokens.mint("run", run_id, caller.tenant)
    return stream_token_view(token, grant, run_id=run_id)


@router.post("/{run_id}/cancel", summary="Cancel a run (running or queued)")
async def cancel(run_id: RunId, state: State, caller: Caller) -> dict[str, Any]:
    conversation_id = (await state.runs.get(run_id, tenant=caller.tenant)).conversation_id
    await state.client.cancel_run(conversation_id, run_id)
    return (await state.runs.get(run_id, conversation_id, tenant=caller.tenant)).model_dump(mode="json")
