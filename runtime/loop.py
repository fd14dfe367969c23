"""The agent step loop: one turn of a conversation, from input messages to a stop reason.

Plain Python with no Redis and no Ray: it reads the history it is given, calls the model through
a provider adapter, hands every wire item to ``emit`` as soon as it exists, and returns what the
caller must persist. The conversation actor owns persistence, fencing and the terminal sequence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from runtime.errors import LLMEmptyResponseError
from runtime.ids import new_id, segment_otid
from runtime.providers.base import ModelAdapter
from runtime.providers.events import ChatMessage, Finish, LLMRequest, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import AssistantMessage, HistoryMessage, StreamItem, UsageStatistics, UserMessage
from runtime.schemas.turns import TurnRequest

Emit = Callable[[StreamItem], Awaitable[None]]
Cancelled = Callable[[], bool]
AdapterFactory = Callable[[str], tuple[ModelAdapter, str]]

STOP_FOR_FINISH = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens_exceeded",
    "content_filter": "end_turn",
    "refusal": "end_turn",
    "tool_calls": "end_turn",
}


@dataclass
class TurnOutcome:
    stop_reason: str
    usage: UsageStatistics
    new_messages: list[HistoryMessage] = field(default_factory=list)
    ttft_ns: int | None = None


def model_for(turn: TurnRequest, conversation: ConversationRecord, agent: AgentRecord) -> str:
    """Per request, then per conversation, then per agent."""
    return turn.override_model or conversation.model or agent.model


def user_messages(turn: TurnRequest) -> list[HistoryMessage]:
    return [
        UserMessage(id=new_id("message"), content=m.text(), otid=m.otid, run_id=turn.run_id, name=m.name)
        for m in turn.messages
    ]


def to_chat(history: Sequence[HistoryMessage]) -> list[ChatMessage]:
    chat: list[ChatMessage] = []
    for message in history:
        if isinstance(message, UserMessage):
            chat.append(ChatMessage("user", _text(message.content)))
        elif isinstance(message, AssistantMessage):
            chat.append(ChatMessage("assistant", _text(message.content)))
    return chat


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


async def run_turn(
    turn: TurnRequest,
    *,
    agent: AgentRecord,
    conversation: ConversationRecord,
    history: Sequence[HistoryMessage],
    adapters: AdapterFactory,
    emit: Emit,
    cancelled: Cancelled = lambda: False,
) -> TurnOutcome:
    """Run one turn; raises a ``RunFailure`` for a failed turn (the caller ends the stream).

    A cancel normally arrives as a task cancellation. ``cancelled`` is checked as well before the
    model is called and at every event, because a cancellation that lands inside a Redis command
    can be absorbed by the client library's reconnect-and-retry and never reach this code.
    """
    inputs = user_messages(turn)
    adapter, model_name = adapters(model_for(turn, conversation, agent))
    request = LLMRequest(model=model_name, system=agent.system, messages=to_chat([*history, *inputs]))

    message_id = new_id("message")
    otid = segment_otid(message_id, 0)
    text: list[str] = []
    usage = Usage()
    finish = "end_turn"
    ttft_ns: int | None = None

    if cancelled():
        raise asyncio.CancelledError
    async for event in adapter.stream(request):
        if cancelled():
            raise asyncio.CancelledError
        if isinstance(event, TextDelta):
            if not event.text:
                continue
            if ttft_ns is None:
                ttft_ns = time.time_ns() - turn.accepted_at_ns
            text.append(event.text)
            if turn.stream_tokens:
                await emit(AssistantMessage(id=message_id, otid=otid, content=event.text, run_id=turn.run_id))
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Finish):
            finish = event.reason
        elif isinstance(event, ReasoningDelta | ToolCallDelta):
            continue  # reasoning and tools join the loop with the provider adapters

    reply = "".join(text)
    if not reply:
        raise LLMEmptyResponseError("the model produced no text")
    assistant = AssistantMessage(id=message_id, otid=otid, content=reply, run_id=turn.run_id)
    if not turn.stream_tokens:
        await emit(assistant)
    return TurnOutcome(
        stop_reason=STOP_FOR_FINISH[finish],
        usage=UsageStatistics(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
            step_count=1,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            run_ids=[turn.run_id],
        ),
        new_messages=[*inputs, assistant],
        ttft_ns=ttft_ns,
    )
