"""OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, llama.cpp, LM Studio, ...).

Reads the stream through the official ``openai`` SDK, each chunk as the JSON object it is. Beyond
OpenAI's own fields it understands the reasoning deltas compatible servers add
(``reasoning_content``, ``reasoning``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion
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
    RefusalDelta,
    ResponseInfo,
    TextDelta,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _message(m: ChatMessage) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    if m.role == "assistant" and m.tool_calls:
        return {
            "role": "assistant",
            "content": m.content or None,
            "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ],
        }
    return {"role": m.role, "content": m.content}


class _CallIndexes:
    """Which call of the response a tool-call delta belongs to.

    OpenAI numbers every delta with ``index``. Some compatible servers (Gemini's OpenAI endpoint,
    older Ollama, mistral.rs, proxies) leave it out or send ``null``; keyed by a missing index,
    parallel calls would fail the step or merge into one call with invalid arguments. Without an
    index, a delta with an ``id`` not seen before opens a new call (numbered after every call so
    far), one with a known ``id`` continues that call, and one without an ``id`` continues the
    latest call."""

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}
        self._latest: int | None = None
        self._next = 0

    def of(self, call: dict[str, Any]) -> int:
        index, call_id = call.get("index"), call.get("id") or None
        if not isinstance(index, int):
            if isinstance(call_id, str) and call_id in self._by_id:
                index = self._by_id[call_id]
            elif call_id is None and self._latest is not None:
                index = self._latest
            else:
                index = self._next
        if isinstance(call_id, str):
            self._by_id.setdefault(call_id, index)
        self._latest = index
        self._next = max(self._next, index + 1)
        return index


def _settings(request: LLMRequest) -> dict[str, Any]:
    """The model settings as Chat Completions parameters (``parallel_tool_calls`` only with tools:
    OpenAI refuses it without)."""
    s = request.settings
    params: dict[str, Any] = {}
    if s.temperature is not None:
        params["temperature"] = s.temperature
    if s.reasoning_effort is not None:
        params["reasoning_effort"] = s.reasoning_effort
    if s.verbosity is not None:
        params["verbosity"] = s.verbosity
    if s.parallel_tool_calls is not None and request.tools:
        params["parallel_tool_calls"] = s.parallel_tool_calls
    rf = s.response_format
    if rf is not None:
        if rf.kind == "json_schema":
            schema: dict[str, Any] = {"name": rf.name, "schema": rf.schema}
            if rf.strict is not None:
                schema["strict"] = rf.strict
            if rf.description is not None:
                schema["description"] = rf.description
            params["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            params["response_format"] = {"type": rf.kind}
    return params


def _usage(usage: dict[str, Any]) -> Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        cached_input_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
    )


class OpenAIChatAdapter:
    def __init__(self, client: AsyncOpenAI, *, provider: str, limit_field: str = "max_completion_tokens") -> None:
        self._client = client
        self._provider = provider
        # OpenAI's own models want max_completion_tokens; compatible servers know max_tokens.
        self._limit_field = limit_field

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [_message(m) for m in request.messages]
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_output_tokens:
            body[self._limit_field] = request.max_output_tokens
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
        body.update(_settings(request))
        return body

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        # ``post`` sends the body as built: ``chat.completions.create`` first runs the SDK's
        # parameter transform over every message, which costs ~0.3 ms per message (25 ms for 80)
        # before the request even leaves. Chunks are read as the SDK decodes them, JSON objects
        # (``AsyncStream[object]``): building its typed model for each cost ~0.4 ms of CPU per
        # token (measured), and it validates nothing. Parsing, errors (a chunk carrying ``error``
        # included), retries and auth stay the SDK's.
        stream: AsyncStream[Any] = await self._client.post(
            "/chat/completions",
            content=to_json(self.payload(request)),  # pydantic-core's encoder: ~4x json's speed
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=AsyncStream[object],
        )
        finish: str | None = None
        refused = False
        indexes = _CallIndexes()
        try:
            require_event_stream(stream.response, self._provider)
            described = False
            async for chunk in stream:
                if not described:
                    described = True
                    yield ResponseInfo(chunk.get("id") or "", chunk.get("model") or "")
                if chunk.get("usage"):
                    yield _usage(chunk["usage"])
                for choice in chunk["choices"][:1]:  # a chunk without choices is not a chunk
                    delta = choice.get("delta") or {}
                    # Compatible servers' reasoning field.
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if isinstance(reasoning, str) and reasoning:
                        yield ReasoningDelta(reasoning)
                    if delta.get("content"):
                        yield TextDelta(delta["content"])
                    if delta.get("refusal"):
                        refused = True
                        yield RefusalDelta(delta["refusal"])
                    for call in delta.get("tool_calls") or ():
                        function = call.get("function") or {}
                        yield ToolCallDelta(
                            index=indexes.of(call),
                            call_id=call.get("id"),
                            name=function.get("name"),
                            arguments=function.get("arguments") or "",
                        )
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        finally:
            await stream.close()
        if finish is None:
            raise LLMUnavailableError(f"{self._provider}: the stream ended before the model finished its response")
        reason: FinishReason = "refusal" if refused and finish == "stop" else _FINISH.get(finish, "end_turn")
        yield Finish(reason, raw=finish)
