"""``POST /v1/chat/completions`` with the official ``openai`` SDK, unchanged, as a client of a real
``convoy serve``; upstream models are the offline ``echo/echo`` or the scripted fake providers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from letta_client import Letta
from openai import OpenAI

from api.openai.schemas import ChatTranslator
from bench import upstream as fp
from bench.upstream import gemini as fg
from tests.conftest import Convoy, wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def oai(convoy: Convoy) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{convoy.url}/v1", api_key="unused", max_retries=2) as client:
        yield client


@pytest.fixture
def http(convoy: Convoy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        yield client


def new_agent(http: httpx.Client, model: str | None = None, system: str = "Be brief.") -> str:
    body: dict[str, Any] = {"name": "chat", "system": system}
    if model:
        body["model"] = model
    reply = http.post("/v1/agents", json=body)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def runs_of(http: httpx.Client, agent_id: str) -> list[dict[str, Any]]:
    reply = http.get("/v1/runs", params={"agent_id": agent_id})
    assert reply.status_code == 200, reply.text
    return list(reply.json())


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_streaming_sends_one_chunk_per_delta_then_finish_and_usage(oai: OpenAI, http: httpx.Client) -> None:
    agent = new_agent(http)
    text = "the quick brown fox"
    chunks = list(
        oai.chat.completions.create(
            model=agent, messages=user(text), stream=True, stream_options={"include_usage": True}
        )
    )

    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    # One chunk per word delta; words that reach the host together may come as one (runtime.stream.writer).
    assert 1 <= len(content) <= len(text.split()), "one chunk per assistant text delta"
    assert "".join(c.choices[0].delta.content or "" for c in content) == text
    assert content[0].choices[0].delta.role == "assistant"
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop" and not finish.choices[0].delta.content
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == len(text.split()) and usage.usage.total_tokens >= usage.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.model == agent for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    (run,) = runs_of(http, agent)
    assert run["status"] == "completed" and chunks[0].id == "chatcmpl-" + run["id"].removeprefix("run-")


def test_streaming_without_include_usage_sends_no_usage_chunk(oai: OpenAI, http: httpx.Client) -> None:
    chunks = list(oai.chat.completions.create(model=new_agent(http), messages=user("hi there"), stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_non_streaming_returns_a_completion_with_usage(oai: OpenAI, http: httpx.Client) -> None:
    agent = new_agent(http)
    completion = oai.chat.completions.create(model=agent, messages=user("hello from openai"))
    assert completion.object == "chat.completion" and completion.model == agent
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == "hello from openai"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_only_the_trailing_user_messages_are_new_input(
    oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["ok"])), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    messages: list[Any] = [
        {"role": "system", "content": "ignored: the agent's system prompt applies"},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    assert oai.chat.completions.create(model=agent, messages=messages).choices[0].message.content == "ok"
    (call,) = fake_provider.calls(model)
    assert call.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ]


def test_length_finish_reason_in_both_modes(oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_length(model, ["cut", " sho"])), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    completion = oai.chat.completions.create(model=agent, messages=user("long please"))
    assert completion.choices[0].finish_reason == "length" and completion.choices[0].message.content == "cut sho"
    chunks = list(oai.chat.completions.create(model=agent, messages=user("again"), stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "cut sho"


def test_an_agent_on_a_gemini_model(oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider) -> None:
    model = unique("gemini")
    usage = fp.Usage(11, 6, reasoning_tokens=2)
    fake_provider.script(
        model,
        fp.Stream(fg.gemini_text(model, ["Bonjour", " !"], thoughts=["French."], signature=fg.signature(), usage=usage)),
        fp.Stream(fg.gemini_text(model, ["Au revoir."], finish="MAX_TOKENS")),
    )
    agent = new_agent(http, f"google/{model}")
    chunks = list(oai.chat.completions.create(model=agent, messages=user("greet"), stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour !"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 6)
    completion = oai.chat.completions.create(model=agent, messages=user("bye"))  # the signature went back: accepted
    assert completion.choices[0].finish_reason == "length" and completion.choices[0].message.content == "Au revoir."
    second = fake_provider.calls(model)[1].body["contents"]
    assert [c["role"] for c in second] == ["user", "model", "user"] and second[-1]["parts"] == [{"text": "bye"}]


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_an_upstream_credential_error_is_an_error_not_a_stop(
    oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider, stream: bool
) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.openai_error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    with pytest.raises(openai.InternalServerError) as raised:
        reply = oai.chat.completions.create(model=agent, messages=user("hi"), stream=stream)
        list(reply) if stream else None  # type: ignore[call-overload]
    assert raised.value.status_code == 502 and raised.value.code == "llm_authentication"
    assert raised.value.response.headers["x-should-retry"] == "false"
    (run,) = runs_of(http, agent)  # the SDK did not re-send the turn
    assert run["status"] == "failed"


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_an_upstream_server_error_is_503_and_not_resent(
    oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider, stream: bool
) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.openai_error(500, "boom", "server_error", headers={"retry-after-ms": "10"}), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    with pytest.raises(openai.InternalServerError) as raised:
        reply = oai.chat.completions.create(model=agent, messages=user("hi"), stream=stream)
        list(reply) if stream else None  # type: ignore[call-overload]
    assert raised.value.status_code == 503 and raised.value.code == "llm_unavailable"
    assert len(runs_of(http, agent)) == 1


def test_a_failure_after_the_first_chunk_raises_in_the_sdk(
    oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.cut_after(fp.chat_text(model, ["Some", " text", " more"]), 3)), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    received: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in oai.chat.completions.create(model=agent, messages=user("hi"), stream=True):
            assert chunk.choices[0].finish_reason is None, "a failed run never ends with a finish reason"
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Some text"
    assert raised.value.code == "llm_unavailable" and isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "server_error"


def test_a_conversation_id_is_a_model_too(oai: OpenAI, http: httpx.Client) -> None:
    agent = new_agent(http)
    conv = http.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
    completion = oai.chat.completions.create(model=conv, messages=user("in a conversation"))
    assert completion.choices[0].message.content == "in a conversation"
    (run,) = runs_of(http, agent)
    assert run["conversation_id"] == conv


def test_history_is_shared_with_the_agent_routes(convoy: Convoy, oai: OpenAI, http: httpx.Client) -> None:
    letta = Letta(base_url=convoy.url, api_key="unused")
    agent = new_agent(http)
    letta.agents.messages.create(agent, messages=[{"role": "user", "content": "one from letta"}])
    oai.chat.completions.create(model=agent, messages=user("two from openai"))

    conversations = {r["conversation_id"] for r in runs_of(http, agent)}
    assert conversations == {"conv-" + agent.removeprefix("agent-")}, "both went to the default conversation"
    history = http.get(f"/v1/conversations/{conversations.pop()}/messages", params={"order": "asc"}).json()
    said = [(m["message_type"], m["content"]) for m in history if m["message_type"] in ("user_message", "assistant_message")]
    assert said == [
        ("user_message", "one from letta"),
        ("assistant_message", "one from letta"),
        ("user_message", "two from openai"),
        ("assistant_message", "two from openai"),
    ]


def test_unknown_models_are_404_in_openai_shape(oai: OpenAI, http: httpx.Client) -> None:
    for model in ("gpt-4o", f"agent-{uuid.uuid4()}", f"conv-{uuid.uuid4()}"):
        with pytest.raises(openai.NotFoundError) as raised:
            oai.chat.completions.create(model=model, messages=user("hi"))
        assert raised.value.code == "model_not_found" and raised.value.param == "model"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "last message must be a user message"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "only text"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "one choice"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 600_000}] * 2}]},
            "text parts come to 1200000 characters; at most 1000000",
        ),
        ({"messages": [{"role": "tool", "content": "42"}]}, "needs the tool_call_id"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text"}]}]}, "needs its text"),
    ],
    ids=["trailing-assistant", "empty", "image", "n", "tools", "role", "parts-too-long-together", "tool-without-call-id", "text-part-without-text"],
)
def test_bad_requests_are_400_and_write_nothing(http: httpx.Client, body: dict[str, Any], says: str) -> None:
    agent = new_agent(http)
    reply = http.post("/v1/chat/completions", json={"model": agent, **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"
    assert reply.headers["x-should-retry"] == "false"
    assert runs_of(http, agent) == []
    assert http.get(f"/v1/conversations/conv-{agent.removeprefix('agent-')}").status_code == 404


AUDIO_OUT = {"voice": "alloy", "format": "wav"}


@pytest.mark.parametrize(
    ("given", "param", "says"),
    [
        ({"top_p": 0.5}, "top_p", "leave it out or send 1"),
        ({"stop": ["\n\n", "END"]}, "stop", "stop sequences are not supported"),
        ({"stop": "END"}, "stop", "stop sequences are not supported"),
        ({"seed": 42}, "seed", "cannot be made repeatable"),
        ({"presence_penalty": 0.5}, "presence_penalty", "leave it out or send 0"),
        ({"frequency_penalty": -1.0}, "frequency_penalty", "leave it out or send 0"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "token biases"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs", "leave it out or send false"),
        ({"top_logprobs": 3}, "top_logprobs", "leave it out or send 0"),
        ({"tool_choice": "none"}, "tool_choice", 'send "auto"'),
        ({"tool_choice": "required"}, "tool_choice", 'send "auto"'),
        ({"tool_choice": {"type": "function", "function": {"name": "transfer"}}}, "tool_choice", 'send "auto"'),
        ({"function_call": {"name": "transfer"}}, "function_call", 'send "auto"'),
        ({"functions": [{"name": "transfer", "parameters": {"type": "object"}}]}, "functions", "agent's own tools"),
        ({"modalities": ["text", "audio"], "audio": AUDIO_OUT}, "modalities", 'send ["text"]'),
        ({"audio": AUDIO_OUT}, "audio", "audio output is not supported"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation", "moderation is not supported"),
        ({"web_search_options": {}}, "web_search_options", "web search is not supported"),
        ({"extra_body": {"top_k": 5}}, "top_k", "not a Chat Completions field Convoy knows"),
        ({"stream_options": {"include_usage": True, "chunk_size": 1}, "stream": True}, "stream_options.chunk_size", "leave it out"),
        (
            {"messages": [{"role": "user", "content": "what is in this picture?", "images": ["aGk="]}]},
            "messages.0.images",
            "field of a user message",
        ),
        (
            {"messages": [*user("old"), {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]},
            "messages.1.content.0.cache_control",
            "field of a content part",
        ),
    ],
    ids=[
        "top_p", "stop-list", "stop-string", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
        "top_logprobs", "tool_choice-none", "tool_choice-required", "tool_choice-named", "function_call", "functions",
        "modalities-audio", "audio", "moderation", "web_search_options", "unknown-field", "unknown-stream-option",
        "new-message-field", "new-part-field",
    ],
)
def test_what_convoy_cannot_honour_is_refused_by_name(
    oai: OpenAI, http: httpx.Client, given: dict[str, Any], param: str, says: str
) -> None:
    """Dropping these would change the answer with no error: each is a 400 naming the field."""
    agent = new_agent(http)
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(**{"model": agent, "messages": user("hi"), **given})
    assert raised.value.param == param and raised.value.code in ("unsupported_parameter", "unknown_parameter")
    assert isinstance(raised.value.body, dict) and says in raised.value.body["message"]
    assert raised.value.body["message"].startswith(f"{param}: ")
    assert runs_of(http, agent) == [], "nothing was run"


def test_neutral_values_and_fields_that_cannot_change_the_answer_are_accepted(
    oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    """What SDKs and frameworks send by default, and hints that only touch billing, caching or
    speed, are accepted; none of it reaches the model."""
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["ok"])), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    messages: list[Any] = [
        {"role": "assistant", "content": "earlier", "audio": {"id": "audio_1"}},  # history: ignored
        {"role": "user", "content": [{"type": "text", "text": "hi", "prompt_cache_breakpoint": {"mode": "explicit"}}]},
    ]
    completion = oai.chat.completions.create(
        model=agent,
        messages=messages,
        n=1,
        tools=[],
        tool_choice="auto",
        top_p=1,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        logprobs=False,
        top_logprobs=0,
        stop=[],
        modalities=["text"],
        user="end-user-7",
        metadata={"app": "tests"},
        store=True,
        service_tier="flex",
        safety_identifier="h-1234",
        prompt_cache_key="chat",
        prompt_cache_options={"mode": "implicit"},
        prompt_cache_retention="24h",
        prediction={"type": "content", "content": "ok"},
    )
    assert completion.choices[0].message.content == "ok"
    (call,) = fake_provider.calls(model)
    assert call.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert not {"top_p", "stop", "logit_bias", "user", "metadata", "store", "service_tier", "prediction"} & call.body.keys()


def test_tool_calls_are_answered_with_tool_messages_and_the_conversation_goes_on(
    oai: OpenAI, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    calls = [("t1", "transfer", '{"amount": 5, "to": "bob"}'), ("t2", "transfer", '{"amount": 7, "to": "al"}')]
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, calls)), fp.Stream(fp.chat_text(model, ["Paid."])))
    agent = http.post("/v1/agents", json={"name": "payer", "model": f"openai/{model}", "tools": ["transfer"]}).json()["id"]
    asked = oai.chat.completions.create(model=agent, messages=user("pay bob 5 and al 7"))
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls" and [c.id for c in choice.message.tool_calls or []] == ["t1", "t2"]

    so_far = [*user("pay bob 5 and al 7"), choice.message.model_dump(exclude_none=True)]
    one = [*so_far, {"role": "tool", "tool_call_id": "t1", "content": "sent 5 to bob"}]
    with pytest.raises(openai.BadRequestError, match="t1, t2"):
        oai.chat.completions.create(model=agent, messages=one)  # t2 is still waiting
    both = [*one, {"role": "tool", "tool_call_id": "t2", "content": "sent 7 to al"}]
    done = oai.chat.completions.create(model=agent, messages=both)
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.content == "Paid."
    sent = [m for m in fake_provider.calls(model)[1].body["messages"] if m["role"] == "tool"]
    assert sent == [
        {"role": "tool", "tool_call_id": "t1", "content": "sent 5 to bob"},
        {"role": "tool", "tool_call_id": "t2", "content": "sent 7 to al"},
    ], "the client's results, not a run of the tool"


def test_malformed_json_is_400(http: httpx.Client) -> None:
    reply = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request"


def test_approval_requests_become_tool_calls_with_finish_reason_tool_calls() -> None:
    """Pure mapping (no server; belongs in tests/unit once that tier may import it): a run that
    stops for approval answers with the pending tool calls, pieces joined per call."""
    translator = ChatTranslator()
    pieces = [
        {"otid": "a", "tool_call": {"name": "get_weather", "arguments": '{"city":', "tool_call_id": "call_1"}},
        {"otid": "b", "tool_call": {"name": "get_time", "arguments": "{}", "tool_call_id": "call_2"}},
        {"otid": "a", "tool_call": {"arguments": ' "Paris"}'}},
    ]
    deltas = [d for p in pieces for d in translator.feed({"message_type": "approval_request_message", **p})]
    translator.feed({"message_type": "stop_reason", "stop_reason": "requires_approval"})
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert [(c.index, c.id, c.function.name) for c in calls] == [(0, "call_1", "get_weather"), (1, "call_2", "get_time"), (0, None, None)]
    assert deltas[0].role == "assistant" and deltas[1].role is None
    answer = translator.completion("chatcmpl-x", 0, "agent-x").choices[0]
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    assert [(c.id, c.function.arguments) for c in answer.message.tool_calls or []] == [
        ("call_1", '{"city": "Paris"}'),
        ("call_2", "{}"),
    ]


def test_a_client_leaving_before_the_first_token_cancels_its_run(
    http: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider
) -> None:
    model = unique("slow")
    frames = fp.chat_text(model, ["tick "] * 12)
    paced: list[fp.Frame] = []
    for frame in frames:
        paced += [frame, fp.Pause(0.5)]  # a 6 s answer, never silent long enough to time out
    fake_provider.script(model, fp.Stream(paced), repeat=True)
    agent = new_agent(http, f"openai/{model}")
    # A long run ahead of the chat request keeps it queued: no first token can come for seconds.
    body = {"messages": [{"role": "user", "content": "go"}], "streaming": True, "background": True}
    with http.stream("POST", f"/v1/agents/{agent}/messages", json=body) as first:
        assert first.status_code == 200
        next(first.iter_lines())
    # The client gives up before the answer starts.
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.Client(base_url=convoy.url, timeout=httpx.Timeout(30, read=1.0)) as impatient,
    ):
        impatient.post("/v1/chat/completions", json={"model": agent, "messages": user("hi"), "stream": True})

    def statuses() -> list[str]:
        return [r["status"] for r in runs_of(http, agent)]  # newest first

    wait_until(lambda: statuses()[0] == "cancelled", 4, message="the abandoned chat run to be cancelled")
    assert statuses()[1] == "running", "the run ahead of it is untouched"
    running = runs_of(http, agent)[1]["id"]
    http.post(f"/v1/runs/{running}/cancel").raise_for_status()
