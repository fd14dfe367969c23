"""Accepting a message: run + mailbox entry in one atomic step, then a wake-up for the owner.

The API never runs the model. It makes the turn durable, tells the conversation's owner (through
the router) to look at its mailbox, and returns the run for the caller to stream or await.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ray.exceptions import RayError
from redis.exceptions import RedisError

from api.cancel import cancel_ahead_of
from api.metrics import RUNS_ACCEPTED, RUNS_DEDUPLICATED
from api.state import AppState
from runtime.errors import RateLimitedError, UnavailableError
from runtime.ids import new_id
from runtime.schemas.agents import ConversationRef
from runtime.schemas.auth import Principal
from runtime.schemas.messages import Ping, utcnow
from runtime.schemas.requests import SendMessageRequest
from runtime.schemas.runs import RequestConfig, RunView
from runtime.schemas.turns import TurnRequest
from runtime.store.runs import UNFINISHED_RUN_TTL_S
from runtime.stream import wire

log = logging.getLogger(__name__)


def idempotency_key(body: SendMessageRequest, header: str | None) -> str | None:
    """A retried send is recognised by the client's ``Idempotency-Key`` header, else by the
    ``otid`` of its first input message (Letta SDKs reuse otids when they retry)."""
    if header:
        return f"key:{header}"
    otid = body.input_messages()[0].otid
    return f"otid:{otid}" if otid else None


async def accept_turn(
    state: AppState,
    caller: Principal,
    conversation: ConversationRef,
    body: SendMessageRequest,
    *,
    idempotency_header: str | None = None,
) -> RunView:
    """Accept a turn; returns its run (an earlier run when this send is a retry of it). A caller's
    key with a concurrent-runs limit gets the run counted first (429 when it has none left)."""
    if body.override_model:
        state.providers.validate(body.override_model)
    run_id = new_id("run")
    slot = await _take_slot(state, caller, run_id)
    try:
        accepted = await _accept(state, conversation, body, run_id, slot, idempotency_header)
    except BaseException:
        if slot:
            await state.keys.release_run_slot(slot, run_id)
        raise
    if accepted.duplicate and slot:
        await state.keys.release_run_slot(slot, run_id)
    return accepted.view


async def _take_slot(state: AppState, caller: Principal, run_id: str) -> str | None:
    """The key id whose concurrent-run slot ``run_id`` took, None when the caller has no such limit."""
    if caller.key_id is None or caller.concurrent_runs <= 0:
        return None
    if not await state.keys.take_run_slot(caller.key_id, run_id, limit=caller.concurrent_runs, now_ms=time.time_ns() // 1_000_000):
        raise RateLimitedError(
            f"API key {caller.key_id} already has {caller.concurrent_runs} unfinished runs, its limit: "
            "wait for one to end (or cancel one), then send again",
            retry_after_s=1,
        )
    return caller.key_id


@dataclass(frozen=True, slots=True)
class _Accepted:
    view: RunView
    duplicate: bool


async def _accept(
    state: AppState,
    conversation: ConversationRef,
    body: SendMessageRequest,
    run_id: str,
    key_id: str | None,
    idempotency_header: str | None,
) -> _Accepted:
    view = RunView(
        id=run_id,
        agent_id=conversation.agent_id,
        conversation_id=conversation.id,
        tenant=conversation.tenant,
        status="created",
        background=body.background,
        created_at=utcnow(),
        metadata={"run_type": "streaming" if body.streaming else "blocking"},
        request_config=RequestConfig(
            use_assistant_message=body.use_assistant_message,
            include_return_message_types=body.include_return_message_types,
        ),
    )
    turn = TurnRequest(
        run_id=run_id,
        agent_id=conversation.agent_id,
        conversation_id=conversation.id,
        messages=body.input_messages(),
        stream_tokens=body.stream_tokens,
        max_steps=body.max_steps,
        use_assistant_message=body.use_assistant_message,
        include_return_message_types=body.include_return_message_types,
        override_model=body.override_model,
        client_tools=body.client_tools,
        accepted_at_ns=time.time_ns(),
    )
    first = wire.encode(Ping(id=f"ping-{run_id[4:]}", run_id=run_id, seq_id=1))
    # Indexing and accepting go out together; both are done before the client hears anything. A
    # run refused, or found to retry an earlier one, is unindexed again.
    indexing = asyncio.ensure_future(state.runs.index(view))
    accepting = asyncio.ensure_future(
        state.mailbox.accept(
            conversation.id,
            run_id,
            turn.model_dump_json().encode(),
            on_busy="reject" if body.on_busy == "reject" else "queue",
            run_fields=state.runs.initial_fields(view, key_id=key_id),
            first_item=first,
            stream_ttl_s=state.settings.stream_ttl_s,
            run_ttl_s=UNFINISHED_RUN_TTL_S,
            idempotency_key=idempotency_key(body, idempotency_header),
            answers_approval=None if body.approval is None else (body.approval.approval_request_id or ""),
        )
    )
    try:
        await asyncio.gather(indexing, accepting)
    except BaseException:
        await asyncio.gather(indexing, accepting, return_exceptions=True)
        if accepting.done() and not accepting.cancelled() and accepting.exception() is not None:
            await state.runs.unindex(view)  # refused: nothing was accepted, leave no trace
        raise
    accepted = accepting.result()
    if accepted.duplicate:
        await state.runs.unindex(view)
        RUNS_DEDUPLICATED.inc()
        return _Accepted(await state.runs.get(accepted.run_id, conversation.id, tenant=None), duplicate=True)
    RUNS_ACCEPTED.labels("stream" if body.streaming else "blocking").inc()
    # From here on the turn is accepted and durable: a failure to wake its owner must not turn into
    # an error (a client would resend and run it twice). A reader that hears nothing wakes the
    # conversation itself (see api/sse.py).
    try:
        if body.on_busy == "interrupt":
            assert accepted.entry_id is not None
            await cancel_ahead_of(state, conversation.id, accepted.entry_id)
        if accepted.owner:
            await state.router.ring(accepted.owner, conversation.id)
        else:
            await state.router.deliver(conversation.id)
    except (UnavailableError, RedisError, RayError) as exc:
        log.warning("accepted a turn but could not wake its owner", extra={"run_id": run_id, "error": repr(exc)})
    return _Accepted(view, duplicate=False)
