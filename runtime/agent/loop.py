"""The agent step loop: one turn of a conversation, from input messages to a stop reason.

Plain Python with no Redis and no Ray: it reads the history it is given, calls the model through
a provider adapter, hands every wire item to ``emit`` as soon as it exists, reports a trace of each
step to ``record_step``, and returns what the caller must persist. The conversation actor owns
persistence, fencing and the terminal sequence.

A turn is a loop of steps. A step streams one model response; if the model asked for tools, they
run (``runtime/toolbox.py``), their results are added and the loop goes on, up to ``max_steps``.
A call that needs the client (approval, or a client-side tool) ends the turn with
``requires_approval``; the client's answer starts the next turn from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json

from runtime.agent.context import fit, render_system, with_skills
from runtime.agent.prompt import ChatCache
from runtime.agent.step import Emit, StepAssembler, StepResult
from runtime.errors import ApprovalStillPendingError, LLMContentFilterError, LLMEmptyResponseError, LLMError, RunFailure
from runtime.ids import new_id
from runtime.metrics import QUIET, Recorder
from runtime.providers.events import CONTENT_EVENTS, LLMRequest
from runtime.providers.registry import Model
from runtime.providers.stream import Attempts
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import (
    ApprovalRequestMessage,
    ApprovalResponseMessage,
    HistoryMessage,
    LettaMessage,
    UsageStatistics,
    UserMessage,
    WireItem,
)
from runtime.schemas.model_settings import ModelSettings, Origin, ResolvedSettings, resolve
from runtime.schemas.requests import ApprovalCreate, MessageCreate, ToolReturnCreate
from runtime.schemas.turns import TurnRequest
from runtime.settings import TRACE_REQUEST_MAX_BYTES
from runtime.tools.registry import ToolRegistry, ToolResult
from runtime.tools.turn import Toolbox, Waiting, returned, waiting_calls

RecordStep = Callable[[dict[str, Any]], Awaitable[None]]
Persist = Callable[[list[HistoryMessage]], Awaitable[None]]
Cancelled = Callable[[], bool]
ModelFactory = Callable[[str], Model]


@dataclass
class TurnOutcome:
    stop_reason: str
    usage: UsageStatistics
    new_messages: list[HistoryMessage] = field(default_factory=list)
    ttft_ns: int | None = None
    finish_reason: str | None = None
    # Set when the turn stopped to wait for the client: the approval request's id and the calls it asks about.
    approval_request: tuple[str, list[str]] | None = None


def model_for(turn: TurnRequest, conversation: ConversationRecord, agent: AgentRecord) -> str:
    """Per request, then per conversation, then per agent."""
    return turn.override_model or conversation.model or agent.model


def settings_for(turn: TurnRequest, conversation: ConversationRecord, agent: AgentRecord) -> ResolvedSettings:
    """Per request, then per conversation, then per agent, field by field (``runtime.schemas.model_settings``)."""
    layers: tuple[tuple[Origin, ModelSettings | None], ...] = (
        ("request", turn.model_settings),
        ("conversation", conversation.model_settings),
        ("agent", agent.model_settings),
    )
    return resolve(layers, agent_max_tokens=agent.max_tokens)


def user_messages(turn: TurnRequest) -> list[HistoryMessage]:
    return [
        UserMessage(id=new_id("message"), content=m.text(), otid=m.otid, run_id=turn.run_id, name=m.name)
        for m in turn.messages
        if isinstance(m, MessageCreate)
    ]


@dataclass
class _Totals:
    prompt: int = 0
    completion: int = 0
    cached: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    steps: int = 0

    def add(self, result: StepResult) -> None:
        u = result.usage
        self.prompt += u.prompt_tokens
        self.completion += u.completion_tokens
        self.cached = _plus(self.cached, u.cached_input_tokens)
        self.cache_write = _plus(self.cache_write, u.cache_write_tokens)
        self.reasoning = _plus(self.reasoning, u.reasoning_tokens)

    def statistics(self, run_id: str) -> UsageStatistics:
        return UsageStatistics(
            prompt_tokens=self.prompt,
            completion_tokens=self.completion,
            total_tokens=self.prompt + self.completion,
            step_count=self.steps,
            cached_input_tokens=self.cached,
            cache_write_tokens=self.cache_write,
            reasoning_tokens=self.reasoning,
            run_ids=[run_id],
        )


def _plus(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else a + b


async def run_turn(
    turn: TurnRequest,
    *,
    agent: AgentRecord,
    conversation: ConversationRecord,
    history: Sequence[HistoryMessage],
    models: ModelFactory,
    tools: ToolRegistry,
    emit: Emit,
    record_step: RecordStep | None = None,
    persist: Persist | None = None,
    cancelled: Cancelled = lambda: False,
    approval_pending: bool = False,
    chat: ChatCache | None = None,
    metrics: Recorder = QUIET,
    trace_request_max_bytes: int = TRACE_REQUEST_MAX_BYTES,
) -> TurnOutcome:
    """Run one turn; raises a ``RunFailure`` for a failed turn (the caller ends the stream).

    ``persist`` receives the turn's messages step by step: the input (with the results of the tools
    an approval ran) before the first step, then each step's response together with its tool
    results, so a failure or a crash leaves the input and whole steps in the history (and the tools
    that ran are on record). Only a message refused because an approval is pending is not kept. ``approval_pending`` says whether the
    conversation's approval request is still open (a cancel closes it). A cancel normally arrives
    as a task cancellation; ``cancelled`` is checked as well before each step and at every event,
    because a cancellation that lands inside a Redis command can be absorbed by the client
    library's reconnect-and-retry and never reach this code. ``chat``: the conversation's
    ``ChatCache``, kept by its owner from turn to turn (each step converts only what is new).
    ``metrics``: where each step's model latency, provider errors and tool calls are recorded.
    ``trace_request_max_bytes``: how much of each step's request its trace keeps (``_bounded``).
    """
    emit = _filtered(emit, turn.include_return_message_types)
    chats = chat or ChatCache()
    model = models(model_for(turn, conversation, agent))
    settings = settings_for(turn, conversation, agent)
    generation = settings.generation()
    box = Toolbox(tools, tuple(agent.tools), tuple(turn.client_tools or ()), agent.tool_approvals, metrics)
    approval = next((m for m in turn.messages if isinstance(m, ApprovalCreate)), None)
    waiting = waiting_calls(history) if approval_pending else []
    gated = [w for w in waiting if w.gated]
    new: list[HistoryMessage] = []
    if approval is not None:
        # The answer first: its step's results (the first thing the client hears), then any
        # message sent with it, which the model sees after them.
        answer = _approval_message(turn, approval, gated)
        step_id = waiting[0].step_id
        try:
            results = returned(await box.resolve(approval, waiting), run_id=turn.run_id, step_id=step_id)
        except asyncio.CancelledError:
            await _interrupted(persist, [answer], [w.call.call_id for w in waiting], run_id=turn.run_id, step_id=step_id)
            raise
        await emit(results.model_copy())
        new = [answer, results]
    elif gated:
        raise ApprovalStillPendingError(f"tool calls {[w.call.call_id for w in gated]} are waiting for an answer")
    new += user_messages(turn)
    system = turn.override_system if turn.override_system is not None else render_system(agent)
    system = with_skills(system, turn.client_skills or [])
    specs = box.specs()
    totals = _Totals()
    ttft_ns: int | None = None
    stop_reason = "max_steps"
    finish_reason: str | None = None
    approval_request: tuple[str, list[str]] | None = None  # (request id, the call ids it waits for)
    inputs = sum(isinstance(m, UserMessage) for m in new)
    window = conversation.window_of(agent).context_window
    record = _Record(persist, new)  # the input goes to the history now, alongside the first request
    try:
        for index in range(turn.max_steps):
            if cancelled():
                raise asyncio.CancelledError
            converted = chats.convert([*history, *new])
            reserve = settings.max_output_tokens
            messages, dropped = fit(system, specs, converted, window=window, reserve=reserve, inputs=inputs)
            request = LLMRequest(
                model=model.name, system=system, messages=messages, tools=specs, max_output_tokens=reserve, settings=generation
            )
            step = await _step(
                turn,
                model,
                request,
                box,
                index=index,
                dropped=dropped,
                settings=settings,
                emit=emit,
                record=record,
                record_step=record_step,
                cancelled=cancelled,
                metrics=metrics,
                trace_request_max_bytes=trace_request_max_bytes,
            )
            totals.steps += 1
            totals.add(step)
            if ttft_ns is None and step.first_token_ns is not None:
                ttft_ns = step.first_token_ns - turn.accepted_at_ns
            new += step.messages
            finish_reason = step.finish.raw if step.finish else None
            if step.tool_calls:
                if any(box.waits_for_client(c.name) for c in step.tool_calls):
                    # The step's calls wait for the client's decisions, all of them (module docstring
                    # of runtime.tools.turn): nothing runs now.
                    await record.save()
                    stop_reason = "requires_approval"
                    asked = next(m for m in step.messages if isinstance(m, ApprovalRequestMessage))
                    approval_request = (asked.id, [c.tool_call_id or "" for c in asked.calls()])
                    break
                await record.save()  # the calls are on record before any of them runs
                step_id = step.messages[0].step_id
                try:
                    results = returned(await box.run_all(step.tool_calls), run_id=turn.run_id, step_id=step_id)
                except asyncio.CancelledError:
                    await _interrupted(persist, [], [c.call_id for c in step.tool_calls], run_id=turn.run_id, step_id=step_id)
                    raise
                await emit(results.model_copy())
                new.append(results)
                await record.save()
                continue
            await record.save()
            stop_reason = "max_tokens_exceeded" if step.truncated else "end_turn"
            break
    finally:
        await record.settle()
    return TurnOutcome(
        stop_reason=stop_reason,
        usage=totals.statistics(turn.run_id),
        new_messages=new,
        ttft_ns=ttft_ns,
        finish_reason=finish_reason,
        approval_request=approval_request,
    )


INTERRUPTED = "no result: the turn was cancelled while this call ran; it may have taken effect"


async def _interrupted(
    persist: Persist | None, before: list[HistoryMessage], call_ids: list[str], *, run_id: str, step_id: str | None
) -> None:
    """Put on record that a cancel cut calls short while they ran (``before``: what comes first, not
    on record yet), so the model is not told they never ran: a tool may have done its work (a sync
    one runs to its end in its thread). Shielded: it is written as the turn is being cancelled."""
    if persist is None:
        return
    results = returned([(i, ToolResult("error", INTERRUPTED)) for i in call_ids], run_id=run_id, step_id=step_id)
    with contextlib.suppress(Exception):
        await asyncio.shield(persist([*before, results]))


class _Record:
    """A turn's messages on their way to the history, in order, and its steps' traces. The input
    (``messages`` as given) is written at once, concurrently with the first step's request, so
    keeping it costs no round trip before the first token; each later ``save`` writes what was added
    since, after the write before it has landed. A step's trace is written alongside (``trace``: in
    the same event-loop turn as the step's messages, so in the same write to Redis), each after the
    one before it. ``settle`` waits for the input's write and every trace however the turn ends, so
    they are on record before the run's end, even when the first step fails."""

    def __init__(self, persist: Persist | None, messages: list[HistoryMessage]) -> None:
        self._persist = persist
        self._messages = messages
        self._saved = len(messages)
        self._first: asyncio.Future[None] | None = None
        self._traced: asyncio.Future[None] | None = None  # the latest step's trace, on its way
        if persist is not None and messages:
            self._first = asyncio.ensure_future(persist(list(messages)))

    def trace(self, write: Awaitable[None]) -> None:
        """Start writing a step's trace, after the trace before it has landed."""
        before = self._traced

        async def in_order() -> None:
            if before is not None:
                await before
            await write

        self._traced = asyncio.ensure_future(in_order())

    async def save(self) -> None:
        await self.settle()
        if self._persist is not None and self._saved < len(self._messages):
            await self._persist(self._messages[self._saved :])
            self._saved = len(self._messages)

    async def settle(self) -> None:
        if self._first is not None:
            first, self._first = self._first, None
            await asyncio.shield(first)
        if self._traced is not None:
            traced, self._traced = self._traced, None
            await asyncio.shield(traced)


def _filtered(emit: Emit, types: list[str] | None) -> Emit:
    """``include_return_message_types``: only those message types reach the stream (everything is
    still stored in the history; pings, stop reason and usage are not messages and always go)."""
    if types is None:
        return emit
    allowed = set(types)

    async def send(item: WireItem) -> None:
        if not isinstance(item, LettaMessage) or item.message_type in allowed:  # type: ignore[attr-defined]  # each concrete message declares it (a Literal), their base does not
            await emit(item)

    return send


def _approval_message(turn: TurnRequest, approval: ApprovalCreate, gated: Sequence[Waiting]) -> ApprovalResponseMessage:
    """The client's answer, as the history keeps it (and Letta lists it): one decision per call it
    answered in ``approvals`` (a whole-request ``approve`` applies to each), and, as in Letta,
    ``approval_request_id`` naming the first call."""
    decisions = {d.tool_call_id: d for d in approval.approvals or ()}
    approvals: list[dict[str, object]] = []
    for waiting in gated:
        decision = decisions.get(waiting.call.call_id)
        if isinstance(decision, ToolReturnCreate):
            approvals.append(decision.model_dump(exclude_none=True) | {"tool_return": decision.text()})
        else:
            approve = decision.approve if decision is not None else approval.approve
            reason = (decision.reason if decision is not None else None) or approval.reason
            entry: dict[str, object] = {"type": "approval", "tool_call_id": waiting.call.call_id, "approve": approve}
            if reason is not None:
                entry["reason"] = reason
            approvals.append(entry)
    approved = [a["approve"] for a in approvals if a.get("type") == "approval"]
    return ApprovalResponseMessage(
        id=new_id("message"),
        run_id=turn.run_id,
        otid=approval.otid,
        approval_request_id=gated[0].call.call_id if gated else approval.approval_request_id,
        approve=approval.approve if approval.approve is not None else (all(approved) if approved else None),
        reason=approval.reason,
        approvals=approvals,
    )


async def _step(
    turn: TurnRequest,
    model: Model,
    request: LLMRequest,
    box: Toolbox,
    *,
    index: int,
    dropped: int,
    settings: ResolvedSettings,
    emit: Emit,
    record: _Record,
    record_step: RecordStep | None,
    cancelled: Cancelled,
    metrics: Recorder,
    trace_request_max_bytes: int,
) -> StepResult:
    step_id = new_id("step")
    assembler = StepAssembler(
        message_id=new_id("message"),
        step_id=step_id,
        run_id=turn.run_id,
        stream_tokens=turn.stream_tokens,
        emit=emit,
        waits_for_client=box.waits_for_client,
    )
    attempts = Attempts()
    started_ns = time.time_ns()
    trace = _StepTrace(
        turn,
        model,
        request,
        step_id=step_id,
        index=index,
        started_ns=started_ns,
        attempts=attempts,
        dropped=dropped,
        settings=settings.summary(),
        request_max_bytes=trace_request_max_bytes,
    )
    meter = metrics.model(model.provider, model.name)
    last = time.perf_counter()  # the request; then the latest content event
    first_at = last  # the first content event's
    longest = 0.0  # the longest gap between two content events
    contents = 0
    try:
        stream = model.stream(request, attempts)
        async with contextlib.aclosing(stream):
            async for event in stream:
                if cancelled():
                    raise asyncio.CancelledError
                if isinstance(event, CONTENT_EVENTS):
                    now = time.perf_counter()
                    if contents:
                        longest = max(longest, now - last)
                    else:
                        meter.first_token(now - last)
                        first_at = now
                    contents += 1
                    last = now
                await assembler.feed(event)
        result = await assembler.close()
        _check(result)
    except asyncio.CancelledError:
        record.trace(trace.record(record_step, assembler.snapshot(), status="cancelled", stop_reason="cancelled"))
        raise
    except RunFailure as failure:
        if isinstance(failure, LLMError):
            metrics.provider_error(model.provider, failure.error_type)
        record.trace(trace.record(record_step, assembler.snapshot(), status="failed", failure=failure))
        raise
    finally:  # the response's pace, however it ended: two points, not one per token (runtime.metrics)
        if contents > 1:
            meter.paced((last - first_at) / (contents - 1), longest)
    record.trace(trace.record(record_step, result, status="success"))
    return result


def _check(result: StepResult) -> None:
    """A response must say something, unless the token limit cut it before it could."""
    if result.finish is not None and result.finish.reason == "content_filter":
        raise LLMContentFilterError(f"finish reason {result.finish.raw!r}")
    if not result.text and not result.tool_calls and not result.truncated:
        raise LLMEmptyResponseError("the model produced no text and no tool call")


@dataclass
class _StepTrace:
    turn: TurnRequest
    model: Model
    request: LLMRequest
    step_id: str
    index: int
    started_ns: int
    attempts: Attempts
    dropped: int
    settings: dict[str, Any]  # the model settings in force, each with the layer it came from
    request_max_bytes: int  # how much of the request the trace keeps (``_bounded``)

    async def record(
        self,
        sink: RecordStep | None,
        result: StepResult | None,
        *,
        status: str,
        stop_reason: str | None = None,
        failure: RunFailure | None = None,
    ) -> None:
        if sink is None:
            return
        with contextlib.suppress(Exception):  # a trace must never change how the run ends
            await sink(self.document(result, status=status, stop_reason=stop_reason, failure=failure))

    def document(
        self, result: StepResult | None, *, status: str, stop_reason: str | None, failure: RunFailure | None
    ) -> dict[str, Any]:
        now = time.time_ns()
        usage = result.usage if result else None
        doc: dict[str, Any] = {
            "id": self.step_id,
            "run_id": self.turn.run_id,
            "agent_id": self.turn.agent_id,
            "conversation_id": self.turn.conversation_id,
            "step_index": self.index,
            "status": status,
            "created_at": datetime.fromtimestamp(self.started_ns / 1e9, UTC).isoformat(),
            "model": self.model.name,
            "model_handle": self.model.handle,
            "provider_name": self.model.provider,
            "model_endpoint": self.model.endpoint,
            "stop_reason": stop_reason or (failure.stop_reason if failure else None),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "total_tokens": (usage.prompt_tokens + usage.completion_tokens) if usage else None,
            "cached_input_tokens": usage.cached_input_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "trace": {
                "request": _bounded(self.model.adapter.payload(self.request), self.request_max_bytes),
                "response": _summary(result),
                "latency_ms": round((now - self.started_ns) / 1e6, 3),
                "ttft_ms": round((result.first_token_ns - self.started_ns) / 1e6, 3)
                if result and result.first_token_ns
                else None,
                "attempts": self.attempts.count,
                "history_messages_dropped": self.dropped,
                "model_settings": self.settings,
            },
        }
        if failure is not None:
            doc["error_type"] = failure.error_type
            doc["error_data"] = {"message": failure.public_message, "detail": failure.detail or None}
        return doc


def _summary(result: StepResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "id": result.info.response_id if result.info else None,
        "model": result.info.model if result.info else None,
        "finish_reason": result.finish.reason if result.finish else None,
        "provider_finish_reason": result.finish.raw if result.finish else None,
        "text": result.text,
        "refusal": result.refused,
        "reasoning_chars": sum(len(r.text) for r in result.reasoning),
        "redacted_reasoning_blocks": sum(1 for r in result.reasoning if r.redacted),
        "tool_calls": [{"id": c.call_id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls],
        # Calls of a response cut by the token limit: neither run nor sent for approval (runtime.agent.step).
        "cut_tool_calls": [{"id": c.call_id, "name": c.name, "arguments": c.arguments} for c in result.cut_tool_calls],
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "cached_input_tokens": result.usage.cached_input_tokens,
            "cache_write_tokens": result.usage.cache_write_tokens,
            "reasoning_tokens": result.usage.reasoning_tokens,
        },
    }


def _bounded(payload: dict[str, Any], max_bytes: int) -> dict[str, Any] | None:
    """The request body as the trace keeps it: whole up to ``max_bytes`` encoded; beyond that, the
    newest messages that fit (with the system prompt, tools and settings, which are always kept),
    the oldest replaced by one ``{"convoy_elided_messages": n}`` marker. None with ``max_bytes`` 0.

    A trace lives as long as its run (``CONVOY_STREAM_TTL_S``), and a long conversation's request
    is mostly its history, which the conversation keeps anyway: kept whole, every step would store
    the history again (29 KiB a run, more than its stream, in ``convoy bench turns``)."""
    if max_bytes <= 0:
        return None
    size = len(to_json(payload, fallback=str))
    if size <= max_bytes:
        return payload
    bounded = dict(payload)
    for name in ("messages", "input", "contents"):
        items = bounded.get(name)
        if not isinstance(items, list) or not items:
            continue
        # OpenAI's chat messages start with the system prompt: it stays, as the others' do.
        first = next((i for i, item in enumerate(items) if not (isinstance(item, dict) and item.get("role") in _SYSTEM_ROLES)), len(items))
        head, rest = items[:first], items[first:]
        # Room left by the rest of the body, the list's brackets, its head and the marker (each item
        # with its comma); then the newest messages, one by one, while they fit: only those are
        # encoded on their own, however long the history.
        rest_of_body = {key: value for key, value in bounded.items() if key != name}
        room = max_bytes - len(to_json(rest_of_body, fallback=str)) - len(to_json(name)) - 4  # ,"name":[]
        room -= sum(len(to_json(item, fallback=str)) + 1 for item in head)
        room -= len(to_json({"convoy_elided_messages": len(rest)})) + 1
        kept = 0
        while kept < len(rest) and (need := len(to_json(rest[-1 - kept], fallback=str)) + 1) <= room:
            room -= need
            kept += 1
        bounded[name] = [*head, {"convoy_elided_messages": len(rest) - kept}, *rest[len(rest) - kept :]]
    return bounded


_SYSTEM_ROLES = ("system", "developer")
