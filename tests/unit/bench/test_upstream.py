"""The fake providers are faithful: the real ``openai`` and ``anthropic`` SDKs parse what they send.

Every test drives a builder through the real SDK over real HTTP (no monkeypatching) and checks the
SDK's own typed view of the stream, its exception classes, and the transport behaviour (cuts,
hangs, client disconnects) as the server observed it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest
from openai.types.responses import ResponseErrorEvent

from bench.upstream import (
    KEEPALIVE,
    Call,
    FakeProvider,
    Hang,
    Status,
    Stream,
    Usage,
    anthropic_error,
    anthropic_error_event,
    anthropic_prompt_too_long,
    anthropic_redacted_thinking,
    anthropic_text,
    anthropic_thinking,
    anthropic_tool_use,
    chat_length,
    chat_refusal,
    chat_text,
    chat_tool_calls,
    cut_after,
    openai_context_length_error,
    openai_error,
    paced,
    responses_error_event,
    responses_failed,
    responses_function_call,
    responses_incomplete,
    responses_reasoning_summary,
    responses_text,
    split_frames,
    with_keepalives,
)
from runtime.errors import LLMUnavailableError
from runtime.providers.errors import translate

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def model(request: pytest.FixtureRequest) -> str:
    """A model name unique to the test, so scripts never leak between tests."""
    return f"fake-{request.node.name}"


@pytest.fixture(scope="module")
async def oai(fake: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
async def claude(fake: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key="x", max_retries=0) as client:
        yield client


async def chat_chunks(client: openai.AsyncOpenAI, model: str) -> list[Any]:
    stream = await client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    return [chunk async for chunk in stream]


async def responses_events(client: openai.AsyncOpenAI, model: str) -> list[Any]:
    stream = await client.responses.create(model=model, input="hi", stream=True)
    return [event async for event in stream]


async def claude_events(client: anthropic.AsyncAnthropic, model: str) -> list[Any]:
    stream = await client.messages.create(model=model, max_tokens=100, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    return [event async for event in stream]


async def wait_event(call: Call, name: str, timeout_s: float = 1.0) -> None:
    event = getattr(call, name)
    assert await asyncio.to_thread(event.wait, timeout_s), f"call.{name} not set within {timeout_s}s"


def chat_text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --------------------------------------------------------------------------------------------------
# OpenAI Chat Completions
# --------------------------------------------------------------------------------------------------


async def test_chat_text_usage_and_recording(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(chat_text(model, ["Hel", "lo", " wörld"], usage=Usage(50, 9, cached_tokens=32))))
    chunks = await chat_chunks(oai, model)

    assert chat_text_of(chunks) == "Hello wörld"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (50, 9, 59)
    assert final.usage.prompt_tokens_details.cached_tokens == 32
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(isinstance(c.to_dict().get("obfuscation"), str) for c in chunks)

    (call,) = fake.calls(model)
    assert call.path == "/v1/chat/completions"
    assert call.body["stream_options"] == {"include_usage": True}
    assert call.headers["authorization"] == "Bearer x"
    await wait_event(call, "finished")
    assert not call.disconnected.is_set()


async def test_chat_reasoning_content_then_text(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    usage = Usage(10, 30, reasoning_tokens=22)
    fake.script(model, Stream(chat_text(model, ["4"], reasoning=["2+2", " is 4"], usage=usage)))
    chunks = await chat_chunks(oai, model)

    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == "2+2 is 4"
    assert chat_text_of(chunks) == "4"
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 22


async def test_chat_usage_on_finish_chunk(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(chat_text(model, ["ok"], usage=Usage(3, 1), include_usage_chunk=False, obfuscate=False)))
    chunks = await chat_chunks(oai, model)

    assert all("obfuscation" not in c.to_dict() for c in chunks)

    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.total_tokens == 4


@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_chat_truncated_finishes(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str, finish: str) -> None:
    frames = chat_length(model, ['{"'], usage=None) if finish == "length" else chat_text(model, [], finish=finish)
    fake.script(model, Stream(frames))
    chunks = await chat_chunks(oai, model)

    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish


async def test_chat_refusal(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(chat_refusal(model, ["I'm", " sorry"])))
    chunks = await chat_chunks(oai, model)

    assert "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices) == "I'm sorry"
    assert chat_text_of(chunks) == ""


@pytest.mark.parametrize("interleave", [False, True])
async def test_chat_parallel_tool_calls(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str, interleave: bool
) -> None:
    calls = [("call_a", "get_weather", '{"ci', 'ty": "Pa', 'ris"}'), ("call_b", "get_time", "{", '"tz":"CET"}')]
    fake.script(model, Stream(chat_tool_calls(model, calls, interleave=interleave)))
    chunks = await chat_chunks(oai, model)

    acc: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = acc.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            slot["id"] += tc.id or ""
            slot["name"] += (tc.function.name or "") if tc.function else ""
            slot["args"] += (tc.function.arguments or "") if tc.function else ""
    assert acc[0] == {"id": "call_a", "name": "get_weather", "args": '{"city": "Paris"}'}
    assert json.loads(acc[1]["args"]) == {"tz": "CET"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_chat_survives_split_writes_and_keepalives(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str
) -> None:
    frames = split_frames(with_keepalives(chat_text(model, ["naïve ", "café ", "✓"])), every=7)
    assert all(isinstance(f, bytes) and len(f) <= 7 for f in frames)
    assert KEEPALIVE in b"".join(f for f in frames if isinstance(f, bytes))
    fake.script(model, Stream(frames))

    assert chat_text_of(await chat_chunks(oai, model)) == "naïve café ✓"


async def test_compat_prefix_path(fake: FakeProvider, model: str) -> None:
    fake.script(model, Stream(chat_text(model, ["hi"])))
    async with openai.AsyncOpenAI(base_url=fake.url + "/compat/v1", api_key="k", max_retries=0) as client:
        assert chat_text_of(await chat_chunks(client, model)) == "hi"
    assert fake.calls(model)[0].path == "/compat/v1/chat/completions"


# --------------------------------------------------------------------------------------------------
# OpenAI Responses
# --------------------------------------------------------------------------------------------------


async def test_responses_text(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(responses_text(model, ["2+2", " = ", "4"], usage=Usage(20, 10, cached_tokens=8))))
    events = await responses_events(oai, model)

    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "2+2 = 4"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "2+2 = 4"
    assert done.response.usage.input_tokens_details.cached_tokens == 8
    assert fake.calls(model)[0].path == "/v1/responses"


async def test_responses_reasoning_summary_via_stream_helper(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str
) -> None:
    summary = [["**Plan**", "\n\nAdd."], ["Check."]]
    usage = Usage(13, 40, reasoning_tokens=32)
    fake.script(model, Stream(responses_reasoning_summary(model, summary, ["Four", "."], usage=usage)))
    async with oai.responses.stream(model=model, input="2+2?") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.reasoning_summary_text.delta"]
        final = await stream.get_final_response()

    assert "".join(deltas) == "**Plan**\n\nAdd.Check."
    reasoning = final.output[0]
    assert reasoning.type == "reasoning"
    assert [part.text for part in reasoning.summary] == ["**Plan**\n\nAdd.", "Check."]
    assert final.output_text == "Four."
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 32


async def test_responses_function_calls(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    calls = [("call_1", "final_result", '{"', "result", '":', "6666}"), ("call_2", "noop", "{}")]
    fake.script(model, Stream(responses_function_call(model, calls)))
    events = await responses_events(oai, model)

    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [(i.type, i.call_id, i.name) for i in added] == [
        ("function_call", "call_1", "final_result"),
        ("function_call", "call_2", "noop"),
    ]
    first_args = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta" and e.output_index == 0
    )
    assert json.loads(first_args) == {"result": 6666}
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert done == ['{"result":6666}', "{}"]


async def test_responses_incomplete(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(responses_incomplete(model, ["A cute", " cat"])))
    events = await responses_events(oai, model)

    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output[0].status == "incomplete"


async def test_responses_failed(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(responses_failed(model, code="server_error", message="boom")))
    events = await responses_events(oai, model)

    assert events[-1].type == "response.failed"
    assert (events[-1].response.error.code, events[-1].response.error.message) == ("server_error", "boom")


async def test_responses_error_event_raises(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(responses_error_event(model, code="insufficient_quota", message="No quota")))
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        async for event in await oai.responses.create(model=model, input="hi", stream=True):
            seen.append(event.type)

    assert not isinstance(info.value, openai.APIStatusError)
    assert info.value.message == "No quota"
    assert info.value.body == {
        "type": "insufficient_quota",
        "code": "insufficient_quota",
        "message": "No quota",
        "param": None,
    }
    assert seen == ["response.created", "response.in_progress"]


async def test_responses_documented_error_event_is_an_event(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str
) -> None:
    fake.script(model, Stream(responses_error_event(model, code="server_error", message="boom", nested=False)))
    events = await responses_events(oai, model)

    error = next(e for e in events if e.type == "error")
    assert isinstance(error, ResponseErrorEvent)
    assert (error.code, error.message) == ("server_error", "boom")
    assert events[-1].type == "response.failed"


# --------------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_reason", ["end_turn", "max_tokens", "refusal"])
async def test_anthropic_text(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str, stop_reason: str
) -> None:
    usage = Usage(25, 15, cached_tokens=100, cache_write_tokens=7)
    fake.script(model, Stream(anthropic_text(model, ["Hello", "!"], stop_reason=stop_reason, usage=usage)))
    events = await claude_events(claude, model)

    assert [e.type for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0].message
    assert start.id.startswith("msg_01") and start.model == model
    assert (start.usage.input_tokens, start.usage.cache_read_input_tokens) == (25, 100)
    assert start.usage.cache_creation_input_tokens == 7
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello!"
    assert events[-2].delta.stop_reason == stop_reason
    assert events[-2].usage.output_tokens == 15
    assert fake.calls(model)[0].path == "/v1/messages"


async def test_anthropic_thinking_signature(fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str) -> None:
    frames = anthropic_thinking(model, ["Let me", " add."], ["27 * 453 = 12,231"], signature="EqQBsig==")
    fake.script(model, Stream(frames))
    async with claude.messages.stream(model=model, max_tokens=2048, messages=MESSAGES) as stream:  # type: ignore[arg-type]
        thinking = [e.thinking async for e in stream if e.type == "thinking"]
        final = await stream.get_final_message()

    assert "".join(thinking) == "Let me add."
    block = final.content[0]
    assert block.type == "thinking" and block.thinking == "Let me add." and block.signature == "EqQBsig=="
    assert final.content[1].type == "text" and final.content[1].text == "27 * 453 = 12,231"


async def test_anthropic_redacted_thinking(fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str) -> None:
    fake.script(model, Stream(anthropic_redacted_thinking(model, "EtgBopaque", ["Hi"])))
    events = await claude_events(claude, model)

    block = events[1].content_block
    assert block.type == "redacted_thinking" and block.data == "EtgBopaque"


async def test_anthropic_tool_use(fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str) -> None:
    calls = [("toolu_01A", "get_weather", '{"location":', ' "San', ' Francisco"}'), ("toolu_01B", "noop", "{}")]
    fake.script(model, Stream(split_frames(anthropic_tool_use(model, calls, text=["Okay:"]), every=5)))
    async with claude.messages.stream(model=model, max_tokens=100, messages=MESSAGES) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    tool = final.content[1]
    assert tool.type == "tool_use" and (tool.id, tool.name) == ("toolu_01A", "get_weather")
    assert tool.input == {"location": "San Francisco"}


async def test_anthropic_midstream_error_raises(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str
) -> None:
    fake.script(model, Stream(anthropic_error_event(model, ["Hello"])))
    text: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async for event in await claude.messages.create(
            model=model,
            max_tokens=100,
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        ):
            if event.type == "content_block_delta":
                text.append(event.delta.text)

    assert text == ["Hello"]
    assert not isinstance(info.value, anthropic.InternalServerError)  # mapped by HTTP status 200, not by type
    assert info.value.status_code == 200
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


# --------------------------------------------------------------------------------------------------
# Error statuses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "exc", "err_code"),
    [
        (openai_error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
         openai.AuthenticationError, "invalid_api_key"),
        (openai_error(429, "Rate limit reached", "requests", "rate_limit_exceeded", headers={"retry-after": "1"}),
         openai.RateLimitError, "rate_limit_exceeded"),
        (openai_error(500, "The server had an error", "server_error"), openai.InternalServerError, None),
        (openai_error(503, "Service unavailable", "server_error"), openai.InternalServerError, None),
        (openai_context_length_error(), openai.BadRequestError, "context_length_exceeded"),
    ],
)  # fmt: skip
async def test_openai_status_errors(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str, reply: Status, exc: type[Exception], err_code: str | None
) -> None:
    fake.script(model, reply)
    with pytest.raises(exc) as info:
        await chat_chunks(oai, model)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == reply.code
    assert info.value.code == err_code
    assert info.value.request_id == reply.headers["x-request-id"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("reply", "exc"),
    [
        (anthropic_error(401, "authentication_error", "invalid x-api-key"), anthropic.AuthenticationError),
        (anthropic_error(429, "rate_limit_error", "slow down", headers={"retry-after": "1"}), anthropic.RateLimitError),
        (anthropic_error(500, "api_error", "Internal server error"), anthropic.InternalServerError),
        (anthropic_error(529, "overloaded_error", "Overloaded"), anthropic.OverloadedError),
        (anthropic_prompt_too_long(210000, 200000), anthropic.BadRequestError),
    ],
)
async def test_anthropic_status_errors(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str, reply: Status, exc: type[Exception]
) -> None:
    fake.script(model, reply)
    with pytest.raises(exc) as info:
        await claude_events(claude, model)
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == reply.code
    assert info.value.body == reply.body
    assert info.value.request_id == reply.headers["request-id"]  # type: ignore[index]


async def test_anthropic_prompt_too_long_message(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str
) -> None:
    fake.script(model, anthropic_prompt_too_long(210000, 200000))
    with pytest.raises(anthropic.BadRequestError, match=r"prompt is too long: 210000 tokens > 200000 maximum"):
        await claude_events(claude, model)


async def test_sdk_retry_honours_retry_after_ms(fake: FakeProvider, model: str) -> None:
    limited = openai_error(429, "Rate limit reached", "tokens", "rate_limit_exceeded", headers={"retry-after-ms": "30"})
    fake.script(model, limited, Stream(chat_text(model, ["ok"])))
    async with openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="x", max_retries=1) as client:
        assert chat_text_of(await chat_chunks(client, model)) == "ok"

    first, second = fake.calls(model)
    assert second.headers["x-stainless-retry-count"] == "1"
    assert 0.03 <= second.started - first.started < 0.37  # the default backoff would be >= 0.375 s


async def test_unscripted_model_is_a_500_in_the_provider_shape(
    fake: FakeProvider, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, model: str
) -> None:
    with pytest.raises(openai.InternalServerError, match=f"no script for model {model}"):
        await chat_chunks(oai, model)
    with pytest.raises(anthropic.InternalServerError) as info:
        await claude_events(claude, model)
    assert info.value.body["error"] == {"type": "api_error", "message": f"no script for model {model}"}  # type: ignore[index]


async def test_repeat_serves_last_reply_forever(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Stream(chat_text(model, ["one"])), Stream(chat_text(model, ["again"])), repeat=True)
    texts = [chat_text_of(await chat_chunks(oai, model)) for _ in range(4)]
    assert texts == ["one", "again", "again", "again"]
    assert len(await asyncio.to_thread(fake.wait_calls, model, 4, 1.0)) == 4


# --------------------------------------------------------------------------------------------------
# Transport: cuts, hangs, client disconnects
# --------------------------------------------------------------------------------------------------


async def test_openai_cut_is_llm_unavailable(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    # A finished request first, so the cut also happens on a reused keep-alive connection.
    fake.script(model, Stream(chat_text(model, ["warm"])), Stream(cut_after(chat_text(model, ["Hel", "lo"]), 3)))
    await chat_chunks(oai, model)
    seen: list[str] = []
    with pytest.raises(Exception) as info:  # which class the SDK raises for it is the SDK's business
        async for chunk in await oai.chat.completions.create(model=model, messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            seen.append(chunk.choices[0].delta.content or "")

    assert seen == ["", "Hel", "lo"]  # everything before the cut arrived
    assert isinstance(translate(info.value, "openai"), LLMUnavailableError), repr(info.value)
    assert fake.calls(model)[1].finished.is_set()


async def test_anthropic_cut_is_llm_unavailable(fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str) -> None:
    # What a user relies on is Convoy's classification of a connection reset, not the SDK's class
    # for it (anthropic 2.16 raised the transport error raw, 2.17 wraps it in APIConnectionError).
    fake.script(model, Stream(cut_after(anthropic_text(model, ["Hel", "lo"]), 5)))
    seen: list[str] = []
    with pytest.raises(Exception) as info:
        async for event in await claude.messages.create(
            model=model,
            max_tokens=100,
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        ):
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]
    assert isinstance(translate(info.value, "anthropic"), LLMUnavailableError), repr(info.value)


async def test_closing_openai_stream_disconnects_upstream(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str
) -> None:
    fake.script(model, Stream(paced(chat_text(model, ["a", "b", "c"]), 5.0)))
    stream = await oai.chat.completions.create(model=model, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    (call,) = await asyncio.to_thread(fake.wait_calls, model, 1, 1.0)
    closed_at = time.monotonic()
    await stream.close()

    await wait_event(call, "disconnected")  # while the script sleeps in a 5 s Pause
    assert time.monotonic() - closed_at < 1.0
    assert not call.finished.is_set()


async def test_closing_anthropic_stream_disconnects_upstream(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic, model: str
) -> None:
    fake.script(model, Stream(paced(anthropic_text(model, ["a", "b"]), 5.0)))
    stream = await claude.messages.create(model=model, max_tokens=100, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert (await stream.__anext__()).type == "message_start"
    await stream.close()

    await wait_event(fake.calls(model)[0], "disconnected")


async def test_hang_hits_client_timeout_and_is_seen_as_disconnect(
    fake: FakeProvider, oai: openai.AsyncOpenAI, model: str
) -> None:
    fake.script(model, Hang(5.0))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await oai.with_options(timeout=0.2).chat.completions.create(model=model, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0

    (call,) = fake.calls(model)
    await wait_event(call, "disconnected")
    assert not call.finished.is_set()


async def test_hang_then_close_without_response(fake: FakeProvider, oai: openai.AsyncOpenAI, model: str) -> None:
    fake.script(model, Hang(0.05))
    with pytest.raises(openai.APIConnectionError) as info:
        await chat_chunks(oai, model)
    assert "Server disconnected without sending a response" in str(info.value.__cause__)
    await wait_event(fake.calls(model)[0], "finished")
