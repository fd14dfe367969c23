"""The step loop, without Redis or Ray: the echo model through the real event path."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from runtime.errors import LLMEmptyResponseError
from runtime.ids import new_id, segment_otid
from runtime.loop import model_for, run_turn
from runtime.providers.base import adapter_for, split_handle, validate_handle
from runtime.providers.echo import EchoAdapter
from runtime.providers.events import Finish, LLMEvent, LLMRequest, Usage
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import AssistantMessage, StreamItem, UserMessage, utcnow
from runtime.schemas.requests import MessageCreate
from runtime.schemas.turns import TurnRequest
from runtime.settings import Settings


def _agent(model: str = "echo/echo") -> AgentRecord:
    now = utcnow()
    return AgentRecord(id=new_id("agent"), name="a", model=model, system="sys", created_at=now, updated_at=now)


def _conversation(agent: AgentRecord, model: str | None = None) -> ConversationRecord:
    now = utcnow()
    return ConversationRecord(id=new_id("conv"), agent_id=agent.id, model=model, created_at=now, updated_at=now)


def _turn(text: str, **kw: object) -> TurnRequest:
    return TurnRequest(
        run_id=new_id("run"),
        agent_id="agent-x",
        conversation_id="conv-x",
        messages=[MessageCreate(content=text, otid="client-otid")],
        accepted_at_ns=time.time_ns(),
        **kw,  # type: ignore[arg-type]
    )


async def test_echo_streams_word_deltas_sharing_one_id() -> None:
    emitted: list[StreamItem] = []

    async def emit(item: StreamItem) -> None:
        emitted.append(item)

    agent = _agent()
    turn = _turn("  hello   wide world ")
    outcome = await run_turn(
        turn,
        agent=agent,
        conversation=_conversation(agent),
        history=[],
        adapters=lambda h: adapter_for(h, Settings(echo_delay_ms=0)),
        emit=emit,
    )
    assert all(isinstance(i, AssistantMessage) for i in emitted)
    assert "".join(i.content for i in emitted) == "  hello   wide world "  # type: ignore[attr-defined]
    assert len({i.id for i in emitted}) == 1 and len({i.otid for i in emitted}) == 1  # type: ignore[attr-defined]
    assert outcome.stop_reason == "end_turn"
    assert outcome.usage.completion_tokens == 3 and outcome.usage.step_count == 1
    user, assistant = outcome.new_messages
    assert isinstance(user, UserMessage) and user.otid == "client-otid"
    assert isinstance(assistant, AssistantMessage) and assistant.content == "  hello   wide world "
    assert outcome.ttft_ns is not None and outcome.ttft_ns > 0


async def test_step_streaming_emits_one_complete_message() -> None:
    emitted: list[StreamItem] = []

    async def emit(item: StreamItem) -> None:
        emitted.append(item)

    agent = _agent()
    await run_turn(
        _turn("a b c", stream_tokens=False),
        agent=agent,
        conversation=_conversation(agent),
        history=[],
        adapters=lambda h: (EchoAdapter(0), "echo"),
        emit=emit,
    )
    assert len(emitted) == 1 and emitted[0].content == "a b c"  # type: ignore[attr-defined]


class _Silent:
    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        yield Usage(prompt_tokens=1)
        yield Finish("end_turn")


async def test_a_model_that_says_nothing_is_an_empty_response_error() -> None:
    async def emit(item: StreamItem) -> None:
        raise AssertionError("nothing to emit")

    agent = _agent()
    with pytest.raises(LLMEmptyResponseError):
        await run_turn(
            _turn("hi"), agent=agent, conversation=_conversation(agent), history=[], adapters=lambda h: (_Silent(), "x"), emit=emit
        )


def test_model_precedence_request_then_conversation_then_agent() -> None:
    agent = _agent("echo/agent")
    conv = _conversation(agent, model="echo/conversation")
    assert model_for(_turn("x", override_model="echo/request"), conv, agent) == "echo/request"
    assert model_for(_turn("x"), conv, agent) == "echo/conversation"
    assert model_for(_turn("x"), _conversation(agent), agent) == "echo/agent"


def test_handles_and_otids() -> None:
    assert split_handle("openai/gpt-4o/mini") == ("openai", "gpt-4o/mini")
    assert validate_handle("echo/echo") == "echo/echo"
    mid = new_id("message")
    assert segment_otid(mid, 0) != segment_otid(mid, 1)
    assert segment_otid(mid, 1) == segment_otid(mid, 1)


def test_default_model_is_echo_without_keys() -> None:
    assert Settings(openai_api_key=None, anthropic_api_key=None).resolved_default_model() == "echo/echo"
