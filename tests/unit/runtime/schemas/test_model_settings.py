"""Letta's model_settings: each field's meaning, and the precedence of the layers, field by field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtime.providers.events import ResponseFormat
from runtime.schemas.model_settings import ModelSettings, letta_view, resolve


def test_each_provider_types_fields_mean_one_setting() -> None:
    openai = ModelSettings.model_validate({"provider_type": "openai", "reasoning": {"reasoning_effort": "low"}})
    anthropic = ModelSettings.model_validate({"thinking": {"type": "disabled"}, "effort": "high"})
    google = ModelSettings.model_validate(
        {"thinking_config": {"thinking_budget": 256, "include_thoughts": True}, "response_schema": {"type": "json_object"}}
    )
    assert resolve([("agent", openai)]).generation().reasoning_effort == "low"
    assert (resolve([("agent", anthropic)]).generation().thinking_budget_tokens, anthropic.effort) == (0, "high")
    gemini = resolve([("agent", google)]).generation()
    assert (gemini.thinking_budget_tokens, gemini.include_thoughts, gemini.response_format) == (256, True, ResponseFormat("json_object"))


def test_a_bare_schema_is_taken_as_the_schema() -> None:
    settings = ModelSettings.model_validate({"response_format": {"type": "json_schema", "json_schema": {"type": "object"}}})
    assert resolve([("request", settings)]).generation().response_format == ResponseFormat("json_schema", schema={"type": "object"})


def test_layers_combine_field_by_field_and_say_where_each_came_from() -> None:
    request = ModelSettings(temperature=0.3)
    conversation = ModelSettings(temperature=0.2, max_output_tokens=200)
    agent = ModelSettings(temperature=0.1, parallel_tool_calls=False)
    resolved = resolve([("request", request), ("conversation", conversation), ("agent", agent)], agent_max_tokens=50)
    settings = resolved.generation()
    assert (settings.temperature, resolved.max_output_tokens, settings.parallel_tool_calls) == (0.3, 200, False)
    assert resolved.describe("parallel_tool_calls") == "model_settings.parallel_tool_calls (set on the agent)"
    assert resolve([("agent", None)], agent_max_tokens=50).describe("max_output_tokens") == "max_tokens (set on the agent)"
    assert resolved.summary()["temperature"] == {"value": 0.3, "from": "request"}


def test_conflicting_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ModelSettings.model_validate({"response_format": {"type": "text"}, "response_schema": {"type": "text"}})
    with pytest.raises(ValidationError, match="not both"):
        ModelSettings.model_validate({"thinking": {"budget_tokens": 2000}, "thinking_config": {"thinking_budget": 10}})


def test_the_letta_view_names_the_provider_and_the_output_limit() -> None:
    assert letta_view(None, "echo", max_output_tokens=None) is None
    assert letta_view(ModelSettings(temperature=0.5), "google", max_output_tokens=99) == {
        "provider_type": "google_ai", "temperature": 0.5, "max_output_tokens": 99
    }  # fmt: skip
    assert letta_view(None, "vllm", max_output_tokens=None) == {"provider_type": "openai"}
