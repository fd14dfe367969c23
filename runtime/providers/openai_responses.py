"""OpenAI Responses API (``openai-responses/<model>``), streamed through the official SDK.

Convoy owns the conversation history, so requests are stateless (``store: false``) and carry
the whole input each time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from openai import AsyncOpenAI, AsyncStream
from openai.types.responses import Response
from pydantic_core import to_json

from runtime.errors import LLMUnavailableError
from runtime.providers.errors import classify, require_event_stream
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

_INCOMPLETE: dict[str, FinishReason] = {"max_output_tokens": "max_tokens", "content_filter": "content_filter"}


def _items(m: ChatMessage) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "function_call_output", "call_id": m.tool_call_id, "output": m.content}]
    items: list[dict[str, Any]] = []
    if m.content or not m.tool_calls:
        items.append({"role": m.role, "content": m.content})
    items += [
        {"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
    ]
    return items


def _settings(request: LLMRequest) -> dict[str, Any]:
    """The model settings as Responses parameters: ``reasoning.effort``, ``text.format`` and
    ``text.verbosity``; ``parallel_tool_calls`` only with tools."""
    s = request.settings
    params: dict[str, Any] = {}
    if s.temperature is not None:
        params["temperature"] = s.temperature
    if s.reasoning_effort is not None:
        params["reasoning"] = {"effort": s.reasoning_effort}
    if s.parallel_tool_calls is not None and request.tools:
        params["parallel_tool_calls"] = s.parallel_tool_calls
    text: dict[str, Any] = {}
    rf = s.response_format
    if rf is not None:
        text["format"] = {"type": rf.kind}
        if rf.kind == "json_schema":
            text["format"].update({"name": rf.name, "schema": rf.schema})
            if rf.strict is not None:
                text["format"]["strict"] = rf.strict
            if rf.description is not None:
                text["format"]["description"] = rf.description
    if s.verbosity is not None:
        text["verbosity"] = s.verbosity
    if text:
        params["text"] = text
    return params


def _usage(usage: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=usage.get("input_tokens") or 0,
        completion_tokens=usage.get("output_tokens") or 0,
        cached_input_tokens=(usage.get("input_tokens_details") or {}).get("cached_tokens"),
        reasoning_tokens=(usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
    )


class OpenAIResponsesAdapter:
    def __init__(self, client: AsyncOpenAI, *, provider: str) -> None:
        self._client = client
        self._provider = provider

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "input": [item for m in request.messages for item in _items(m)],
            "stream": True,
            "store": False,
        }
        if request.system:
            body["instructions"] = request.system
        if request.max_output_tokens:
            body["max_output_tokens"] = request.max_output_tokens
        if request.tools:
            body["tools"] = [
                {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
                for t in request.tools
            ]
        body.update(_settings(request))
        return body

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        # ``post`` rather than ``responses.create``, events as JSON objects: see openai_chat.py.
        stream: AsyncStream[Any] = await self._client.post(
            "/responses", content=to_json(self.payload(request)), cast_to=Response, stream=True, stream_cls=AsyncStream[object]
        )
        finish: Finish | None = None
        refused = called = False
        try:
            require_event_stream(stream.response, self._provider)
            async for event in stream:
                kind = event["type"]
                if kind == "response.created":
                    yield ResponseInfo(event["response"].get("id") or "", event["response"].get("model") or "")
                elif kind == "response.output_text.delta":
                    yield TextDelta(event["delta"])
                elif kind == "response.refusal.delta":
                    refused = True
                    yield RefusalDelta(event["delta"])
                elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
                    yield ReasoningDelta(event["delta"])
                elif kind == "response.output_item.added" and event["item"].get("type") == "function_call":
                    called = True
                    item = event["item"]
                    yield ToolCallDelta(
                        event["output_index"], call_id=item.get("call_id"), name=item.get("name"), arguments=item.get("arguments") or ""
                    )
                elif kind == "response.function_call_arguments.delta":
                    yield ToolCallDelta(event["output_index"], arguments=event["delta"])
                elif kind in ("response.completed", "response.incomplete"):
                    response = event["response"]
                    if response.get("usage"):
                        yield _usage(response["usage"])
                    if kind == "response.incomplete":
                        raw = (response.get("incomplete_details") or {}).get("reason")
                        finish = Finish(_INCOMPLETE.get(raw or "", "max_tokens"), raw=f"incomplete:{raw}")
                    else:
                        reason: FinishReason = "tool_calls" if called else "refusal" if refused else "end_turn"
                        finish = Finish(reason, raw="completed")
                elif kind == "response.failed":
                    error = event["response"].get("error") or {}
                    raise classify(self._provider, None, error.get("code"), error.get("message"))
                elif kind == "error":
                    raise classify(self._provider, None, event.get("code"), event.get("message"))
        finally:
            await stream.close()
        if finish is None:
            raise LLMUnavailableError(f"{self._provider}: the stream ended before the response completed")
        yield finish
