"""Normalized events -> wire items and history, and history -> the next request; no I/O."""

from __future__ import annotations

import json

import pytest

from runtime.agent.prompt import to_chat
from runtime.agent.step import StepAssembler
from runtime.errors import (
    LLMAuthenticationError,
    LLMBadRequestError,
    LLMContextWindowError,
    LLMRateLimitError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from runtime.ids import new_id
from runtime.providers.errors import classify, error_fields
from runtime.providers.events import Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from runtime.schemas.messages import (
    AssistantMessage,
    HiddenReasoningMessage,
    ReasoningMessage,
    ToolCallMessage,
    ToolReturn,
    ToolReturnMessage,
    UserMessage,
    WireItem,
)

EVENTS = [
    ReasoningDelta("think"),
    ReasoningDelta(" more"),
    ReasoningDelta(signature="sig-1"),
    ReasoningDelta(redacted="opaque"),
    TextDelta("Hel"),
    TextDelta("lo"),
    ToolCallDelta(0, call_id="call_a", name="lookup"),
    ToolCallDelta(0, arguments='{"q":'),
    ToolCallDelta(0, arguments='"x"}'),
    ToolCallDelta(1, call_id="call_b", name="clock", arguments="{}"),
    Usage(prompt_tokens=10, completion_tokens=5, reasoning_tokens=3),
    Finish("tool_calls", raw="tool_use"),
]


async def _assemble(stream_tokens: bool) -> tuple[list[WireItem], object]:
    emitted: list[WireItem] = []

    async def emit(item: WireItem) -> None:
        emitted.append(item)

    assembler = StepAssembler(
        message_id=new_id("message"), step_id=new_id("step"), run_id="run-x", stream_tokens=stream_tokens, emit=emit
    )
    for event in EVENTS:
        await assembler.feed(event)
    return emitted, await assembler.close()


async def test_token_streaming_segments_share_the_id_and_change_otid_per_segment() -> None:
    emitted, result = await _assemble(stream_tokens=True)
    kinds = [type(i).__name__ for i in emitted]
    assert kinds == [
        "ReasoningMessage",
        "ReasoningMessage",
        "ReasoningMessage",
        "HiddenReasoningMessage",
        "AssistantMessage",
        "AssistantMessage",
        "ToolCallMessage",
        "ToolCallMessage",
        "ToolCallMessage",
        "ToolCallMessage",
    ]
    assert len({i.id for i in emitted}) == 1  # type: ignore[attr-defined]
    otids = [i.otid for i in emitted]  # type: ignore[attr-defined]
    # reasoning x3 | hidden | text x2 | call a x3 | call b: five segments, in order
    assert [otids.index(o) for o in otids] == [0, 0, 0, 3, 4, 4, 6, 6, 6, 9]
    assert emitted[2].signature == "sig-1"  # type: ignore[attr-defined]
    assert emitted[6].tool_call.name == "lookup" and emitted[7].tool_call.name is None  # type: ignore[attr-defined]
    assert result.text == "Hello"  # type: ignore[attr-defined]
    assert [(c.call_id, c.name, c.arguments) for c in result.tool_calls] == [  # type: ignore[attr-defined]
        ("call_a", "lookup", '{"q":"x"}'),
        ("call_b", "clock", "{}"),
    ]


async def test_step_streaming_emits_one_complete_message_per_segment_and_gathers_the_calls() -> None:
    emitted, result = await _assemble(stream_tokens=False)
    assert [type(i) for i in emitted] == [ReasoningMessage, HiddenReasoningMessage, AssistantMessage, ToolCallMessage]
    assert emitted[0].reasoning == "think more" and emitted[0].signature == "sig-1"  # type: ignore[attr-defined]
    calls = emitted[3]
    assert isinstance(calls, ToolCallMessage), "as Letta: one tool_call_message holds the response's parallel calls"
    assert [c.tool_call_id for c in calls.tool_calls or ()] == ["call_a", "call_b"]
    assert calls.tool_call.tool_call_id == "call_a" and json.loads(calls.tool_call.arguments or "") == {"q": "x"}
    assert [m.model_dump(exclude={"date"}) for m in result.messages] == [  # type: ignore[attr-defined]
        m.model_dump(exclude={"date"}) for m in emitted
    ]


async def test_history_of_a_tool_step_becomes_one_assistant_message_and_tool_results() -> None:
    _, result = await _assemble(stream_tokens=True)
    history = [
        UserMessage(id=new_id("message"), content="hi"),
        *result.messages,  # type: ignore[attr-defined]
        ToolReturnMessage(
            id=new_id("message"),
            tool_call_id="call_a",
            status="success",
            tool_return="42",
            tool_returns=[
                ToolReturn(tool_call_id="call_a", status="success", tool_return="42"),
                ToolReturn(tool_call_id="call_b", status="error", tool_return="boom"),
            ],
        ),
    ]
    chat = to_chat(history)
    assert [m.role for m in chat] == ["user", "assistant", "tool", "tool"]
    assistant = chat[1]
    assert assistant.content == "Hello"
    assert [c.name for c in assistant.tool_calls] == ["lookup", "clock"]
    assert assistant.reasoning[0].signature == "sig-1" and assistant.reasoning[1].redacted == "opaque"
    assert chat[3].is_error and chat[3].tool_call_id == "call_b"


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected"),
    [
        (401, "authentication_error", "invalid x-api-key", LLMAuthenticationError),
        (429, "rate_limit_error", "slow down", LLMRateLimitError),
        (529, "overloaded_error", "Overloaded", LLMUnavailableError),
        (None, "overloaded_error", "Overloaded", LLMUnavailableError),  # mid-stream event: error
        (500, None, "boom", LLMUnavailableError),
        (504, None, "gateway timeout", LLMTimeoutError),
        (400, "context_length_exceeded", "too long", LLMContextWindowError),
        (400, "invalid_request_error", "prompt is too long: 300000 tokens > 200000 maximum", LLMContextWindowError),
        (400, "invalid_request_error", "bad field", LLMBadRequestError),
    ],
)
def test_provider_failures_map_to_one_taxonomy(status: int | None, kind: str | None, message: str, expected: type) -> None:
    error = classify("p", status, kind, message)
    assert type(error) is expected
    assert message in error.detail


def test_error_fields_read_every_provider_shape() -> None:
    assert error_fields({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}) == (
        "overloaded_error",
        "Overloaded",
    )
    assert error_fields({"error": {"message": "m", "type": "invalid_request_error", "code": "context_length_exceeded"}}) == (
        "context_length_exceeded",
        "m",
    )
    assert error_fields({"code": "server_error", "message": "m"}) == ("server_error", "m")


async def test_calls_a_server_sent_no_id_for_stream_with_the_ids_they_are_stored_and_answered_by() -> None:
    """Some OpenAI-compatible servers send a call without ``id``. Each call still gets one, the same
    in its streamed first piece as in the history, since an approval names the call by it."""
    emitted: list[WireItem] = []

    async def emit(item: WireItem) -> None:
        emitted.append(item)

    assembler = StepAssembler(
        message_id=new_id("message"), step_id=new_id("step"), run_id="run-x", stream_tokens=True, emit=emit,
        waits_for_client=lambda name: True,
    )
    for event in [
        ToolCallDelta(0, name="transfer", arguments='{"amount":'),
        ToolCallDelta(0, arguments=" 5}"),
        ToolCallDelta(1, name="transfer", arguments='{"amount": 7}'),
        Finish("tool_calls"),
    ]:
        await assembler.feed(event)
    result = await assembler.close()
    stored = [call.call_id for call in result.tool_calls]
    assert len(set(stored)) == 2 and all(stored)
    streamed = [i.tool_call.tool_call_id for i in emitted if i.tool_call.tool_call_id]  # type: ignore[attr-defined]
    assert streamed == stored, "each call's first streamed piece names it as the history does"
