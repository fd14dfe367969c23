"""What one request sends: the history window cut to a head every provider accepts."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.agent.context import HISTORY_WINDOW, fit
from runtime.agent.prompt import ChatCache, to_chat
from runtime.providers.events import ChatMessage
from runtime.schemas.messages import (
    AssistantMessage,
    HistoryMessage,
    ReasoningMessage,
    ToolCall,
    ToolCallMessage,
    ToolReturnMessage,
    UserMessage,
)

WIDE = 1_000_000  # a context window no test history comes near: only the head rule cuts


def _tool_turn(t: int) -> list[HistoryMessage]:
    """A user message, the model's call, its result, the model's answer."""
    step = f"message-{t:08d}-0000-0000-0000-000000000000"
    return [
        UserMessage(id=f"message-u{t}", content=f"question {t}"),
        ToolCallMessage(id=step, tool_call=ToolCall(name="lookup", arguments="{}", tool_call_id=f"call_{t}")),
        ToolReturnMessage(id=f"message-r{t}", tool_call_id=f"call_{t}", status="success", tool_return="ok"),
        AssistantMessage(id=f"message-a{t}", content=f"answer {t}"),
    ]


def _problem(messages: Sequence[ChatMessage]) -> str | None:
    """Why a provider would refuse this request, or None: it must open with a user message, and
    each tool result must answer a call the model made since that turn's user message."""
    if not messages or messages[0].role != "user":
        return f"the request starts with {messages[0].role if messages else 'nothing'}"
    calls: set[str] = set()
    for message in messages:
        if message.role == "user":
            calls.clear()
        calls.update(c.call_id for c in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in calls:
            return f"the result of {message.tool_call_id} answers no call before it"
    return None


def test_a_history_window_cut_inside_a_turn_never_heads_the_request() -> None:
    """Regression (G1): a history longer than the window began the request with an orphan tool
    result (or the model's call, or its answer), which OpenAI, Anthropic and Gemini all refuse."""
    stored = [m for t in range(HISTORY_WINDOW // 4 + 2) for m in _tool_turn(t)]
    for shift in range(4):  # the window's first message: each message of a tool turn in turn
        new_input = UserMessage(id=f"message-new{shift}", content="next question")
        window = [*stored[: len(stored) - shift], new_input][-HISTORY_WINDOW:]
        messages, dropped = fit("system", (), ChatCache().convert(window), window=WIDE, reserve=None, inputs=1)
        assert _problem(messages) is None, f"window starting with {type(window[0]).__name__}: {_problem(messages)}"
        assert messages[-1] == ChatMessage("user", "next question")
        assert dropped <= 3, "only the cut turn's remains are left out"


def test_a_result_whose_call_is_before_the_history_is_left_out() -> None:
    """A tool result is only ever sent right where its call is answered."""
    turn = _tool_turn(7)
    chat = to_chat(turn[2:])  # the window starts at the result
    assert [m.role for m in chat] == ["assistant"]
    assert to_chat([*turn, turn[2]]) == to_chat(turn), "a second result for an answered call is left out"


def test_a_window_without_a_user_message_starts_at_the_model_not_a_result() -> None:
    """One turn longer than the window: no user message to start at, so the request starts at the
    first thing the model said, never at a result."""
    step = "message-00000000-0000-0000-0000-00000000beef"
    history: list[HistoryMessage] = [
        ToolReturnMessage(id="message-r0", tool_call_id="call_gone", status="success", tool_return="ok"),
        ReasoningMessage(id=step, reasoning="again"),
        ToolCallMessage(id=step, tool_call=ToolCall(name="lookup", arguments="{}", tool_call_id="call_1")),
        ToolReturnMessage(id="message-r1", tool_call_id="call_1", status="success", tool_return="ok"),
    ]
    messages, _ = fit("system", (), to_chat(history), window=WIDE, reserve=None, inputs=0)
    assert [(m.role, m.tool_call_id) for m in messages] == [("assistant", None), ("tool", "call_1")]
