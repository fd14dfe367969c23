"""Convoy's normalized model events: what every provider adapter turns its stream into.

The wire items a client sees are built from these events only (``runtime/wire.py``), never
from provider-specific code, so a new provider is one adapter and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["end_turn", "max_tokens", "tool_calls", "content_filter", "refusal"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
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
class Finish:
    reason: FinishReason


LLMEvent = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the history sent to a model, provider-neutral."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    system: str
    messages: list[ChatMessage] = field(default_factory=list)
    max_tokens: int | None = None
