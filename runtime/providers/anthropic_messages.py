"""Anthropic Messages API (``anthropic/<model>``), streamed through the official SDK.

Thinking blocks keep their signatures and redacted blocks their data, because Anthropic requires
them back unchanged when a tool result follows. Usage arrives in two parts: input and cache
counts in ``message_start``, the cumulative output count in ``message_delta``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from anthropic import AsyncAnthropic, AsyncStream
from anthropic.types import Message
from pydantic_core import to_json

from runtime.errors import LLMUnavailableError
from runtime.providers.errors import require_event_stream
from runtime.providers.events import (
    ChatMessage,
    Finish,
    FinishReason,
    LLMEvent,
    LLMRequest,
    ReasoningDelta,
    ResponseInfo,
    TextDelta,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "tool_use": "tool_calls",
    "refusal": "content_filter",  # the streaming classifier stopped the answer
}


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_unparsed_arguments": text}
    return value if isinstance(value, dict) else {"value": value}


def _assistant_content(m: ChatMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for r in m.reasoning:
        if r.redacted:
            blocks.append({"type": "redacted_thinking", "data": r.redacted})
        elif r.signature:  # unsigned reasoning (another provider's) cannot be sent back
            blocks.append({"type": "thinking", "thinking": r.text, "signature": r.signature})
    if m.content.strip():  # Anthropic refuses a text block of whitespace alone (400)
        blocks.append({"type": "text", "text": m.content})
    blocks += [{"type": "tool_use", "id": c.call_id, "name": c.name, "input": _arguments(c.arguments)} for c in m.tool_calls]
    return blocks


def _messages(history: list[ChatMessage]) -> list[dict[str, Any]]:
    """Provider-neutral history -> Anthropic turns; tool results join one user turn."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content, "is_error": m.is_error}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant":
            content = _assistant_content(m)
            if content:  # an answer of whitespace alone (or of unsigned reasoning alone) says nothing Anthropic takes
                out.append({"role": "assistant", "content": content})
        else:
            out.append({"role": "user", "content": m.content})
    return out


class AnthropicAdapter:
    def __init__(self, client: AsyncAnthropic, *, provider: str, default_max_tokens: int) -> None:
        self._client = client
        self._provider = provider
        self._default_max_tokens = default_max_tokens

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_output_tokens or self._default_max_tokens,
            "messages": _messages(request.messages),
            "stream": True,
        }
        if request.system:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
        body.update(_settings(request))
        return body

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        # ``post`` with events as JSON objects, as the OpenAI adapters do (see openai_chat.py):
        # the SDK still decodes the stream, raises its ``event: error`` and handles auth and retries.
        stream: AsyncStream[Any] = await self._client.post(
            "/v1/messages", content=to_json(self.payload(request)), cast_to=Message, stream=True, stream_cls=AsyncStream[object]
        )
        input_usage: dict[str, Any] | None = None
        finish: str | None = None
        stopped = False
        try:
            require_event_stream(stream.response, self._provider)
            async for event in stream:
                kind = event["type"]
                if kind == "message_start":
                    message = event["message"]
                    input_usage = message.get("usage") or {}
                    yield ResponseInfo(message.get("id") or "", message.get("model") or "")
                elif kind == "content_block_start":
                    block = event["content_block"]
                    block_type = block["type"]
                    if block_type == "tool_use":
                        yield ToolCallDelta(event["index"], call_id=block.get("id"), name=block.get("name"))
                    elif block_type == "redacted_thinking":
                        yield ReasoningDelta(redacted=block["data"])
                    elif block_type == "text" and block.get("text"):
                        yield TextDelta(block["text"])
                    elif block_type == "thinking" and block.get("thinking"):
                        yield ReasoningDelta(block["thinking"])
                elif kind == "content_block_delta":
                    delta = event["delta"]
                    delta_type = delta["type"]
                    if delta_type == "text_delta":
                        yield TextDelta(delta["text"])
                    elif delta_type == "thinking_delta":
                        yield ReasoningDelta(delta["thinking"])
                    elif delta_type == "signature_delta":
                        yield ReasoningDelta(signature=delta["signature"])
                    elif delta_type == "input_json_delta":
                        yield ToolCallDelta(event["index"], arguments=delta["partial_json"])
                elif kind == "message_delta":
                    finish = (event.get("delta") or {}).get("stop_reason") or finish
                    yield _usage(input_usage, event.get("usage"))
                elif kind == "message_stop":
                    stopped = True
        finally:
            await stream.close()
        if not stopped or finish is None:
            raise LLMUnavailableError(f"{self._provider}: the stream ended before message_stop")
        yield Finish(_FINISH.get(finish, "end_turn"), raw=finish)


def _settings(request: LLMRequest) -> dict[str, Any]:
    """The model settings as Messages parameters: ``thinking`` (a budget, or disabled for 0),
    ``output_config`` (``effort``; a JSON schema as ``format``: Anthropic's structured outputs), and
    no parallel tool use as ``tool_choice.disable_parallel_tool_use`` (only with tools)."""
    s = request.settings
    params: dict[str, Any] = {}
    if s.temperature is not None:
        params["temperature"] = s.temperature
    if s.thinking_budget_tokens is not None:
        budget = s.thinking_budget_tokens
        params["thinking"] = {"type": "enabled", "budget_tokens": budget} if budget > 0 else {"type": "disabled"}
    output: dict[str, Any] = {}
    if s.effort is not None:
        output["effort"] = s.effort
    rf = s.response_format
    if rf is not None and rf.kind == "json_schema":
        output["format"] = {"type": "json_schema", "schema": rf.schema}
    if output:
        params["output_config"] = output
    if s.parallel_tool_calls is False and request.tools:
        params["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
    return params


def _usage(start: dict[str, Any] | None, final: dict[str, Any] | None) -> Usage:
    """Input counts from message_start (message_delta may repeat them), output from message_delta."""

    def pick(name: str) -> int:
        for source in (final, start):
            value = source.get(name) if source else None
            if value is not None:
                return int(value)
        return 0

    cache_read, cache_write = pick("cache_read_input_tokens"), pick("cache_creation_input_tokens")
    return Usage(
        prompt_tokens=pick("input_tokens") + cache_read + cache_write,
        completion_tokens=pick("output_tokens"),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
