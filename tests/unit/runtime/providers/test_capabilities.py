"""Which settings each provider and model family is refused, and the model listing's credentials rule."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidRequestError
from runtime.providers import capabilities
from runtime.providers.events import GenerationSettings, ResponseFormat
from runtime.providers.registry import Providers
from runtime.settings import CompatibleProvider, Settings

SCHEMA = ResponseFormat("json_schema", schema={"type": "object"})


def refusal(api: capabilities.Api, provider: str, model: str, **given: object) -> str | None:
    try:
        capabilities.check(
            api, provider, model, GenerationSettings(**given), max_output_tokens=None,  # type: ignore[arg-type]
            default_max_output_tokens=4096, describe=lambda field: field,
        )  # fmt: skip
    except InvalidRequestError as exc:
        return exc.message
    return None


@pytest.mark.parametrize(
    ("api", "provider", "model", "given", "refused"),
    [
        ("chat", "openai", "gpt-5-mini", {"reasoning_effort": "low"}, None),
        ("chat", "openai", "o3-2025-04-16", {"reasoning_effort": "high"}, None),
        ("chat", "openai", "gpt-4o", {"reasoning_effort": "low"}, "not a reasoning model"),
        ("chat", "openai", "gpt-5-chat-latest", {"reasoning_effort": "low"}, "not a reasoning model"),
        ("chat", "openai", "ft:gpt-4o-mini:acme::x1", {"reasoning_effort": "low"}, "not a reasoning model"),
        ("chat", "openai", "gpt-5", {"temperature": 0.2}, "reasoning model"),
        ("chat", "openai", "gpt-4-turbo", {"response_format": SCHEMA}, "no structured outputs"),
        ("chat", "openai", "gpt-4.1", {"response_format": SCHEMA}, None),
        ("chat", "openai", "my-finetune", {"reasoning_effort": "low"}, None),  # unknown family: the doubt's benefit
        ("chat", "vllm", "meta-llama/Llama-3.1-8B", {"reasoning_effort": "low", "temperature": 0.1}, None),
        ("chat", "vllm", "meta-llama/Llama-3.1-8B", {"thinking_budget_tokens": 2000}, "no thinking budget"),
        ("anthropic", "anthropic", "claude-sonnet-4-20250514", {"response_format": SCHEMA}, "no structured outputs"),
        ("anthropic", "anthropic", "claude-opus-4-1-20250805", {"response_format": SCHEMA}, None),
        ("anthropic", "anthropic", "claude-3-7-sonnet-latest", {"thinking_budget_tokens": 2048}, None),
        ("anthropic", "anthropic", "claude-3-5-sonnet-latest", {"thinking_budget_tokens": 2048}, "no extended thinking"),
        ("anthropic", "anthropic", "claude-sonnet-4-5", {"thinking_budget_tokens": 512}, "at least 1024"),
        ("anthropic", "anthropic", "claude-sonnet-4-5", {"thinking_budget_tokens": 0, "temperature": 0.3}, None),
        ("anthropic", "anthropic", "claude-sonnet-4-5", {"effort": "low"}, "no effort setting"),
        ("anthropic", "anthropic", "claude-opus-4-6", {"effort": "max"}, None),
        ("gemini", "google", "gemini-2.5-pro", {"thinking_budget_tokens": 0}, "cannot turn thinking off"),
        ("gemini", "google", "gemini-2.5-flash", {"thinking_budget_tokens": 0, "parallel_tool_calls": True}, None),
        ("gemini", "google", "gemini-3-pro-preview", {"thinking_budget_tokens": -1}, None),
        ("echo", "echo", "echo", {"temperature": 1.0, "response_format": ResponseFormat("text")}, None),
        ("echo", "echo", "echo", {"response_format": ResponseFormat("json_object")}, "cannot answer in JSON"),
    ],
)
def test_what_each_family_is_refused(api: capabilities.Api, provider: str, model: str, given: dict[str, object], refused: str | None) -> None:
    message = refusal(api, provider, model, **given)
    assert (message is None) == (refused is None), message
    if refused:
        assert message is not None and refused in message


def test_provider_types_fit_their_provider() -> None:
    capabilities.check_provider_type("gemini", "google", "google_vertex", "model_settings")
    capabilities.check_provider_type("chat", "vllm", "openrouter", "model_settings")
    with pytest.raises(InvalidRequestError, match="use 'openai' or leave it out"):
        capabilities.check_provider_type("chat", "openai", "groq", "model_settings")
    with pytest.raises(InvalidRequestError, match="leave it out"):
        capabilities.check_provider_type("echo", "echo", "openai", "model_settings")


async def test_a_provider_without_credentials_lists_nothing() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=None,
        anthropic_api_key="sk-ant",
        gemini_api_key=None,
        google_vertex_project=None,
        google_genai_use_vertexai=False,
        providers={"mine": CompatibleProvider(base_url="http://127.0.0.1:9/v1", models=["m1"])},
    )
    handles = [m.handle for m in await Providers(settings).list_models()]
    assert handles[0] == "echo/echo" and "mine/m1" in handles
    assert {h.split("/")[0] for h in handles} == {"echo", "anthropic", "mine"}
