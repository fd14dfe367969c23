"""The OpenAI Chat adapter reading compatible servers' streams through the real ``openai`` SDK, from
the fake provider over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from bench.upstream import FakeProvider, Stream
from bench.upstream.script import data
from runtime.agent.step import StepAssembler
from runtime.ids import new_id
from runtime.providers.events import ChatMessage, LLMEvent, LLMRequest, ToolCall, ToolSpec
from runtime.providers.openai_chat import OpenAIChatAdapter
from runtime.providers.stream import StreamPolicy, guarded
from runtime.schemas.messages import WireItem

PARIS, ROME = '{"city":"Paris"}', '{"city":"Rome"}'


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def _frames(model: str, tool_calls: list[list[dict[str, Any]]]) -> list[bytes]:
    """A Chat Completions stream whose chunks carry ``tool_calls`` exactly as given, one list a chunk."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return data({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [choice]})

    opening = chunk({"role": "assistant", "tool_calls": tool_calls[0]})
    return [opening, *(chunk({"tool_calls": calls}) for calls in tool_calls[1:]), chunk({}, "tool_calls"), b"data: [DONE]\n\n"]


def _call(call_id: str | None, arguments: str, name: str | None = "get_weather", **index: int | None) -> dict[str, Any]:
    """A tool-call delta; ``index`` given only as a keyword (absent, ``None`` or a number)."""
    function = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
    call: dict[str, Any] = {**index, "function": function}
    if call_id is not None:
        call |= {"id": call_id, "type": "function"}
    return call


async def _calls(fake: FakeProvider, model: str) -> tuple[ToolCall, ...]:
    """The tool calls the step loop would run for the scripted response."""
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
    adapter = OpenAIChatAdapter(client, provider="openai")
    tools = (ToolSpec("get_weather", "The weather.", {"type": "object", "properties": {"city": {"type": "string"}}}),)
    request = LLMRequest(model=model, system="s", messages=[ChatMessage("user", "Paris and Rome?")], tools=tools)
    policy = StreamPolicy(first_token_s=5, idle_s=5, retries=0)
    events: list[LLMEvent] = [e async for e in guarded(adapter.stream, request, provider="openai", policy=policy)]

    async def emit(_: WireItem) -> None:
        return None

    assembler = StepAssembler(message_id=new_id("message"), step_id=new_id("step"), run_id="run-x", stream_tokens=False, emit=emit)
    for event in events:
        await assembler.feed(event)
    return (await assembler.close()).tool_calls


@pytest.mark.parametrize(
    "tool_calls",
    [
        pytest.param([[_call("call_a", PARIS), _call("call_b", ROME)]], id="no-index-both-in-one-chunk"),
        pytest.param([[_call("call_a", PARIS, index=None), _call("call_b", ROME, index=None)]], id="null-index"),
        pytest.param(
            [[_call("call_a", "")], [_call(None, '{"city":', None)], [_call(None, '"Paris"}', None)], [_call("call_b", ROME)]],
            id="no-index-fragments-continue-the-latest-call",
        ),
        pytest.param(
            [[_call("call_a", '{"city":')], [_call("call_a", '"Paris"}', None)], [_call("call_b", ROME, index=None)]],
            id="no-index-fragments-repeat-their-id",
        ),
    ],
)
async def test_parallel_tool_calls_without_an_index_stay_apart(
    fake: FakeProvider, request: pytest.FixtureRequest, tool_calls: list[list[dict[str, Any]]]
) -> None:
    """Regression (G4): a delta without ``index`` failed the step (KeyError, ``llm_invalid_response``);
    with ``"index": null`` both calls merged into one whose arguments were not JSON."""
    model = f"compat-{request.node.callspec.id}"
    fake.script(model, Stream(_frames(model, tool_calls)))
    assert await _calls(fake, model) == (ToolCall("call_a", "get_weather", PARIS), ToolCall("call_b", "get_weather", ROME))


async def test_numbered_calls_still_follow_their_index(fake: FakeProvider) -> None:
    """OpenAI's own form: fragments keyed only by ``index``, interleaved across calls."""
    model = "compat-numbered"
    fragments = [
        [_call("call_a", "", index=0)],
        [_call("call_b", "", index=1)],
        [_call(None, ROME, None, index=1)],
        [_call(None, PARIS, None, index=0)],
    ]
    fake.script(model, Stream(_frames(model, fragments)))
    assert await _calls(fake, model) == (ToolCall("call_a", "get_weather", PARIS), ToolCall("call_b", "get_weather", ROME))
