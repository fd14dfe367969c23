"""History -> chat messages: the cache converts each closed part once and always agrees with a
conversion of the whole history."""

from __future__ import annotations

from runtime.agent.prompt import ChatCache, to_chat
from runtime.ids import new_id
from runtime.schemas.messages import (
    ApprovalRequestMessage,
    AssistantMessage,
    HistoryMessage,
    ReasoningMessage,
    ToolCall,
    ToolCallMessage,
    ToolReturnMessage,
    UserMessage,
)


def _turns() -> list[HistoryMessage]:
    """Turns of every shape: plain, with tool calls and results, a call left without a result,
    an approval answered in the next turn, reasoning."""
    out: list[HistoryMessage] = []
    for i in range(6):
        out.append(UserMessage(id=new_id("message"), content=f"question {i}"))
        step = new_id("message")
        if i % 3 == 1:
            out.append(ReasoningMessage(id=step, reasoning=f"thinking {i}", signature=f"sig {i}"))
            out.append(ToolCallMessage(id=step, tool_call=ToolCall(name="add", arguments="{}", tool_call_id=f"call-{i}")))
            if i != 4:  # turn 4's call never gets a result: the next user message closes it
                out.append(ToolReturnMessage(id=new_id("message"), tool_call_id=f"call-{i}", status="success", tool_return="3"))
            out.append(AssistantMessage(id=new_id("message"), content=f"answer {i}"))
        elif i % 3 == 2:
            out.append(ApprovalRequestMessage(id=step, tool_call=ToolCall(name="pay", arguments="{}", tool_call_id=f"ask-{i}")))
            out.append(ToolReturnMessage(id=new_id("message"), tool_call_id=f"ask-{i}", status="error", tool_return="denied"))
        else:
            out.append(AssistantMessage(id=step, content=f"answer {i}"))
    return out


def test_the_cache_agrees_with_a_whole_conversion_at_every_length_and_after_trims() -> None:
    history = _turns()
    cache = ChatCache()
    for end in range(len(history) + 1):
        assert cache.convert(history[:end]) == to_chat(history[:end]), f"first {end} messages"
    for start in range(len(history)):
        assert cache.convert(history[start:]) == to_chat(history[start:]), f"from message {start}"


def test_closed_parts_are_converted_once_and_a_replaced_history_anew() -> None:
    history = _turns()
    cache = ChatCache()
    before = cache.convert(history[:-2])
    after = cache.convert(history)
    closed = next(i for i, m in enumerate(before) if m.role == "user" and m.content == "question 5")
    assert all(a is b for a, b in zip(before[:closed], after[:closed], strict=True)), "closed parts were reused"
    copies = [m.model_copy() for m in history]  # equal messages, other objects: nothing to reuse
    again = cache.convert(copies)
    assert again == after and not any(a is b for a, b in zip(again, after, strict=True))
