"""The fake Gemini server is faithful: the real ``google-genai`` SDK parses what it sends, over real
HTTP, and it refuses second steps the way the real API does (``bench/upstream/gemini.py``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types

from bench.upstream import FakeProvider, Stream, Usage, cut_after, split_frames
from bench.upstream import gemini as fg
from runtime.errors import LLMUnavailableError
from runtime.providers.errors import translate


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def model(request: pytest.FixtureRequest) -> str:
    return f"gemini-{request.node.name}".replace("[", "-").replace("]", "")


@pytest.fixture(scope="module")
async def client(fake: FakeProvider) -> AsyncIterator[genai.client.AsyncClient]:
    # The transport Convoy's client uses (runtime.providers.gemini.make_client): with aiohttp installed
    # the SDK would otherwise read through aiohttp.
    options = types.HttpOptions(
        base_url=fake.gemini_base_url,
        api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1),
        async_client_args={"transport": httpx2.AsyncHTTPTransport()},
    )
    sdk = genai.Client(api_key="gk-test", http_options=options).aio
    yield sdk
    await sdk.aclose()


async def chunks(client: genai.client.AsyncClient, model: str, contents: Any = "hi") -> list[types.GenerateContentResponse]:
    return [c async for c in await client.models.generate_content_stream(model=model, contents=contents)]


def parts(responses: list[types.GenerateContentResponse]) -> list[types.Part]:
    return [p for r in responses for c in r.candidates or () for p in (c.content.parts if c.content else None) or ()]


async def test_text_stream_usage_and_request(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    usage = Usage(20, 9, cached_tokens=8, reasoning_tokens=3)
    fake.script(model, Stream(split_frames(fg.gemini_text(model, ["Hel", "lo", " wörld"], usage=usage), every=7)))
    got = await chunks(client, model)

    assert "".join(p.text or "" for p in parts(got)) == "Hello wörld"
    assert [r.candidates[0].finish_reason for r in got] == [None, None, types.FinishReason.STOP]
    assert len({r.response_id for r in got}) == 1 and got[0].model_version == model
    final = got[-1].usage_metadata
    assert final is not None
    assert (final.prompt_token_count, final.candidates_token_count, final.thoughts_token_count) == (20, 6, 3)
    assert final.cached_content_token_count == 8 and final.total_token_count == 29
    assert got[0].usage_metadata is not None and got[0].usage_metadata.candidates_token_count is None

    (call,) = fake.calls(model)
    assert call.path == f"/v1beta/models/{model}:streamGenerateContent"
    assert call.headers["x-goog-api-key"] == "gk-test"
    assert call.body["contents"] == [{"parts": [{"text": "hi"}], "role": "user"}]


async def test_frames_are_crlf_framed_data_events(model: str) -> None:
    (frame,) = fg.gemini_stream(model, [[{"text": "x"}]])
    assert isinstance(frame, bytes) and frame.startswith(b"data: {") and frame.endswith(b"}\r\n\r\n")
    assert b'"parts": [{"text": "x"}],"role": "model"' in frame  # Gemini's own spacing


async def test_thoughts_and_a_signature_on_the_part_it_signs(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    first, last = fg.signature(), fg.signature()
    fake.script(model, Stream(fg.gemini_text(model, ["The answer"], thoughts=["Let me", " think"], signature=first, signature_at="first")))
    fake.script(model, Stream(fg.gemini_text(model, ["Four."], signature=last)))
    early = parts(await chunks(client, model))
    late = parts(await chunks(client, model))

    assert [(p.text, p.thought) for p in early] == [("Let me", True), (" think", True), ("The answer", None)]
    assert early[2].thought_signature == base64.b64decode(first)
    assert [(p.text, p.thought_signature) for p in late] == [("Four.", None), ("", base64.b64decode(last))]


async def test_parallel_calls_arrive_whole_in_one_chunk(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    sig = fg.signature()
    calls = [fg.Call("get_weather", {"city": "Paris"}, signature=sig), fg.Call("get_time", {"tz": "CET"}, id="call-7")]
    fake.script(model, Stream(fg.gemini_calls(model, calls)))
    got = await chunks(client, model)

    called = [p.function_call for p in got[0].candidates[0].content.parts]  # type: ignore[index, union-attr]
    assert [(c.name, c.args, c.id) for c in called] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}, None),
        ("get_time", {"tz": "CET"}, "call-7"),
    ]
    assert got[0].candidates[0].content.parts[0].thought_signature == base64.b64decode(sig)  # type: ignore[index, union-attr]
    assert got[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]


@pytest.mark.parametrize(
    "finish", ["MAX_TOKENS", "SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "MALFORMED_FUNCTION_CALL"]
)
async def test_each_finish_reason(fake: FakeProvider, client: genai.client.AsyncClient, model: str, finish: str) -> None:
    fake.script(model, Stream(fg.gemini_text(model, ["partial"], finish=finish)))
    assert (await chunks(client, model))[-1].candidates[0].finish_reason == types.FinishReason(finish)  # type: ignore[index]


async def test_blocked_prompt(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    fake.script(model, Stream(fg.gemini_blocked(model, "PROHIBITED_CONTENT")))
    (only,) = await chunks(client, model)
    assert only.candidates is None and only.prompt_feedback is not None
    assert only.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT


@pytest.mark.parametrize(
    ("reply", "exc", "status"),
    [
        (fg.gemini_rate_limited(), errors.ClientError, "RESOURCE_EXHAUSTED"),
        (fg.gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), errors.ServerError, "UNAVAILABLE"),
        (fg.gemini_error(500, "INTERNAL", "An internal error has occurred."), errors.ServerError, "INTERNAL"),
        (fg.gemini_error(400, "INVALID_ARGUMENT", "API key not valid.", reason="API_KEY_INVALID"), errors.ClientError, "INVALID_ARGUMENT"),
        (fg.gemini_error(403, "PERMISSION_DENIED", "Permission denied."), errors.ClientError, "PERMISSION_DENIED"),
        (fg.gemini_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), errors.ServerError, "DEADLINE_EXCEEDED"),
        (fg.gemini_context_too_long(), errors.ClientError, "INVALID_ARGUMENT"),
    ],
)
async def test_error_statuses(
    fake: FakeProvider, client: genai.client.AsyncClient, model: str, reply: Any, exc: type[Exception], status: str
) -> None:
    fake.script(model, reply)
    with pytest.raises(exc) as raised:
        await chunks(client, model)
    assert isinstance(raised.value, errors.APIError)
    assert (raised.value.code, raised.value.status) == (reply.code, status)
    assert raised.value.message == reply.body["error"]["message"]


async def test_an_error_chunk_inside_the_stream(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    fake.script(model, Stream(fg.gemini_error_event(model, ["Half"], code=503, status="UNAVAILABLE")))
    seen: list[str] = []
    with pytest.raises(errors.ServerError) as raised:
        async for chunk in await client.models.generate_content_stream(model=model, contents="hi"):
            seen.append(chunk.text or "")
    assert seen == ["Half"] and (raised.value.code, raised.value.status) == (503, "UNAVAILABLE")


async def test_a_cut_connection(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    fake.script(model, Stream(cut_after(fg.gemini_text(model, ["Some", " text", " more"]), 2)))
    seen: list[str] = []
    with pytest.raises(Exception) as raised:  # which class the SDK raises is its business
        async for chunk in await client.models.generate_content_stream(model=model, contents="hi"):
            seen.append(chunk.text or "")
    assert seen == ["Some", " text"]
    assert isinstance(translate(raised.value, "google"), LLMUnavailableError), repr(raised.value)


# -- the second step, as the real API checks it ------------------------------------------------------


def turn(*model_parts: dict[str, Any], answers: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": "go"}]}, {"role": "model", "parts": list(model_parts)}]
    return contents + ([{"role": "user", "parts": answers}] if answers is not None else [{"role": "user", "parts": [{"text": "next"}]}])


def answer(name: str, **extra: Any) -> dict[str, Any]:
    return {"functionResponse": {"name": name, "response": {"output": "ok"}, **extra}}


async def first_step(fake: FakeProvider, client: genai.client.AsyncClient, model: str, frames: list[Any]) -> None:
    fake.script(model, Stream(frames), Stream(fg.gemini_text(model, ["done"])), repeat=True)
    await chunks(client, model)


async def refused(client: genai.client.AsyncClient, model: str, contents: list[dict[str, Any]]) -> str:
    with pytest.raises(errors.ClientError) as raised:
        await chunks(client, model, contents)
    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
    return raised.value.message or ""


async def test_function_calls_must_be_answered_by_name(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    calls = [fg.Call("add", {"a": 1}), fg.Call("add", {"a": 2}), fg.Call("mul", {"b": 3}, id="c9")]
    await first_step(fake, client, model, fg.gemini_calls(model, calls))
    sent = [{"functionCall": {"name": c.name, "args": dict(c.args), **({"id": c.id} if c.id else {})}} for c in calls]

    assert "number of function response parts" in await refused(client, model, turn(*sent, answers=[answer("add"), answer("mul", id="c9")]))
    assert "by name" in await refused(client, model, turn(*sent, answers=[answer("add"), answer("mul"), answer("mul", id="c9")]))
    assert "'c9'" in await refused(client, model, turn(*sent, answers=[answer("add"), answer("add"), answer("mul")]))
    ok = turn(*sent, answers=[answer("add"), answer("mul", id="c9"), answer("add")])
    assert "".join(c.text or "" for c in await chunks(client, model, ok)) == "done"


async def test_signatures_must_come_back_on_their_parts(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    sig = fg.signature()
    await first_step(fake, client, model, fg.gemini_calls(model, [fg.Call("lookup", {"q": "x"}, signature=sig), fg.Call("noop")]))
    call = {"functionCall": {"name": "lookup", "args": {"q": "x"}}}
    noop = {"functionCall": {"name": "noop", "args": {}}}
    answers = [answer("lookup"), answer("noop")]

    assert "missing its thought_signature" in await refused(client, model, turn(call, noop, answers=answers))
    moved = {**noop, "thoughtSignature": sig}
    assert "issued for a call part" in await refused(client, model, turn(call, moved, answers=answers))
    forged = {**call, "thoughtSignature": fg.signature()}
    assert "Corrupted thought signature" in await refused(client, model, turn(forged, noop, answers=answers))
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(sig)).decode()  # what the SDK itself would send
    for sent in (sig, urlsafe):
        kept = turn({**call, "thoughtSignature": sent}, noop, answers=answers)
        assert "".join(c.text or "" for c in await chunks(client, model, kept)) == "done"


async def test_a_text_signature_must_stay_on_its_own_part(fake: FakeProvider, client: genai.client.AsyncClient, model: str) -> None:
    sig = fg.signature()
    await first_step(fake, client, model, fg.gemini_text(model, ["The", " end."], thoughts=["hm"], signature=sig, signature_at="first"))
    merged = {"text": "The end.", "thoughtSignature": sig}
    assert "issued for a text part ('The')" in await refused(client, model, turn(merged))
    dropped = turn({"text": "hm", "thought": True}, {"text": "The"}, {"text": " end."})
    assert "missing its thought_signature" in await refused(client, model, dropped)
    exact = turn({"text": "hm", "thought": True}, {"text": "The", "thoughtSignature": sig}, {"text": " end."})
    assert "".join(c.text or "" for c in await chunks(client, model, exact)) == "done"


@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}, 'Unknown name "additionalProperties"'),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}, 'Unknown name "$ref"'),
        ({"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2]}}}, "only strings"),
        ({"type": "object", "properties": {}}, "should be non-empty for OBJECT type"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "property is not defined"),
    ],
)
async def test_function_declarations_in_gemini_schema_only(
    fake: FakeProvider, client: genai.client.AsyncClient, model: str, parameters: dict[str, Any], says: str
) -> None:
    fake.script(model, Stream(fg.gemini_text(model, ["never"])))
    declaration = {"name": "f", "description": "", "parameters": parameters}
    config = types.GenerateContentConfig(http_options=types.HttpOptions(extra_body={"tools": [{"functionDeclarations": [declaration]}]}))
    with pytest.raises(errors.ClientError) as raised:
        async for _ in await client.models.generate_content_stream(model=model, contents="hi", config=config):
            pass
    assert says in (raised.value.message or "")


async def test_unscripted_model_is_a_google_error(client: genai.client.AsyncClient, model: str) -> None:
    with pytest.raises(errors.ServerError) as raised:
        await chunks(client, model)
    assert raised.value.status == "INTERNAL" and f"no script for model {model}" in (raised.value.message or "")

