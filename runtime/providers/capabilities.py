"""What each provider and model family can be asked for, checked before a request is accepted.

A model setting (``GenerationSettings``) that the target cannot honour is refused with
``InvalidRequestError`` (HTTP 400) naming the setting and why, at the edge, before anything is
stored: an agent, a conversation or a message whose settings would fail at the provider never
exists. The rules, by what the providers document:

- **OpenAI** (``openai/``, ``openai-responses/``): reasoning effort and verbosity only on reasoning
  families (o-series, gpt-5 but its chat variants, codex, gpt-oss); no temperature on those;
  ``json_schema`` everywhere but the families that predate structured outputs (gpt-3.5, gpt-4,
  gpt-4-turbo, o1-mini, o1-preview, gpt-4o-2024-05-13); no thinking budget (that is Anthropic's and
  Gemini's word for it).
- **Anthropic**: temperature at most 1, and none with thinking on; a thinking budget of at least
  1,024 tokens, below the output limit, on Claude 3.7 Sonnet and every Claude 4; ``effort`` on Opus
  4.5 and later (``xhigh`` and ``max`` on Opus 4.6 and later); ``json_schema`` (structured outputs)
  on Sonnet and Haiku 4.5, Opus 4.1 and later; no ``json_object`` (Anthropic has no JSON mode
  without a schema); no reasoning effort; no ``json_schema.description`` (OpenAI's, as on Gemini).
- **Gemini**: a thinking budget on 2.5 and later (2.5 Pro cannot turn thinking off); JSON with or
  without a schema; no reasoning effort; no way to forbid parallel function calls.
- **OpenAI-compatible servers** (``CONVOY_PROVIDERS``): the OpenAI parameters are passed on as
  asked and the server decides (Convoy cannot know what a local model supports); no thinking budget.
- **echo**: no JSON, no reasoning, no thinking; it samples nothing, so a temperature changes
  nothing, and it stops at ``max_output_tokens`` words.

A model name of a family these rules do not know (a fine-tune, a newer release) is given the
benefit of the doubt: only what is known to fail is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from runtime.errors import InvalidRequestError
from runtime.providers.events import GenerationSettings

Api = Literal["echo", "chat", "responses", "anthropic", "gemini"]
Describe = Callable[[str], str]  # a GenerationSettings field -> how the caller named it

_NO_DESCRIPTION = (
    "json_schema.description is OpenAI's; {provider} takes the schema alone: leave it out, or say it in the "
    "schema's own top-level description"
)
ANTHROPIC_MIN_THINKING_TOKENS = 1024
ANTHROPIC_MAX_TEMPERATURE = 1.0

# Letta's ``provider_type`` words that fit a Convoy provider's API.
OPENAI_COMPATIBLE_TYPES = frozenset(
    {"openai", "azure", "xai", "groq", "deepseek", "together", "openrouter", "sglang", "vllm", "ollama",
     "lmstudio_openai", "moonshot", "zai", "baseten", "mistral", "fireworks", "cerebras", "chatgpt_oauth"}
)  # fmt: skip
_PROVIDER_TYPES: dict[Api, frozenset[str]] = {
    "echo": frozenset(),
    "chat": OPENAI_COMPATIBLE_TYPES,
    "responses": OPENAI_COMPATIBLE_TYPES,
    "anthropic": frozenset({"anthropic"}),
    "gemini": frozenset({"google_ai", "google_vertex"}),
}
_FIRST_PARTY_TYPES: dict[str, frozenset[str]] = {
    "openai": frozenset({"openai"}),
    "openai-responses": frozenset({"openai"}),
}

_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5(?!.*-chat)|codex|gpt-oss)")
_OPENAI_PLAIN = re.compile(r"^(gpt-3\.5|gpt-4|chatgpt-|gpt-5.*-chat)")
_OPENAI_NO_SCHEMA = re.compile(r"^(gpt-3\.5|gpt-4$|gpt-4-|o1-mini|o1-preview|gpt-4o-2024-05-13)")
_CLAUDE_NEW = re.compile(r"^claude-(opus|sonnet|haiku)-(\d+)(?:-(\d)(?=-|$))?")
_CLAUDE_OLD = re.compile(r"^claude-(\d)(?:-(\d))?-(opus|sonnet|haiku)")
_GEMINI = re.compile(r"^gemini-(\d+)(?:\.(\d+))?")


def check_provider_type(api: Api, provider: str, provider_type: str, where: str) -> None:
    """``provider_type`` (Letta's word for the provider) must fit the provider the model runs on."""
    allowed = _FIRST_PARTY_TYPES.get(provider, _PROVIDER_TYPES[api])
    if provider_type not in allowed:
        fits = f"use {' or '.join(repr(t) for t in sorted(allowed))} or leave it out" if allowed else "leave it out"
        raise InvalidRequestError(
            f"{where}: provider_type {provider_type!r} does not fit the model's provider {provider!r} ({fits})"
        )


def check(
    api: Api,
    provider: str,
    model: str,
    settings: GenerationSettings,
    *,
    max_output_tokens: int | None,
    default_max_output_tokens: int,
    describe: Describe,
) -> None:
    """Refuse (``InvalidRequestError``) the first setting ``provider``/``model`` cannot honour."""
    family = model.removeprefix("ft:").lower()
    if api == "echo":
        _echo(settings, describe)
    elif api == "anthropic":
        _anthropic(family, settings, max_output_tokens or default_max_output_tokens, describe)
    elif api == "gemini":
        _gemini(family, settings, describe)
    else:
        _openai(family, settings, describe, first_party=provider in _FIRST_PARTY_TYPES)


def _refuse(describe: Describe, field: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"{describe(field)}: {why}")


def _only_on(settings: GenerationSettings, describe: Describe, fields: dict[str, str]) -> None:
    """Refuse the first of ``fields`` (field -> why it does not apply) that is set."""
    for field, why in fields.items():
        if getattr(settings, field) is not None:
            raise _refuse(describe, field, why)


def _echo(s: GenerationSettings, describe: Describe) -> None:
    if s.response_format is not None and s.response_format.kind != "text":
        raise _refuse(describe, "response_format", "the offline echo/echo model repeats your words; it cannot answer in JSON")
    no_reasoning = "the offline echo/echo model does not reason"
    _only_on(s, describe, dict.fromkeys(("reasoning_effort", "effort", "thinking_budget_tokens", "include_thoughts"), no_reasoning))
    _only_on(s, describe, {"verbosity": "the offline echo/echo model repeats your words, at no verbosity"})


def _openai(family: str, s: GenerationSettings, describe: Describe, *, first_party: bool) -> None:
    _only_on(
        s,
        describe,
        {
            "thinking_budget_tokens": "OpenAI's API has no thinking budget; use reasoning.reasoning_effort",
            "effort": "effort is Anthropic's; OpenAI's API takes reasoning.reasoning_effort",
            "include_thoughts": "thought summaries are Gemini's setting",
        },
    )
    if not first_party:
        return  # an OpenAI-compatible server: it decides (module docstring)
    reasoning = bool(_OPENAI_REASONING.match(family))
    plain = not reasoning and bool(_OPENAI_PLAIN.match(family))
    if plain:
        _only_on(
            s,
            describe,
            {
                "reasoning_effort": f"{family} is not a reasoning model (reasoning effort is for o-series and gpt-5 models)",
                "verbosity": f"{family} has no verbosity setting (it is for gpt-5 models)",
            },
        )
    if reasoning and s.temperature is not None:
        raise _refuse(describe, "temperature", f"{family} is a reasoning model, which takes no temperature")
    if s.response_format is not None and s.response_format.kind == "json_schema" and _OPENAI_NO_SCHEMA.match(family):
        raise _refuse(
            describe, "response_format", f"{family} has no structured outputs (json_schema); use json_object or a newer model"
        )


def claude_version(family: str) -> tuple[str, float] | None:
    """``("sonnet", 4.5)`` for ``claude-sonnet-4-5-…``, ``("sonnet", 3.7)`` for ``claude-3-7-sonnet-…``;
    None for a name of no known shape."""
    new = _CLAUDE_NEW.match(family)
    if new:
        return new.group(1), float(f"{new.group(2)}.{new.group(3) or 0}")
    old = _CLAUDE_OLD.match(family)
    if old:
        return old.group(3), float(f"{old.group(1)}.{old.group(2) or 0}")
    return None


def _anthropic(family: str, s: GenerationSettings, max_tokens: int, describe: Describe) -> None:
    _only_on(
        s,
        describe,
        {
            "reasoning_effort": "Anthropic's API has no reasoning effort; use thinking.budget_tokens (or effort on Opus 4.5 and later)",
            "include_thoughts": "thought summaries are Gemini's setting",
            "verbosity": "verbosity is OpenAI's (gpt-5) setting",
        },
    )
    version = claude_version(family)
    kind, number = version if version else ("", 99.0)  # unknown names: the benefit of the doubt
    thinking = bool(s.thinking_budget_tokens)
    if s.temperature is not None and s.temperature > ANTHROPIC_MAX_TEMPERATURE:
        raise _refuse(describe, "temperature", f"Anthropic takes a temperature from 0 to 1, not {s.temperature:g}")
    if thinking and s.temperature is not None:
        raise _refuse(describe, "temperature", "Anthropic's extended thinking does not work with a temperature; leave it out")
    if s.thinking_budget_tokens:
        if version and (number < 3.7 or (number < 4 and kind != "sonnet")):
            raise _refuse(describe, "thinking_budget_tokens", f"{family} has no extended thinking (Claude 3.7 Sonnet and Claude 4 have)")
        if s.thinking_budget_tokens < ANTHROPIC_MIN_THINKING_TOKENS:
            raise _refuse(describe, "thinking_budget_tokens", f"Anthropic needs a thinking budget of at least {ANTHROPIC_MIN_THINKING_TOKENS} tokens")
        if s.thinking_budget_tokens >= max_tokens:
            raise _refuse(
                describe,
                "thinking_budget_tokens",
                f"the thinking budget ({s.thinking_budget_tokens}) must be below the output limit max_output_tokens ({max_tokens})",
            )
    if s.effort is not None:
        if version and (kind != "opus" or number < 4.5):
            raise _refuse(describe, "effort", f"{family} has no effort setting (Claude Opus 4.5 and later have)")
        if s.effort in ("xhigh", "max") and version and number < 4.6:
            raise _refuse(describe, "effort", f"effort {s.effort!r} needs Claude Opus 4.6 or later")
    rf = s.response_format
    if rf is not None and rf.kind == "json_object":
        raise _refuse(describe, "response_format", "Anthropic has no JSON mode without a schema; send a json_schema")
    if rf is not None and rf.description is not None:
        raise _refuse(describe, "response_format", _NO_DESCRIPTION.format(provider="Anthropic"))
    if rf is not None and rf.kind == "json_schema" and version:
        structured = {"opus": 4.1, "sonnet": 4.5, "haiku": 4.5}
        if number < structured.get(kind, 99.0):
            raise _refuse(
                describe,
                "response_format",
                f"{family} has no structured outputs (Claude Sonnet 4.5, Haiku 4.5, Opus 4.1 and later have)",
            )


def gemini_version(family: str) -> float | None:
    """``2.5`` for ``gemini-2.5-flash``; None for a name of no known shape."""
    match = _GEMINI.match(family)
    return float(f"{match.group(1)}.{match.group(2) or 0}") if match else None


def _gemini(family: str, s: GenerationSettings, describe: Describe) -> None:
    _only_on(
        s,
        describe,
        {
            "reasoning_effort": "Gemini's API has no reasoning effort; use thinking_config.thinking_budget",
            "effort": "effort is Anthropic's; Gemini takes thinking_config.thinking_budget",
            "verbosity": "verbosity is OpenAI's (gpt-5) setting",
        },
    )
    if s.parallel_tool_calls is False:
        raise _refuse(describe, "parallel_tool_calls", "Gemini has no way to forbid parallel function calls")
    if s.response_format is not None and s.response_format.description is not None:
        raise _refuse(describe, "response_format", _NO_DESCRIPTION.format(provider="Gemini"))
    version = gemini_version(family)
    if s.thinking_budget_tokens is not None and version is not None:
        if version < 2.5:
            raise _refuse(describe, "thinking_budget_tokens", f"{family} does not think (Gemini 2.5 and later do)")
        if s.thinking_budget_tokens == 0 and family.startswith("gemini-2.5-pro"):
            raise _refuse(describe, "thinking_budget_tokens", "Gemini 2.5 Pro cannot turn thinking off (a budget of 0)")
