"""Stored Letta messages -> provider-neutral chat messages, once per message.

``to_chat`` converts a whole history. A conversation's history only grows at its end, and the
request of every step of every turn carries all of it, so converting it whole each step costs in
proportion to its length (1 ms for 120 messages on the project's machine, measured; 8 ms at the
history window of 1,000). ``ChatCache`` converts each part between two user messages once: a user
message closes everything before it (open tool calls get their error results there), so a part
converts the same whatever comes after it, and only the part still being written is done again.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from runtime.providers.events import AssistantPart, ChatMessage, ReasoningBlock, ToolCall
from runtime.schemas.messages import (
    ApprovalRequestMessage,
    AssistantMessage,
    HiddenReasoningMessage,
    HistoryMessage,
    ReasoningMessage,
    ToolCallMessage,
    ToolReturnMessage,
    UserMessage,
)

CALL_TYPES = (ToolCallMessage, ApprovalRequestMessage)
RESPONSE_PARTS = (AssistantMessage, ReasoningMessage, HiddenReasoningMessage, *CALL_TYPES)
UNANSWERED = "no result: the call was cancelled or its turn ended before it ran"


def to_chat(history: Sequence[HistoryMessage]) -> list[ChatMessage]:
    """Stored Letta messages -> provider-neutral chat messages.

    The parts of one model response (reasoning, text, tool calls) share a message id and become
    one assistant message (``parts`` keeps them in their order); each tool return becomes a tool
    message. A tool call that never got a
    result (its approval was cancelled, its turn failed) gets an error result, because providers
    refuse a history with unanswered calls. For the same reason a result is kept only as the answer
    to an open call before it: one whose call lies before the history's start (the window cut
    between them) or that answers a call already answered or closed is left out.
    """
    chat: list[ChatMessage] = []
    group: list[HistoryMessage] = []
    open_calls: list[str] = []

    def flush() -> None:
        if not group:
            return
        parts = tuple(part for m in group for part in _parts(m))
        text = "".join(p for p in parts if isinstance(p, str))
        reasoning = tuple(p for p in parts if isinstance(p, ReasoningBlock))
        calls = tuple(p for p in parts if isinstance(p, ToolCall))
        chat.append(ChatMessage("assistant", text, tool_calls=calls, reasoning=reasoning, parts=parts))
        open_calls.extend(c.call_id for c in calls)
        group.clear()

    def close_calls() -> None:
        chat.extend(ChatMessage("tool", UNANSWERED, tool_call_id=c, is_error=True) for c in open_calls)
        open_calls.clear()

    for message in history:
        if isinstance(message, RESPONSE_PARTS):
            if group and group[0].id != message.id:
                flush()
            if not group:
                close_calls()
            group.append(message)
            continue
        flush()
        if isinstance(message, ToolReturnMessage):
            for result in message.returns():
                if result.tool_call_id not in open_calls:
                    continue  # its call is not in this history, or already has its result
                open_calls.remove(result.tool_call_id)
                chat.append(
                    ChatMessage("tool", result.tool_return, tool_call_id=result.tool_call_id, is_error=result.status == "error")
                )
        elif isinstance(message, UserMessage):
            close_calls()
            chat.append(ChatMessage("user", _text(message.content)))
    flush()
    close_calls()
    return chat


def _parts(message: HistoryMessage) -> list[AssistantPart]:
    """The parts of the model's response one stored message holds, in order. A call's signature
    comes back as the signature part before it (``events.PartSignature``)."""
    if isinstance(message, HiddenReasoningMessage):
        return [ReasoningBlock(redacted=message.hidden_reasoning)]
    if isinstance(message, ReasoningMessage):
        return [ReasoningBlock(message.reasoning, message.signature)]
    if isinstance(message, CALL_TYPES):
        parts: list[AssistantPart] = []
        for call in message.calls():
            if call.signature:
                parts.append(ReasoningBlock("", call.signature))
            parts.append(ToolCall(call.tool_call_id or "", call.name or "", call.arguments or ""))
        return parts
    assert isinstance(message, AssistantMessage)
    return [_text(message.content)]


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


class ChatCache:
    """``to_chat`` for a history that grows at its end (see the module docstring). Parts are
    recognised by their first message (the same object, not an equal one) and their length, so a
    history that is trimmed or replaced is converted anew where it changed, and nothing stale is
    kept: only the parts of the last history converted are remembered."""

    def __init__(self) -> None:
        self._parts: dict[int, tuple[HistoryMessage, int, list[ChatMessage]]] = {}

    def convert(self, history: Sequence[HistoryMessage]) -> list[ChatMessage]:
        bounds = [i for i, m in enumerate(history) if isinstance(m, UserMessage)]
        if not bounds or bounds[0] != 0:
            bounds.insert(0, 0)
        bounds.append(len(history))
        kept: dict[int, tuple[HistoryMessage, int, list[ChatMessage]]] = {}
        chat: list[ChatMessage] = []
        for start, end in itertools.pairwise(bounds):
            if start == end:
                continue
            first = history[start]
            known = self._parts.get(id(first))
            part = known[2] if known is not None and known[0] is first and known[1] == end - start else to_chat(history[start:end])
            kept[id(first)] = (first, end - start, part)
            chat.extend(part)
        self._parts = kept
        return chat
