"""The Gemini adapter: request building (history, signatures, function responses, schemas) and the
stream read through the real ``google-genai`` SDK from the fake Gemini server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from bench.upstream import OAUTH_TOKEN, FakeProvider, Hang, Stream, paced
from bench.upstream import Usage as WireUsage
from bench.upstream import gemini as fg
from runtime.agent.prompt import to_chat
from runtime.agent.step import StepAssembler
from runtime.errors import (
    LLMAuthenticationError,
    LLMBadRequestError,
    LLMInvalidResponseError,
    LLMRateLimitError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from runtime.ids import new_id
from runtime.providers.events import (
    ChatMessage,
    Finish,
    LLMEvent,
    LLMRequest,
    PartSignature,
    ReasoningBlock,
    ReasoningDelta,
    ResponseInfo,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from runtime.providers.gemini import GeminiAdapter, contents, make_client
from runtime.providers.gemini_schema import function_parameters
from runtime.providers.stream import StreamPolicy, guarded
from runtime.schemas.messages import HistoryMessage, ToolReturnMessage, UserMessage, WireItem

SIG_TEXT, SIG_CALL, SIG_END = fg.signature(), fg.signature(), fg.signature()


async def assemble(events: list[LLMEvent], *, stream_tokens: bool) -> tuple[list[WireItem], list[HistoryMessage]]:
    emitted: list[WireItem] = []

    async def emit(item: WireItem) -> None:
        emitted.append(item)

    assembler = StepAssembler(message_id=new_id("message"), step_id=new_id("step"), run_id="run-x", stream_tokens=stream_tokens, emit=emit)
    for event in events:
        await assembler.feed(event)
    return emitted, (await assembler.close()).messages


def model_turn(history: list[HistoryMessage]) -> dict[str, Any]:
    return next(c for c in contents(to_chat([UserMessage(id="message-u", content="go"), *history])) if c["role"] == "model")


# -- history -> request ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream_tokens", [True, False])
async def test_signatures_go_back_on_the_parts_they_came_with(stream_tokens: bool) -> None:
    # Gemini 2.5: thoughts, the signature on the first text part, more text; then calls, the first signed.
    events: list[LLMEvent] = [
        ReasoningDelta("Let me"),
        ReasoningDelta(" think."),
        PartSignature(SIG_TEXT),
        TextDelta("The"),
        TextDelta(" answer"),
        TextDelta(" is:"),
        PartSignature(SIG_CALL),
        ToolCallDelta(0, call_id="gemini-r1-0", name="add", arguments='{"a": 1}'),
        ToolCallDelta(1, call_id="srv-id-7", name="add", arguments='{"a": 2}'),
        PartSignature(SIG_END),
        Finish("tool_calls", raw="STOP"),
    ]
    _, history = await assemble(events, stream_tokens=stream_tokens)

    assert model_turn(history)["parts"] == [
        {"text": "Let me think.", "thought": True},
        {"text": "The", "thoughtSignature": SIG_TEXT},  # its own part: the unsigned text after it is not merged in
        {"text": " answer is:"},
        {"functionCall": {"name": "add", "args": {"a": 1}}, "thoughtSignature": SIG_CALL},  # a made-up id stays here
        {"functionCall": {"name": "add", "args": {"a": 2}, "id": "srv-id-7"}},
        {"text": "", "thoughtSignature": SIG_END},  # a signature that ended the answer
    ]


async def test_a_signature_is_a_reasoning_message_of_its_own_on_the_stream() -> None:
    emitted, history = await assemble([TextDelta("a"), PartSignature(SIG_TEXT), TextDelta("b"), TextDelta("c")], stream_tokens=True)
    kinds = [(i.message_type, getattr(i, "signature", None), getattr(i, "content", None)) for i in emitted]  # type: ignore[attr-defined]
    assert kinds == [
        ("assistant_message", None, "a"),
        ("reasoning_message", SIG_TEXT, None),
        ("assistant_message", None, "b"),
        ("assistant_message", None, "c"),
    ]
    assert len({i.otid for i in emitted[2:]}) == 2  # type: ignore[attr-defined]  # "b" is its own segment, "c" the next
    assert [getattr(m, "content", None) for m in history] == ["a", None, "b", "c"]


async def test_calls_cut_by_the_token_limit_leave_with_their_signature() -> None:
    events: list[LLMEvent] = [TextDelta("Sure."), PartSignature(SIG_CALL), ToolCallDelta(0, call_id="gemini-r-0", name="add", arguments="{}")]
    _, history = await assemble([*events, Finish("max_tokens", raw="MAX_TOKENS")], stream_tokens=False)
    assert model_turn(history)["parts"] == [{"text": "Sure."}]


def test_tool_results_answer_by_name_in_one_user_turn() -> None:
    calls = (ToolCall("gemini-r-0", "add", '{"a": 1}'), ToolCall("srv-9", "mul", "not json"))
    history = [
        ChatMessage("user", "go"),
        ChatMessage("assistant", "", tool_calls=calls, parts=calls),
        ChatMessage("tool", "2", tool_call_id="gemini-r-0"),
        ChatMessage("tool", "boom", tool_call_id="srv-9", is_error=True),
        ChatMessage("user", "thanks"),
    ]
    assert contents(history) == [
        {"role": "user", "parts": [{"text": "go"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "add", "args": {"a": 1}}},
                {"functionCall": {"name": "mul", "args": {"_unparsed_arguments": "not json"}, "id": "srv-9"}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "add", "response": {"output": "2"}}},
                {"functionResponse": {"name": "mul", "response": {"error": "boom"}, "id": "srv-9"}},
                {"text": "thanks"},
            ],
        },
    ]


def test_other_providers_reasoning_goes_as_unsigned_thoughts() -> None:
    parts = (ReasoningBlock("claude thought", "anthropic-sig"), ReasoningBlock(redacted="opaque"), "Hi")
    (turn,) = contents([ChatMessage("assistant", "Hi", reasoning=parts[:2], parts=parts)])
    assert turn["parts"] == [{"text": "claude thought", "thought": True}, {"text": "Hi"}]


# -- tool schemas -----------------------------------------------------------------------------------


class Address(BaseModel):
    street: str
    city: Annotated[str, Field(description="City name")]


class Order(BaseModel):
    items: list[Address]
    to: Address | None = None
    size: Literal["S", "M"] = "S"
    mode: Literal["fast"]
    count: Literal[1, 2, 3]
    note: Annotated[str | None, Field(description="free text", max_length=50)] = None
    tags: dict[str, int] = {}


def test_pydantic_schemas_become_gemini_schemas() -> None:
    parameters = function_parameters(Order.model_json_schema())
    assert parameters is not None
    assert fg._schema_problem(parameters, "parameters") is None  # the fake's copy of Gemini's rules
    props = parameters["properties"]
    assert props["items"]["items"]["properties"]["city"] == {"title": "City", "description": "City name", "type": "string"}
    assert props["to"]["nullable"] is True and props["to"]["properties"]["street"]["type"] == "string"
    assert props["size"]["enum"] == ["S", "M"] and props["mode"]["enum"] == ["fast"]
    assert "enum" not in props["count"] and "One of: 1, 2, 3" in props["count"]["description"]
    assert props["note"] == {"title": "Note", "description": "free text", "default": None, "maxLength": 50, "type": "string", "nullable": True}
    assert props["tags"] == {"title": "Tags", "default": {}, "type": "object"}
    assert parameters["required"] == ["items", "mode", "count"]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (None, None),
        ({"type": "object", "properties": {}}, None),
        ({"type": "object", "properties": {"n": {"type": ["integer", "null"], "exclusiveMinimum": 0}}}, {"n": {"type": "integer", "nullable": True}}),
        ({"type": "object", "properties": {"r": {"$ref": "#/$defs/R"}}, "$defs": {"R": {"type": "object", "properties": {"r": {"$ref": "#/$defs/R"}}}}},
         {"r": {"type": "object", "properties": {"r": {"type": "object"}}}}),
        ({"type": "object", "properties": {"v": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}, {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}),
        ({"type": "object", "properties": {"d": {"type": "string", "format": "uuid"}, "t": {"type": "string", "format": "date-time"}}},
         {"d": {"type": "string"}, "t": {"type": "string", "format": "date-time"}}),
    ],
    ids=["none", "no-properties", "type-list", "recursive-ref", "one-of", "formats"],
)  # fmt: skip
def test_schema_keywords_gemini_refuses_are_translated_or_dropped(schema: Any, expected: Any) -> None:
    parameters = function_parameters(schema)
    assert (parameters or {}).get("properties") == expected
    if parameters is not None:
        assert fg._schema_problem(parameters, "parameters") is None


# -- the stream, from the fake through the real SDK --------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def model(request: pytest.FixtureRequest) -> str:
    return f"gemini-{request.node.name}".replace("[", "-").replace("]", "")


def adapter_for(fake: FakeProvider, *, read_timeout_s: float = 5.0, max_retries: int = 0) -> GeminiAdapter:
    client = make_client(
        api_key="gk-test",
        base_url=fake.gemini_base_url,
        vertex_project=None,
        vertex_location="global",
        connect_timeout_s=2.0,
        read_timeout_s=read_timeout_s,
        max_retries=max_retries,
    )
    return GeminiAdapter(client, provider="google", include_thoughts=True)


@pytest.fixture(scope="module")
async def adapter(fake: FakeProvider) -> AsyncIterator[GeminiAdapter]:
    yield adapter_for(fake)


def request_for(model: str, text: str = "hi") -> LLMRequest:
    tools = (ToolSpec("add", "Add two integers.", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),)
    return LLMRequest(model=model, system="Be brief.", messages=[ChatMessage("user", text)], tools=tools, max_output_tokens=64)


async def events_of(adapter: GeminiAdapter, model: str) -> list[LLMEvent]:
    policy = StreamPolicy(first_token_s=5, idle_s=5, retries=0)
    return [e async for e in guarded(adapter.stream, request_for(model), provider="google", policy=policy)]


async def test_a_thinking_answer_streams_as_events(fake: FakeProvider, adapter: GeminiAdapter, model: str) -> None:
    usage = WireUsage(30, 12, cached_tokens=10, reasoning_tokens=5)
    fake.script(model, Stream(fg.gemini_text(model, ["Hel", "lo"], thoughts=["Hmm"], signature=SIG_TEXT, signature_at="first", usage=usage)))
    events = await events_of(adapter, model)

    assert isinstance(events[0], ResponseInfo) and events[0].model == model and events[0].response_id
    assert events[1:] == [
        ReasoningDelta("Hmm"),
        PartSignature(SIG_TEXT),
        TextDelta("Hel"),
        TextDelta("lo"),
        Usage(prompt_tokens=30, completion_tokens=12, cached_input_tokens=10, reasoning_tokens=5),
        Finish("end_turn", raw="STOP"),
    ]
    (call,) = fake.calls(model)
    assert call.path == f"/v1beta/models/{model}:streamGenerateContent" and call.headers["x-goog-api-key"] == "gk-test"
    assert call.body == adapter.payload(request_for(model))  # what the trace records is what was sent
    assert call.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert call.body["generationConfig"] == {"maxOutputTokens": 64, "thinkingConfig": {"includeThoughts": True}}
    assert call.body["tools"][0]["functionDeclarations"][0]["name"] == "add"


async def test_parallel_calls_get_stable_unique_ids(fake: FakeProvider, adapter: GeminiAdapter, model: str) -> None:
    calls = [fg.Call("add", {"a": 1}, signature=SIG_CALL), fg.Call("add", {"a": 2}), fg.Call("add", {"a": 3}, id="srv-1")]
    fake.script(model, Stream(fg.gemini_calls(model, calls)))
    events = await events_of(adapter, model)

    info = events[0]
    assert isinstance(info, ResponseInfo)
    called = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(c.index, c.call_id, json.loads(c.arguments)) for c in called] == [
        (0, f"gemini-{info.response_id}-0", {"a": 1}),
        (1, f"gemini-{info.response_id}-1", {"a": 2}),
        (2, "srv-1", {"a": 3}),
    ]
    assert events[-1] == Finish("tool_calls", raw="STOP")


@pytest.mark.parametrize(
    ("finish", "reason"),
    [("MAX_TOKENS", "max_tokens"), *((f, "content_filter") for f in ("SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII")), ("OTHER", "end_turn")],
)
async def test_finish_reasons(fake: FakeProvider, adapter: GeminiAdapter, model: str, finish: str, reason: str) -> None:
    fake.script(model, Stream(fg.gemini_text(model, ["partial"], finish=finish)))
    assert (await events_of(adapter, model))[-1] == Finish(reason, raw=finish)  # type: ignore[arg-type]


async def test_a_blocked_prompt_is_a_content_filter(fake: FakeProvider, adapter: GeminiAdapter, model: str) -> None:
    fake.script(model, Stream(fg.gemini_blocked(model, "SAFETY")))
    assert (await events_of(adapter, model))[-1] == Finish("content_filter", raw="blockReason:SAFETY")


@pytest.mark.parametrize(
    ("frames", "error", "says"),
    [
        (lambda m: fg.gemini_calls(m, [fg.Call("add")], finish="MALFORMED_FUNCTION_CALL"), LLMInvalidResponseError, "MALFORMED_FUNCTION_CALL"),
        (lambda m: fg.gemini_text(m, ["no end"], finish=None), LLMUnavailableError, "before a finish reason"),
        (lambda m: fg.gemini_error_event(m, ["Half"], code=429, status="RESOURCE_EXHAUSTED"), LLMRateLimitError, "RESOURCE_EXHAUSTED"),
        (lambda m: [b"data: {not json\r\n\r\n"], LLMInvalidResponseError, "UnknownApiResponseError"),
    ],
    ids=["malformed-call", "no-finish", "error-chunk", "not-json"],
)
async def test_broken_streams_raise_typed_errors(
    fake: FakeProvider, adapter: GeminiAdapter, model: str, frames: Any, error: type[Exception], says: str
) -> None:
    fake.script(model, Stream(frames(model)))
    with pytest.raises(error, match=says):
        await events_of(adapter, model)


async def test_a_json_answer_that_is_no_event_stream_is_invalid(fake: FakeProvider, adapter: GeminiAdapter, model: str) -> None:
    fake.script(model, Stream([b'{"candidates": []}'], content_type="application/json"))
    with pytest.raises(LLMInvalidResponseError, match="not an event stream"):
        await events_of(adapter, model)


@pytest.mark.parametrize(
    ("reply", "error", "attempts"),
    [
        (fg.gemini_error(503, "UNAVAILABLE", "The model is overloaded."), LLMUnavailableError, 2),
        (fg.gemini_rate_limited(), LLMRateLimitError, 2),
        (fg.gemini_error(400, "INVALID_ARGUMENT", "API key not valid.", reason="API_KEY_INVALID"), LLMAuthenticationError, 1),
        (fg.gemini_error(400, "INVALID_ARGUMENT", "Bad field."), LLMBadRequestError, 1),
    ],
    ids=["503", "429", "bad-key", "400"],
)
async def test_the_sdk_retries_exactly_the_retryable_statuses(
    fake: FakeProvider, model: str, reply: Any, error: type[Exception], attempts: int
) -> None:
    fake.script(model, reply, repeat=True)
    with pytest.raises(error):
        await events_of(adapter_for(fake, max_retries=1), model)
    assert len(fake.calls(model)) == attempts


async def test_read_timeout_is_convoys(fake: FakeProvider, model: str) -> None:
    fake.script(model, Hang(5.0))
    started = time.monotonic()
    with pytest.raises(LLMTimeoutError):
        await events_of(adapter_for(fake, read_timeout_s=0.3), model)
    assert time.monotonic() - started < 2.0


async def test_closing_the_stream_closes_the_upstream_response_at_once(fake: FakeProvider, adapter: GeminiAdapter, model: str) -> None:
    fake.script(model, Stream(paced(fg.gemini_text(model, ["a", "b", "c"]), 5.0)))
    stream = adapter.stream(request_for(model))
    assert isinstance(await anext(stream), ResponseInfo)
    assert await anext(stream) == TextDelta("a")
    (call,) = fake.calls(model)
    closed_at = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(call.disconnected.wait, 1.0), "the fake must see the connection close"
    assert time.monotonic() - closed_at < 1.0 and not call.finished.is_set()


async def test_a_second_step_is_accepted_by_the_fake(fake: FakeProvider, adapter: GeminiAdapter, model: str) -> None:
    """End to end without Convoy's loop: events -> history -> the next request, checked by the fake."""
    fake.script(
        model,
        Stream(fg.gemini_calls(model, [fg.Call("add", {"a": 1}, signature=SIG_CALL), fg.Call("add", {"a": 2})], thoughts=["hm"])),
        Stream(fg.gemini_text(model, ["3"])),
    )
    first = await events_of(adapter, model)
    _, history = await assemble(first, stream_tokens=False)
    results = [
        ToolReturnMessage(id=new_id("message"), tool_return=str(n), status="success", tool_call_id=m.tool_call.tool_call_id)  # type: ignore[attr-defined]
        for n, m in enumerate(h for h in history if h.message_type == "tool_call_message")
    ]
    chat = to_chat([UserMessage(id="message-u", content="hi"), *history, *results])
    request = LLMRequest(model=model, system="", messages=chat)
    policy = StreamPolicy(first_token_s=5, idle_s=5, retries=0)
    second = [e async for e in guarded(adapter.stream, request, provider="google", policy=policy)]
    assert TextDelta("3") in second, second


VERTEX_CLIENT = """
import asyncio, sys
from runtime.providers.events import ChatMessage, LLMRequest, TextDelta
from runtime.providers.registry import Providers
from runtime.settings import Settings


async def main():
    model = Providers(Settings()).model("google/" + sys.argv[1])
    request = LLMRequest(model=model.name, system="", messages=[ChatMessage("user", "hi")])
    print("".join([e.text async for e in model.stream(request) if isinstance(e, TextDelta)]))


asyncio.run(main())
"""


def test_vertex_ai_with_a_service_account(fake: FakeProvider, model: str, tmp_path: Path) -> None:
    """Vertex AI as a user configures it (a project, Application Default Credentials): the service
    account's token comes from the fake's OAuth endpoint, the stream from its Vertex AI route."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = {
        "type": "service_account",
        "project_id": "convoy-test",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": "convoy@convoy-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{fake.url}/token",
    }
    credentials = tmp_path / "service-account.json"
    credentials.write_text(json.dumps(account))
    fake.script(model, Stream(fg.gemini_text(model, ["From", " Vertex."])))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOY_", "GOOGLE_", "GEMINI_"))}
    env.update(
        {
            "CONVOY_GOOGLE_VERTEX_PROJECT": "convoy-test",
            "CONVOY_GOOGLE_VERTEX_LOCATION": "europe-west4",
            "GOOGLE_VERTEX_BASE_URL": fake.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
            "PYTHONPATH": str(Path(__file__).resolve().parents[4]),
        }
    )
    done = subprocess.run([sys.executable, "-c", VERTEX_CLIENT, model], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "From Vertex."
    (call,) = fake.calls(model)
    assert call.path == f"/v1beta1/projects/convoy-test/locations/europe-west4/publishers/google/models/{model}:streamGenerateContent"
    assert call.headers["authorization"] == f"Bearer {OAUTH_TOKEN}" and "x-goog-api-key" not in call.headers
    assert call.body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
