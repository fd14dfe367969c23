"""``model_settings`` in Letta's shape, and how the layers that set them combine.

Letta's ``model_settings`` is one object per provider type (``OpenAIModelSettings``,
``AnthropicModelSettings``, ``GoogleAIModelSettings``...), told apart by ``provider_type``. Convoy takes
the union of their fields in one model, so ``client.agents.create(model_settings=...)`` works with any
of them unchanged, and ``provider_type`` may be left out (Convoy knows the provider from the model
handle; when given, it must fit it). Each field means one provider-neutral setting
(``GenerationSettings``):

============================================  =====================================
Letta field                                   setting
============================================  =====================================
``temperature``                               temperature
``max_output_tokens``                         the output-token limit
``parallel_tool_calls``                       parallel tool calls on or off
``reasoning.reasoning_effort`` (OpenAI)       reasoning effort
``effort`` (Anthropic)                        Anthropic's output effort
``thinking`` (Anthropic),                     thinking budget (``type: disabled`` or a budget
``thinking_config.thinking_budget`` (Google)  of 0: thinking off)
``thinking_config.include_thoughts``          Gemini's thought summaries
``verbosity``                                 GPT-5's verbosity
``response_format``, ``response_schema``      text, ``json_object``, or ``json_schema``
(Google)                                      (``{"name", "schema", "strict", "description"}``,
                                              as OpenAI's)
============================================  =====================================

**Unknown fields are refused at the request edge** (``ModelSettingsInput``, a 422 naming each
one): a typo, a key of no Letta provider type, or a key of ``json_schema``'s OpenAI wrapper that
OpenAI does not have would otherwise be dropped, and the model would run with other settings than
asked. Letta's fields that Convoy cannot honour are refused likewise when they ask for something
(``strict: true``, SGLang's ``tool_call_parser``, Z.ai's ``thinking.clear_thinking``); their defaults
(``false``, null) are accepted. Stored records are read with ``ModelSettings``, which ignores what it
does not know, so a record written by another version always loads.

**Precedence, field by field:** a message's own settings, then its conversation's, then its
agent's (and the agent's ``max_tokens`` for the output limit); a field one layer leaves out comes
from the next. What a provider cannot honour is refused at the edge
(``runtime.providers.capabilities``), naming the field as the caller wrote it and the layer it came
from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.providers.events import GenerationSettings, ResponseFormat

Origin = Literal["request", "conversation", "agent"]
MAX_TOKENS = 10_000_000  # a ceiling for token counts (requests.MAX_CONTEXT_TOKENS; that module imports this one)
ProviderType = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_-]+$")]
SCHEMA_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a json_schema's name
DEFAULT_SCHEMA_NAME = "response"
WRAPPER_KEYS = frozenset({"name", "schema", "strict", "description"})  # OpenAI's json_schema object


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    """``json_schema`` is OpenAI's ``{"name", "schema", "strict", "description"}`` (``WRAPPER_KEYS``); a
    bare JSON Schema (no ``schema`` key) is taken as the schema itself, named ``response``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["json_schema"]
    json_schema: dict[str, Any]

    @field_validator("json_schema")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        from runtime.schemas.requests import bounded_json  # imported late: requests imports this module

        return bounded_json(value)  # type: ignore[no-any-return]

    @model_validator(mode="after")
    def _schema(self) -> JsonSchemaFormat:
        schema = self.schema_document()
        if not isinstance(schema, dict) or not schema:
            raise ValueError("json_schema.schema must be a JSON Schema object, e.g. {\"type\": \"object\", \"properties\": {...}}")
        name = self.json_schema.get("name", DEFAULT_SCHEMA_NAME)
        if not isinstance(name, str) or not re.fullmatch(SCHEMA_NAME, name):
            raise ValueError("json_schema.name must be 1 to 64 letters, digits, '_' or '-'")
        if not isinstance(self.json_schema.get("strict", False), bool):
            raise ValueError("json_schema.strict must be true or false")
        return self

    def schema_document(self) -> Any:
        wrapped = isinstance(self.json_schema.get("schema"), dict)
        return self.json_schema["schema"] if wrapped else self.json_schema

    def neutral(self) -> ResponseFormat:
        wrapped = isinstance(self.json_schema.get("schema"), dict)
        description = self.json_schema.get("description") if wrapped else None  # a bare schema's is its own
        return ResponseFormat(
            "json_schema",
            schema=self.schema_document(),
            name=self.json_schema.get("name", DEFAULT_SCHEMA_NAME),
            strict=self.json_schema.get("strict"),
            description=description if isinstance(description, str) else None,
        )


ResponseFormatIn = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


class Thinking(BaseModel):
    """Anthropic's ``thinking``: ``{"type": "enabled", "budget_tokens": N}`` or ``{"type": "disabled"}``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["enabled", "disabled"] = "enabled"
    budget_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _budget(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking: type 'enabled' needs budget_tokens")
        return self


class ThinkingConfig(BaseModel):
    """Google's ``thinking_config``: a budget (0: off, -1: the model decides) and thought summaries."""

    model_config = ConfigDict(extra="ignore")

    include_thoughts: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=-1, le=MAX_TOKENS)


class ModelSettings(BaseModel):
    """Letta's ``model_settings`` (any provider type's fields) as stored: unknown fields are ignored,
    so a record written by another version loads (requests use ``ModelSettingsInput``)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    provider_type: ProviderType | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    thinking: Thinking | None = None
    thinking_config: ThinkingConfig | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    response_format: ResponseFormatIn | None = None
    response_schema: ResponseFormatIn | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> ModelSettings:
        if self.response_format is not None and self.response_schema is not None:
            raise ValueError("send either response_format or response_schema (Google's name for it), not both")
        budget = self.thinking_config.thinking_budget if self.thinking_config else None
        if self.thinking is not None and budget is not None:
            raise ValueError("send either thinking (Anthropic's) or thinking_config.thinking_budget (Google's), not both")
        if self.strict:
            raise ValueError("strict: strict tool schemas are not supported by Convoy; leave it out or false")
        return self

    def fields(self) -> Iterator[tuple[str, Any, str]]:
        """Each setting given: (``GenerationSettings`` field or ``max_output_tokens``, value, Letta name)."""
        for name in ("temperature", "max_output_tokens", "parallel_tool_calls", "effort", "verbosity"):
            value = getattr(self, name)
            if value is not None:
                yield name, value, name
        if self.reasoning is not None and self.reasoning.reasoning_effort is not None:
            yield "reasoning_effort", self.reasoning.reasoning_effort, "reasoning.reasoning_effort"
        if self.thinking is not None:
            budget = self.thinking.budget_tokens if self.thinking.type == "enabled" else 0
            yield "thinking_budget_tokens", budget, "thinking"
        if self.thinking_config is not None:
            if self.thinking_config.thinking_budget is not None:
                yield "thinking_budget_tokens", self.thinking_config.thinking_budget, "thinking_config.thinking_budget"
            if self.thinking_config.include_thoughts is not None:
                yield "include_thoughts", self.thinking_config.include_thoughts, "thinking_config.include_thoughts"
        for name in ("response_format", "response_schema"):
            given = getattr(self, name)
            if given is not None:
                fmt = given.neutral() if isinstance(given, JsonSchemaFormat) else ResponseFormat(given.type)
                yield "response_format", fmt, name


# Every field of every Letta provider type's ``model_settings`` (letta_client's ``*ModelSettings``),
# with the keys of those that are objects. ``json_schema`` is free-form (OpenAI's wrapper, or a bare
# JSON Schema) and is not looked into.
_FORMAT_KEYS = frozenset({"type", "json_schema"})
LETTA_FIELDS: dict[str, frozenset[str] | None] = {
    "provider_type": None, "temperature": None, "max_output_tokens": None, "parallel_tool_calls": None,
    "reasoning": frozenset({"reasoning_effort"}), "effort": None, "verbosity": None, "strict": None,
    "thinking": frozenset({"type", "budget_tokens", "clear_thinking"}),
    "thinking_config": frozenset({"include_thoughts", "thinking_budget"}),
    "response_format": _FORMAT_KEYS, "response_schema": _FORMAT_KEYS, "tool_call_parser": None,
}  # fmt: skip
# Letta's fields that Convoy cannot honour, refused when not null (null, their default, is dropped).
UNHONOURED: dict[tuple[str, ...], str] = {
    ("tool_call_parser",): "SGLang's tool-call parser is chosen where SGLang is started (--tool-call-parser); "
    "Convoy reads the tool calls the server returns. Leave it out",
    ("thinking", "clear_thinking"): "Z.ai's preserved-thinking switch; Convoy sends it to no provider. Leave it out",
}


class ModelSettingsInput(ModelSettings):
    """``model_settings`` as a request sends them: any key that is not a Letta field (``LETTA_FIELDS``)
    is a 422 naming it, as is a Letta field Convoy cannot honour (``UNHONOURED``) that asks for something."""

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, ModelSettings):  # built by Convoy (chat completions' fields): known fields only
            return data.model_dump(exclude_unset=True)
        if not isinstance(data, dict):
            return data  # pydantic's own error for a non-object
        unknown = [repr(key) for key in data if key not in LETTA_FIELDS]
        for key, keys in LETTA_FIELDS.items():
            value = data.get(key)
            if keys is not None and isinstance(value, dict):
                unknown += [f"'{key}.{inner}' ({key} has {', '.join(sorted(keys))})" for inner in value if inner not in keys]
        unknown += [f"'{key}.json_schema.{inner}' (json_schema has {', '.join(sorted(WRAPPER_KEYS))})"
                    for key in ("response_format", "response_schema") for inner in _wrapper(data.get(key)) if inner not in WRAPPER_KEYS]
        if unknown:
            raise ValueError(
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: Letta's model_settings has "
                f"{', '.join(LETTA_FIELDS)}; Convoy refuses a setting it does not know rather than run without it"
            )
        for key in ("response_format", "response_schema"):
            if not isinstance(_wrapper(data.get(key)).get("description", ""), str):
                raise ValueError(f"{key}.json_schema.description must be a string")
        for path, why in UNHONOURED.items():
            data = _without_null(data, path, path, why)
        return data


def _wrapper(response_format: Any) -> dict[str, Any]:
    """A ``json_schema`` format's OpenAI wrapper (``{"name", "schema", ...}``); {} for anything else
    (a bare schema's keys are the schema's own)."""
    inner = response_format.get("json_schema") if isinstance(response_format, dict) else None
    return inner if isinstance(inner, dict) and isinstance(inner.get("schema"), dict) else {}


def _without_null(data: dict[str, Any], path: tuple[str, ...], rest: tuple[str, ...], why: str) -> dict[str, Any]:
    """``data`` without the key ``rest`` leads to when it is null (a copy: the caller's dict stays as
    it was); a value there is refused with ``why``, naming ``path``."""
    head, *below = rest
    if head not in data:
        return data
    if below:
        inner = data[head]
        return {**data, head: _without_null(inner, path, tuple(below), why)} if isinstance(inner, dict) else data
    if data[head] is not None:
        raise ValueError(f"{'.'.join(path)}: {why}")
    return {k: v for k, v in data.items() if k != head}


@dataclass(frozen=True, slots=True)
class Chosen:
    value: Any
    name: str  # as the caller wrote it (Letta's field)
    origin: Origin


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """The settings one model request runs with, each field from the layer that set it."""

    chosen: dict[str, Chosen]
    provider_types: tuple[tuple[Origin, str], ...] = ()

    @property
    def max_output_tokens(self) -> int | None:
        chosen = self.chosen.get("max_output_tokens")
        return chosen.value if chosen else None

    def generation(self) -> GenerationSettings:
        return GenerationSettings(**{k: c.value for k, c in self.chosen.items() if k != "max_output_tokens"})

    def describe(self, field: str) -> str:
        """How an error names ``field``: ``model_settings.thinking (set on the agent)``."""
        chosen = self.chosen.get(field)
        if chosen is None:
            return f"model_settings.{field}"
        where = {"request": "in this request", "conversation": "on the conversation", "agent": "on the agent"}[chosen.origin]
        prefix = "" if chosen.name == "max_tokens" else "model_settings."  # the agent's own max_tokens
        return f"{prefix}{chosen.name} (set {where})"

    def summary(self) -> dict[str, Any]:
        """For the step trace: each setting in force, in Letta's words, and the layer it came from."""
        out: dict[str, Any] = {}
        for chosen in self.chosen.values():
            value = chosen.value
            if isinstance(value, ResponseFormat):
                value = {"type": value.kind, **({"name": value.name, "strict": value.strict} if value.schema else {})}
            out[chosen.name] = {"value": value, "from": chosen.origin}
        return out


def resolve(
    layers: Sequence[tuple[Origin, ModelSettings | None]], *, agent_max_tokens: int | None = None
) -> ResolvedSettings:
    """Field by field, the first layer (highest precedence first) that sets a field wins; the
    agent's ``max_tokens`` is the output limit when no layer sets ``max_output_tokens``."""
    chosen: dict[str, Chosen] = {}
    types: list[tuple[Origin, str]] = []
    for origin, settings in layers:
        if settings is None:
            continue
        if settings.provider_type is not None:
            types.append((origin, settings.provider_type))
        for field, value, name in settings.fields():
            chosen.setdefault(field, Chosen(value, name, origin))
    if "max_output_tokens" not in chosen and agent_max_tokens is not None:
        chosen["max_output_tokens"] = Chosen(agent_max_tokens, "max_tokens", "agent")
    return ResolvedSettings(chosen, tuple(types))


# Letta's ``provider_type`` for Convoy's providers (a named OpenAI-compatible server: ``openai``).
LETTA_PROVIDER_TYPES: dict[str, str | None] = {"echo": None, "anthropic": "anthropic", "google": "google_ai"}


def letta_view(settings: ModelSettings | None, provider: str, *, max_output_tokens: int | None) -> dict[str, Any] | None:
    """An agent's ``model_settings`` as Letta's ``AgentState`` shows them: what was set, with the
    provider's ``provider_type`` and the output limit in force."""
    view = settings.model_dump(mode="json", exclude_none=True) if settings else {}
    provider_type = LETTA_PROVIDER_TYPES.get(provider, "openai")
    if provider_type and "provider_type" not in view:
        view["provider_type"] = provider_type
    if max_output_tokens is not None:
        view["max_output_tokens"] = max_output_tokens
    return view or None
