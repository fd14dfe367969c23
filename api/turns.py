"""Accepting a message: an HTTP send becomes a turn and its run, handed to the conversations' door.

The API never runs the model and never writes a conversation itself: it checks what only the edge
can (the model handle, the caller's concurrent-run limit), has the model settings checked
(``runtime.letta.model_checks``), describes the turn and its run (``runtime.schemas.turns``), and
gives them to ``ConversationClient.accept`` (``actors.client``), which makes the turn durable and
wakes the conversation's owner. The caller then streams or awaits the run.
"""

from __future__ import annotations

import time

from actors.client import Accepted, idempotency_key
from api.metrics import RUNS_ACCEPTED, RUNS_DEDUPLICATED
from api.state import AppState
from runtime import logs
from runtime.errors import RateLimitedError
from runtime.ids import new_id
from runtime.letta.model_checks import check_turn
from runtime.schemas.agents import ConversationRef
from runtime.schemas.auth import Principal
from runtime.schemas.requests import SendMessageRequest
from runtime.schemas.turns import run_of, turn_of


async def accept_turn(
    state: AppState,
    caller: Principal,
    conversation: ConversationRef,
    body: SendMessageRequest,
    *,
    idempotency_header: str | None = None,
    run_type: str | None = None,
    callback_url: str | None = None,
) -> Accepted:
    """Accept a turn; returns its run, ``duplicate`` when this send is a retry of an earlier one
    (whose run it joins). A caller's key with a concurrent-runs limit gets the run counted first
    (429 when it has none left)."""
    if body.override_model:
        state.providers.validate(body.override_model)
    await check_turn(state.providers, state.agents, state.conversations, conversation, body)
    run_id = new_id("run")
    logs.bind(run_id=run_id, conversation_id=conversation.id, tenant=conversation.tenant)
    slot = await _take_slot(state, caller, run_id)
    try:
        accepted = await state.client.accept(
            conversation,
            turn_of(conversation, body, run_id),
            run_of(conversation, body, run_id, run_type=run_type, callback_url=callback_url),
            on_busy=body.on_busy or state.settings.on_busy_default,
            idempotency=idempotency_key(idempotency_header, body.first_otid()),
            approval=body.approval,
            key_id=slot,
        )
    except BaseException:
        if slot:
            await state.keys.release_run_slot(slot, run_id)
        raise
    if accepted.duplicate:
        logs.bind(run_id=accepted.run.id)  # the run this retry joins
        RUNS_DEDUPLICATED.inc()
        if slot:
            await state.keys.release_run_slot(slot, run_id)
    else:
        RUNS_ACCEPTED.labels("stream" if body.streaming else "blocking").inc()
    return accepted


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

