"""Convoy's normalized model events, and the provider-neutral request they answer.

Every adapter turns its provider's stream into these events; the wire items a client sees are
built from them only (``runtime/steps.py``), never from provider-specific code, so a new provider
is one adapter and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Why a model response ended, in Convoy's words:
# - end_turn: a normal, complete answer;  max_tokens: cut by the output-token limit;
# - tool_calls: the model asks for tools;  content_filter: the provider's safety system cut it;
# - refusal: the model declined (the refusal text is the answer).
FinishReason = Literal["end_turn", "max_tokens", "tool_calls", "content_filter", "refusal"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """Text of a refusal (OpenAI's ``refusal`` field): shown as the answer, recorded as a refusal."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of visible reasoning, its closing signature, or a redacted (encrypted) block."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(frozen=True, slots=True)
class PartSignature:
    """The provider's signature of the part of the response that follows (Gemini's ``thoughtSignature``).

    The provider requires it back on that very part. It is kept as a segment of its own, a reasoning
    message with this signature and no text, and the part it signs (the next content event) is a
    segment of its own too, never merged with its neighbours; request building gives the signature
    back on that part, or on an empty text part when nothing follows it (a signature Gemini sends at
    the end of an answer)."""

    signature: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one tool call; ``index`` tells parallel calls apart, id and name come first."""

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """The provider's id and exact model for the response (for traces)."""

    response_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    raw: str | None = None  # the provider's own word for it, kept for traces


LLMEvent = TextDelta | RefusalDelta | ReasoningDelta | PartSignature | ToolCallDelta | Usage | ResponseInfo | Finish

# Events that carry model output: the first one is the "first token".
CONTENT_EVENTS = (TextDelta, RefusalDelta, ReasoningDelta, PartSignature, ToolCallDelta)


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


@dataclass(frozen=True, slots=True)
class ReasoningBlock:
    """Reasoning to send back to the provider that produced it (Anthropic requires it with tools)."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


# One part of an assistant message, in the order the model produced it: a reasoning block (one
# with a signature and no text is a ``PartSignature`` of the part after it), a text, a tool call.
AssistantPart = ReasoningBlock | str | ToolCall


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the history sent to a model, provider-neutral.

    ``assistant`` messages may carry reasoning blocks and tool calls; ``tool`` messages answer
    one call (``tool_call_id``). ``parts`` has an assistant message's reasoning, texts and calls in
    the order they came, for providers that want each back where it was (Gemini's signatures).
    """

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: tuple[ReasoningBlock, ...] = ()
    parts: tuple[AssistantPart, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


ResponseKind = Literal["text", "json_object", "json_schema"]


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The shape asked of the answer: plain text, any JSON object, or JSON valid against ``schema``
    (``strict``: the provider must enforce it exactly, where it can be told so; ``description``: for
    the model, on OpenAI's APIs only, refused elsewhere)."""

    kind: ResponseKind
    schema: dict[str, Any] | None = None
    name: str = "response"
    strict: bool | None = None
    description: str | None = None  # what the answer is for (OpenAI's json_schema.description)


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """How the model should answer, provider-neutral; None leaves a field to the provider's default.

    Each adapter maps a field to its provider's own parameter, and only fields that provider has:
    what a provider or model cannot do is refused before a request is accepted
    (``runtime.providers.capabilities``), never dropped silently here.
    """

    temperature: float | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None  # OpenAI's reasoning effort: none, minimal, low, medium, high, xhigh
    effort: str | None = None  # Anthropic's output effort: low, medium, high, xhigh, max
    thinking_budget_tokens: int | None = None  # Anthropic's and Gemini's thinking budget; 0: off, -1: Gemini decides
    include_thoughts: bool | None = None  # Gemini's thought summaries
    verbosity: str | None = None  # OpenAI GPT-5's verbosity: low, medium, high
    response_format: ResponseFormat | None = None


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    system: str
    messages: list[ChatMessage] = field(default_factory=list)
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
