"""Model settings (Letta's ``model_settings``) end to end, and the model listings.

Each provider's test sets every setting it has on an agent, sends a message through the real
server, and reads what the fake provider received (``Call.body``): the provider's own parameters.
The JSON-schema turns have the fake answer JSON, which must reach the client whole and validate.
Refusals are 400s naming the setting, and leave Redis exactly as it was; a key that is not one of
Letta's settings, or one Convoy cannot honour, is a 422 naming it at every edge that takes settings.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import redis
from letta_client import AsyncLetta, BadRequestError, UnprocessableEntityError

from bench import upstream as fp
from runtime.store import keyspace
from tests.conftest import COMPAT_MODELS, LISTED_MODELS, Convoy, redis_snapshot, sync_client
from tests.integration.test_providers import Turn, send, steps, unique

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "rank": {"type": "integer", "minimum": 1}},
    "required": ["city", "rank"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "ranking", "schema": SCHEMA, "strict": True}}
ANSWER = ['{"city": "Par', 'is", "rank"', ": 1}"]  # valid JSON only once whole


async def agent_with(client: httpx.AsyncClient, model: str, settings: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    reply = await client.post("/v1/agents", json={"name": "s", "model": model, "model_settings": settings, **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def conversation_of(client: httpx.AsyncClient, agent_id: str, **body: Any) -> str:
    reply = await client.post("/v1/conversations", params={"agent_id": agent_id}, json=body or None)
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]  # type: ignore[no-any-return]


async def turn_on(
    client: httpx.AsyncClient, model: str, settings: dict[str, Any], text: str = "rank a city", **agent: Any
) -> Turn:
    created = await agent_with(client, model, settings, **agent)
    return await send(client, await conversation_of(client, created["id"]), text)


def valid_json(turn: Turn) -> Any:
    document = json.loads(turn.text)
    jsonschema.validate(document, SCHEMA)
    return document


# -- each provider's own parameters ----------------------------------------------------------------


async def test_openai_chat_maps_every_setting(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt-5")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ANSWER)))
    settings = {
        "provider_type": "openai",
        "max_output_tokens": 900,
        "parallel_tool_calls": False,
        "reasoning": {"reasoning_effort": "low"},
        "verbosity": "low",
        "response_format": JSON_SCHEMA,
    }
    turn = await turn_on(client, f"openai/{model}", settings, tools=["add"])

    assert valid_json(turn) == {"city": "Paris", "rank": 1} and turn.stop_reason == "end_turn"
    (call,) = fake_provider.calls(model)
    body = call.body
    assert body["max_completion_tokens"] == 900 and body["parallel_tool_calls"] is False
    assert body["reasoning_effort"] == "low" and body["verbosity"] == "low" and "temperature" not in body
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "ranking", "schema": SCHEMA, "strict": True}}
    (step,) = await steps(client, turn.run_id)
    assert step["trace"]["request"]["response_format"] == body["response_format"]
    summary = step["trace"]["model_settings"]
    assert summary["reasoning.reasoning_effort"] == {"value": "low", "from": "agent"}
    assert summary["response_format"]["value"] == {"type": "json_schema", "name": "ranking", "strict": True}

    plain = unique("gpt-4o")
    fake_provider.script(plain, fp.Stream(fp.chat_text(plain, ['{"a": 1}'])))
    turn = await turn_on(client, f"openai/{plain}", {"temperature": 0.25, "response_format": {"type": "json_object"}})
    assert json.loads(turn.text) == {"a": 1}
    (call,) = fake_provider.calls(plain)
    assert call.body["temperature"] == 0.25 and call.body["response_format"] == {"type": "json_object"}


async def test_openai_responses_maps_every_setting(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("o4-mini")
    fake_provider.script(model, fp.Stream(fp.responses_text(model, ANSWER)))
    settings = {"max_output_tokens": 700, "reasoning": {"reasoning_effort": "high"}, "response_format": JSON_SCHEMA,
                "parallel_tool_calls": False}  # fmt: skip
    turn = await turn_on(client, f"openai-responses/{model}", settings, tools=["add"])

    assert valid_json(turn) == {"city": "Paris", "rank": 1}
    (call,) = fake_provider.calls(model)
    body = call.body
    assert body["max_output_tokens"] == 700 and body["reasoning"] == {"effort": "high"} and body["parallel_tool_calls"] is False
    assert body["text"] == {"format": {"type": "json_schema", "name": "ranking", "schema": SCHEMA, "strict": True}}

    plain = unique("gpt-4.1")
    fake_provider.script(plain, fp.Stream(fp.responses_text(plain, ["fine"])))
    await turn_on(client, f"openai-responses/{plain}", {"temperature": 1.5, "response_format": {"type": "text"}})
    (call,) = fake_provider.calls(plain)
    assert call.body["temperature"] == 1.5 and call.body["text"] == {"format": {"type": "text"}}


async def test_anthropic_maps_every_setting(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("claude-sonnet-4-5")
    fake_provider.script(model, fp.Stream(fp.anthropic_thinking(model, ["Paris, surely."], ANSWER)))
    settings = {"provider_type": "anthropic", "max_output_tokens": 3000, "thinking": {"type": "enabled", "budget_tokens": 2048},
                "parallel_tool_calls": False, "response_format": JSON_SCHEMA}  # fmt: skip
    turn = await turn_on(client, f"anthropic/{model}", settings, tools=["add"])

    assert valid_json(turn) == {"city": "Paris", "rank": 1} and turn.of("reasoning_message")
    (call,) = fake_provider.calls(model)
    body = call.body
    assert body["max_tokens"] == 3000 and body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True} and "temperature" not in body

    opus = unique("claude-opus-4-5")
    fake_provider.script(opus, fp.Stream(fp.anthropic_text(opus, ["ok"])))
    await turn_on(client, f"anthropic/{opus}", {"temperature": 0.5, "effort": "medium", "thinking": {"type": "disabled"}})
    (call,) = fake_provider.calls(opus)
    assert call.body["temperature"] == 0.5 and call.body["output_config"] == {"effort": "medium"}
    assert call.body["thinking"] == {"type": "disabled"}


async def test_gemini_maps_every_setting(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gemini-2.5-flash")
    fake_provider.script(model, fp.Stream(fp.gemini_text(model, ANSWER)))
    settings = {"provider_type": "google_ai", "temperature": 0.4, "max_output_tokens": 800,
                "thinking_config": {"thinking_budget": 512, "include_thoughts": False}, "response_schema": JSON_SCHEMA}  # fmt: skip
    turn = await turn_on(client, f"google/{model}", settings)

    assert valid_json(turn) == {"city": "Paris", "rank": 1}
    (call,) = fake_provider.calls(model)
    assert call.body["generationConfig"] == {
        "maxOutputTokens": 800,
        "temperature": 0.4,
        "thinkingConfig": {"thinkingBudget": 512},
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
    }

    older = unique("gemini-2.0-flash")
    fake_provider.script(older, fp.Stream(fp.gemini_text(older, ['{"x": 1}'])))
    await turn_on(client, f"google/{older}", {"response_format": {"type": "json_object"}})
    (call,) = fake_provider.calls(older)
    assert call.body["generationConfig"]["responseMimeType"] == "application/json"
    assert "responseJsonSchema" not in call.body["generationConfig"]


async def test_echo_stops_at_its_output_limit(client: httpx.AsyncClient) -> None:
    turn = await turn_on(client, "echo/echo", {"max_output_tokens": 3, "temperature": 0.9}, "one two three four five")
    assert turn.text == "one two three " and turn.stop_reason == "max_tokens_exceeded"


# -- precedence ------------------------------------------------------------------------------------


async def test_request_over_conversation_over_agent_field_by_field(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt-4o")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ['{"ok": true}'])), repeat=True)
    agent = await agent_with(
        client, f"openai/{model}", {"temperature": 0.1, "max_output_tokens": 100, "response_format": {"type": "json_object"}}
    )
    conv = await conversation_of(client, agent["id"], model_settings={"temperature": 0.2, "max_output_tokens": 200})

    asked = await send(client, conv, "first", model_settings={"temperature": 0.3})
    await send(client, conv, "second")
    first, second = (c.body for c in fake_provider.calls(model))
    assert (first["temperature"], first["max_completion_tokens"], first["response_format"]) == (0.3, 200, {"type": "json_object"})
    assert (second["temperature"], second["max_completion_tokens"]) == (0.2, 200)
    summary = (await steps(client, asked.run_id))[0]["trace"]["model_settings"]
    assert summary["temperature"] == {"value": 0.3, "from": "request"}
    assert summary["max_output_tokens"] == {"value": 200, "from": "conversation"}
    assert summary["response_format"] == {"value": {"type": "json_object"}, "from": "agent"}

    patched = await client.patch(f"/v1/conversations/{conv}", json={"model_settings": {"response_format": {"type": "text"}}})
    assert patched.status_code == 200, patched.text
    await send(client, conv, "third")
    third = fake_provider.calls(model)[-1].body
    assert (third["temperature"], third["max_completion_tokens"], third["response_format"]) == (0.1, 100, {"type": "text"})


async def test_chat_completions_fields_are_the_requests_settings(
    convoy: Convoy, client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt-4o")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ANSWER)))
    agent = await agent_with(client, f"openai/{model}", {"temperature": 0.9})
    chat = openai.AsyncOpenAI(base_url=f"{convoy.url}/v1", api_key="local", max_retries=0)
    answer = await chat.chat.completions.create(
        model=agent["id"],
        messages=[{"role": "user", "content": "rank"}],
        temperature=0.0,
        max_completion_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "ranking", "schema": SCHEMA, "strict": True}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)
    (call,) = fake_provider.calls(model)
    assert call.body["temperature"] == 0.0 and call.body["max_completion_tokens"] == 50
    assert call.body["response_format"]["json_schema"]["schema"] == SCHEMA

    with pytest.raises(openai.BadRequestError) as refused:
        await chat.chat.completions.create(model=agent["id"], messages=[{"role": "user", "content": "x"}], reasoning_effort="high")
    assert "reasoning_effort" in str(refused.value) and "not a reasoning model" in str(refused.value)


# -- refusals --------------------------------------------------------------------------------------


@pytest.fixture
def sync_store(convoy: Convoy) -> redis.Redis:
    return sync_client(convoy.redis_url, decode_responses=True)


async def test_what_a_model_cannot_honour_is_a_400_naming_it_and_nothing_is_stored(
    client: httpx.AsyncClient, sync_store: redis.Redis
) -> None:
    gpt = await agent_with(client, "openai/gpt-4o", {"temperature": 0.5})
    claude = await agent_with(client, "anthropic/claude-sonnet-4-5", None)
    conv = await conversation_of(client, gpt["id"])
    echo_conv = await conversation_of(client, (await agent_with(client, "echo/echo", None))["id"])
    message = {"messages": [{"role": "user", "content": "hi"}], "streaming": False}
    refusals: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/v1/agents", {"model": "openai/gpt-4o", "model_settings": {"reasoning": {"reasoning_effort": "high"}}},
         "model_settings.reasoning.reasoning_effort (set on the agent): gpt-4o is not a reasoning model"),
        ("POST", "/v1/agents", {"model": "openai/o3", "model_settings": {"temperature": 0.2}}, "o3 is a reasoning model"),
        ("POST", "/v1/agents", {"model": "anthropic/claude-sonnet-4-5", "model_settings": {"response_format": {"type": "json_object"}}},
         "Anthropic has no JSON mode without a schema"),
        ("POST", "/v1/agents", {"model": "anthropic/claude-3-5-haiku", "model_settings": {"response_format": JSON_SCHEMA}},
         "has no structured outputs"),
        ("POST", "/v1/agents", {"model": "anthropic/claude-sonnet-4-5", "model_settings": {"thinking": {"budget_tokens": 5000}}},
         "must be below the output limit"),
        ("POST", "/v1/agents", {"model": "google/gemini-2.5-flash", "model_settings": {"parallel_tool_calls": False}},
         "Gemini has no way to forbid parallel function calls"),
        ("POST", "/v1/agents", {"model": "google/gemini-2.5-flash", "model_settings": {"provider_type": "openai"}},
         "provider_type 'openai' does not fit"),
        ("POST", "/v1/agents", {"model": "echo/echo", "model_settings": {"response_format": JSON_SCHEMA}}, "cannot answer in JSON"),
        ("PATCH", f"/v1/agents/{gpt['id']}", {"model": "anthropic/claude-sonnet-4-5", "model_settings": {"temperature": 1.5}},
         "Anthropic takes a temperature from 0 to 1"),
        ("PATCH", f"/v1/agents/{gpt['id']}", {"model_settings": {"thinking_config": {"thinking_budget": 100}}},
         "OpenAI's API has no thinking budget"),
        ("POST", f"/v1/conversations?agent_id={claude['id']}", {"model_settings": {"reasoning": {"reasoning_effort": "low"}}},
         "model_settings.reasoning.reasoning_effort (set on the conversation): Anthropic's API has no reasoning effort"),
        ("POST", f"/v1/conversations?agent_id={gpt['id']}", {"model": "anthropic/claude-opus-4-5", "model_settings": {"effort": "max"}},
         "needs Claude Opus 4.6"),
        ("PATCH", f"/v1/conversations/{conv}", {"model": "google/gemini-2.0-flash", "model_settings": {"thinking_config": {"thinking_budget": 64}}},
         "does not think"),
        ("POST", f"/v1/conversations/{echo_conv}/messages", {**message, "model_settings": {"reasoning": {"reasoning_effort": "low"}}},
         "(set in this request): the offline echo/echo model does not reason"),
        ("POST", f"/v1/conversations/{conv}/messages", {**message, "override_model": "anthropic/claude-sonnet-4-5",
                                                      "model_settings": {"response_format": {"type": "json_object"}}},
         "Anthropic has no JSON mode without a schema"),
    ]  # fmt: skip
    for method, path, body, expected in refusals:
        before = redis_snapshot(sync_store)
        reply = await client.request(method, path, json=body)
        assert reply.status_code == 400, (path, body, reply.text)
        assert expected in reply.json()["detail"], (path, reply.json()["detail"])
        assert redis_snapshot(sync_store) == before, (path, body)
    assert (await client.get(f"/v1/agents/{gpt['id']}")).json()["model"] == "openai/gpt-4o"


async def test_an_agent_update_is_checked_against_its_conversations(client: httpx.AsyncClient, sync_store: redis.Redis) -> None:
    """The agent's settings reach every conversation that keeps them: one on Anthropic refuses an
    OpenAI-only setting the agent's own model would take."""
    gpt = await agent_with(client, "openai/gpt-5", None)
    await conversation_of(client, gpt["id"], model="anthropic/claude-sonnet-4-5")
    before = redis_snapshot(sync_store)
    reply = await client.patch(f"/v1/agents/{gpt['id']}", json={"model_settings": {"reasoning": {"reasoning_effort": "low"}}})
    assert reply.status_code == 400 and "(set on the agent): Anthropic's API has no reasoning effort" in reply.json()["detail"]
    assert redis_snapshot(sync_store) == before
    moved = await client.patch(f"/v1/agents/{gpt['id']}", json={"model_settings": {"max_output_tokens": 2000}})
    assert moved.status_code == 200 and moved.json()["model_settings"]["max_output_tokens"] == 2000


async def test_malformed_settings_are_422(client: httpx.AsyncClient, sync_store: redis.Redis) -> None:
    before = redis_snapshot(sync_store)
    for settings, where in [
        ({"temperature": 3}, "model_settings.temperature"),
        ({"response_format": {"type": "yaml"}}, "model_settings.response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": SCHEMA}}}, "json_schema.name"),
        ({"thinking": {"type": "enabled"}}, "needs budget_tokens"),
    ]:
        reply = await client.post("/v1/agents", json={"model": "openai/gpt-4o", "model_settings": settings})
        assert reply.status_code == 422 and where in reply.text, (settings, reply.text)
    assert redis_snapshot(sync_store) == before


# -- the Letta SDK ---------------------------------------------------------------------------------


async def test_letta_client_creates_and_updates_an_agent_with_model_settings(convoy: Convoy) -> None:
    letta = AsyncLetta(base_url=convoy.url, api_key="local")
    agent = await letta.agents.create(
        name="settings",
        model="openai/gpt-5",
        model_settings={"provider_type": "openai", "max_output_tokens": 1234, "reasoning": {"reasoning_effort": "minimal"}},
    )
    settings = agent.api_model_settings  # the SDK's name for model_settings (which BaseModel reserves)
    assert settings is not None and settings.provider_type == "openai" and settings.max_output_tokens == 1234
    assert settings.reasoning is not None and settings.reasoning.reasoning_effort == "minimal"  # type: ignore[union-attr]
    updated = await letta.agents.update(
        agent.id, model="anthropic/claude-sonnet-4-5", model_settings={"provider_type": "anthropic", "thinking": {"type": "enabled", "budget_tokens": 1024}}
    )
    assert updated.model == "anthropic/claude-sonnet-4-5" and updated.api_model_settings is not None
    assert updated.api_model_settings.thinking.budget_tokens == 1024  # type: ignore[union-attr]
    again = await letta.agents.retrieve(agent.id)
    assert again.api_model_settings is not None and again.api_model_settings.provider_type == "anthropic"
    conversation = await letta.conversations.create(agent_id=agent.id, model_settings={"provider_type": "anthropic", "max_output_tokens": 2000})
    changed = await letta.conversations.update(conversation.id, model_settings={"provider_type": "anthropic", "max_output_tokens": 3000})
    assert changed.api_model_settings is not None and changed.api_model_settings.max_output_tokens == 3000
    echo = await letta.agents.create(name="echo", model="echo/echo")
    stream = await letta.conversations.messages.create(
        (await letta.conversations.create(agent_id=echo.id)).id,
        messages=[{"role": "user", "content": "one two three"}],
        extra_body={"model_settings": {"max_output_tokens": 2}},  # a send's own settings, through the SDK
    )
    words = [event.content async for event in stream if event.message_type == "assistant_message"]  # type: ignore[union-attr]
    assert "".join(words) == "one two "
    with pytest.raises(BadRequestError) as refused:  # thinking is on (the agent's): no temperature
        await letta.conversations.update(conversation.id, model_settings={"provider_type": "anthropic", "temperature": 0.2})
    assert "model_settings.temperature (set on the conversation)" in str(refused.value)


# Each a setting Convoy would otherwise drop: a typo, a key Letta does not have, or a Letta field
# Convoy cannot honour that asks for something.
UNKNOWN_SETTINGS = [
    ({"provider_type": "openai", "tempreature": 0.2}, "unknown field 'tempreature'"),
    ({"reasoning": {"effort": "low"}}, "unknown field 'reasoning.effort' (reasoning has reasoning_effort)"),
    ({"thinking_config": {"thinking_budget": 0, "include_thought": True}}, "'thinking_config.include_thought'"),
    ({"response_format": {"type": "json_object", "strict": True}}, "'response_format.strict'"),
    ({"top_p": 0.5, "seed": 7}, "unknown fields 'top_p', 'seed'"),
    ({"tool_call_parser": "hermes"}, "tool_call_parser: SGLang's tool-call parser is chosen where SGLang is started"),
    ({"thinking": {"type": "disabled", "clear_thinking": False}}, "thinking.clear_thinking: Z.ai's preserved-thinking switch"),
    ({"strict": True}, "strict: strict tool schemas are not supported"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "descripton": "a city"}}},
     "unknown field 'response_format.json_schema.descripton' (json_schema has description, name, schema, strict)"),
    ({"response_schema": {"type": "json_schema", "json_schema": {"schema": SCHEMA, "description": 7}}},
     "response_schema.json_schema.description must be a string"),
]
SETTING_EDGES = ["agents.create", "agents.update", "conversations.create", "conversations.update", "send"]


@pytest.mark.parametrize("edge", SETTING_EDGES)
@pytest.mark.parametrize(("settings", "expected"), UNKNOWN_SETTINGS)
async def test_a_setting_convoy_does_not_know_is_a_422_naming_it(
    convoy: Convoy, sync_store: redis.Redis, edge: str, settings: dict[str, Any], expected: str
) -> None:
    """Bug: unknown model_settings keys were ignored, so the model ran with other settings than asked."""
    letta = AsyncLetta(base_url=convoy.url, api_key="local", max_retries=0)
    agent = await letta.agents.create(name="unknown-settings", model="openai/gpt-5")
    conversation = await letta.conversations.create(agent_id=agent.id)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "agents.create": lambda: letta.agents.create(name="s", model="openai/gpt-5", model_settings=settings),  # type: ignore[arg-type]
        "agents.update": lambda: letta.agents.update(agent.id, model_settings=settings),  # type: ignore[arg-type]
        "conversations.create": lambda: letta.conversations.create(agent_id=agent.id, model_settings=settings),  # type: ignore[arg-type]
        "conversations.update": lambda: letta.conversations.update(conversation.id, model_settings=settings),  # type: ignore[arg-type]
        "send": lambda: letta.conversations.messages.create(
            conversation.id, messages=[{"role": "user", "content": "hi"}], streaming=False,
            extra_body={"model_settings": settings},
        ),
    }  # fmt: skip
    before = redis_snapshot(sync_store)
    with pytest.raises(UnprocessableEntityError) as refused:
        await calls[edge]()
    assert expected in str(refused.value) and "model_settings" in str(refused.value)
    assert redis_snapshot(sync_store) == before


DESCRIBED = {"type": "json_schema", "json_schema": {"name": "ranking", "schema": SCHEMA, "description": "the best city, ranked"}}


async def test_a_json_schema_description_reaches_openai(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    """Bug: ``json_schema.description`` (what the answer is for, read by the model) was dropped."""
    chat, responses = unique("gpt-4.1"), unique("gpt-4.1")
    fake_provider.script(chat, fp.Stream(fp.chat_text(chat, ANSWER)))
    fake_provider.script(responses, fp.Stream(fp.responses_text(responses, ANSWER)))
    await turn_on(client, f"openai/{chat}", {"response_format": DESCRIBED})
    await turn_on(client, f"openai-responses/{responses}", {"response_format": DESCRIBED})
    (call,) = fake_provider.calls(chat)
    assert call.body["response_format"]["json_schema"]["description"] == "the best city, ranked"
    (call,) = fake_provider.calls(responses)
    assert call.body["text"]["format"]["description"] == "the best city, ranked"


@pytest.mark.parametrize(("model", "provider"), [("anthropic/claude-sonnet-4-5", "Anthropic"), ("google/gemini-2.5-flash", "Gemini")])
async def test_a_json_schema_description_elsewhere_is_a_400(convoy: Convoy, model: str, provider: str) -> None:
    letta = AsyncLetta(base_url=convoy.url, api_key="local", max_retries=0)
    with pytest.raises(BadRequestError) as refused:
        await letta.agents.create(name="described", model=model, model_settings={"response_format": DESCRIBED})  # type: ignore[arg-type]
    assert f"model_settings.response_format (set on the agent): json_schema.description is OpenAI's; {provider}" in str(refused.value)


async def test_letta_fields_at_their_defaults_are_accepted(convoy: Convoy) -> None:
    """Null ``tool_call_parser``/``clear_thinking`` and ``strict: false`` ask for nothing Convoy lacks."""
    letta = AsyncLetta(base_url=convoy.url, api_key="local", max_retries=0)
    agent = await letta.agents.create(
        name="defaults",
        model="openai/gpt-5",
        model_settings={"provider_type": "openai", "strict": False, "max_output_tokens": 800, "tool_call_parser": None},  # type: ignore[arg-type]
    )
    assert agent.api_model_settings is not None and agent.api_model_settings.max_output_tokens == 800
    claude = await letta.agents.create(
        name="defaults", model="anthropic/claude-sonnet-4-5",
        model_settings={"thinking": {"type": "disabled", "clear_thinking": None}},  # type: ignore[arg-type]
    )  # fmt: skip
    assert claude.api_model_settings is not None and claude.api_model_settings.thinking.type == "disabled"  # type: ignore[union-attr]


async def test_a_stored_record_with_a_field_this_version_lacks_still_loads(convoy: Convoy, sync_store: redis.Redis) -> None:
    """Strictness is for requests only: a record written by another version reads as it can."""
    letta = AsyncLetta(base_url=convoy.url, api_key="local", max_retries=0)
    agent = await letta.agents.create(name="stored", model="openai/gpt-5", model_settings={"max_output_tokens": 900})
    record = json.loads(sync_store.get(keyspace.agent(agent.id)))  # type: ignore[arg-type]
    record["model_settings"]["setting_from_another_version"] = 1
    sync_store.set(keyspace.agent(agent.id), json.dumps(record))
    again = await letta.agents.retrieve(agent.id)
    assert again.api_model_settings is not None and again.api_model_settings.max_output_tokens == 900


# -- model listings --------------------------------------------------------------------------------


async def test_openai_and_letta_listings_show_the_handles_that_work(convoy: Convoy, fake_provider: fp.FakeProvider) -> None:
    listed = await openai.AsyncOpenAI(base_url=f"{convoy.url}/v1", api_key="local", max_retries=0).models.list()
    ids = [m.id for m in listed.data]
    assert ids[0] == "echo/echo" and all(m.object == "model" for m in listed.data)
    for handle in ("openai/gpt-4o", "openai-responses/gpt-5", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash",
                   *(f"compat/{m}" for m in COMPAT_MODELS), *(f"listed/{m}" for m in LISTED_MODELS)):  # fmt: skip
        assert handle in ids, handle
    assert not any(i.startswith("unreachable/") for i in ids), "a server that does not answer lists nothing"
    assert {m.owned_by for m in listed.data if m.id.startswith("compat/")} == {"compat"}

    letta = AsyncLetta(base_url=convoy.url, api_key="local")
    models = await letta.models.list()
    assert [m.handle for m in models] == ids
    gemini = next(m for m in models if m.handle == "google/gemini-2.5-flash")
    assert (gemini.provider_type, gemini.name, gemini.provider_name, gemini.max_context_window) == (
        "google_ai", "gemini-2.5-flash", "google", 1_048_576
    )
    assert [m.handle for m in await letta.models.list(provider_name="listed")] == [f"listed/{m}" for m in LISTED_MODELS]
    assert {m.provider_name for m in await letta.models.list(provider_type="anthropic")} == {"anthropic"}
    assert await letta.models.list(provider_category=["byok"]) == []
