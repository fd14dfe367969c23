"""Google Gemini (``google/<model>``), streamed through the official ``google-genai`` SDK, from the
Gemini Developer API (an API key) or Vertex AI (a project, Application Default Credentials).

What is guaranteed:

- **The body is Convoy's, in the API's own JSON**, and is what the step trace records. The SDK sends
  it as ``HttpOptions.extra_body``, which it merges over the body it builds from its typed
  arguments (its ``contents`` argument is a stand-in that the body's ``contents`` replaces): building
  it through the SDK's typed models cost 14-20 ms of CPU for 80 messages (measured) before the request
  left. URL, auth, retries, SSE decoding and error raising stay the SDK's. The SDK's automatic
  function calling is off: Convoy runs tools itself.
- **Thought signatures go back on the part they came with, unchanged.** Each part's
  ``thoughtSignature`` becomes a ``PartSignature`` event, so the history keeps the signed part whole
  (``events.PartSignature``), and the request puts the signature back on that part.
- **Function calls get stable, unique ids.** Gemini sends whole calls (several in one chunk as the
  case may be) and usually no id: a call without one is named ``gemini-<responseId>-<n>`` (its
  position in the response); such made-up ids never go back to Gemini, which then pairs calls and
  responses by name and order (the ids it did send go back on the call and on its response).
- **Finish reasons:** ``STOP`` -> end_turn (tool_calls when the response called a function),
  ``MAX_TOKENS`` -> max_tokens, the safety and policy filters (and a prompt blocked by
  ``promptFeedback.blockReason``) -> content_filter, an invalid or unexpected function call ->
  ``LLMInvalidResponseError``; a stream that ends without one -> ``LLMUnavailableError``.
- **Closing the stream closes the HTTP response at once.** The SDK's stream is a chain of async
  generators that leaves the innermost one (which owns the response) to the garbage collector when
  the outer one is closed; an httpx event hook hands this stream's responses to the adapter, which
  closes them itself.
- **Usage:** prompt = ``promptTokenCount`` (+ ``toolUsePromptTokenCount``), completion =
  ``candidatesTokenCount`` + ``thoughtsTokenCount`` (as OpenAI counts reasoning in completion),
  cached = ``cachedContentTokenCount``, reasoning = ``thoughtsTokenCount``.

Chunks are the SDK's typed ``GenerateContentResponse`` models: google-genai has no public way to read
a stream as JSON objects (measured: ~0.2 ms of CPU per chunk, against ~5 µs for ``json.loads``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextvars import ContextVar
from typing import Any

import httpx2
from google import genai
from google.genai import types

from runtime.errors import LLMBadRequestError, LLMInvalidResponseError, LLMUnavailableError
from runtime.providers.capabilities import gemini_version
from runtime.providers.errors import require_event_stream
from runtime.providers.events import (
    ChatMessage,
    Finish,
    FinishReason,
    LLMEvent,
    LLMRequest,
    PartSignature,
    ReasoningBlock,
    ReasoningDelta,
    ResponseInfo,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from runtime.providers.gemini_schema import function_parameters

API_VERSION = "v1beta"  # the Gemini API version whose features Convoy sends (signatures, thoughts)
SYNTHETIC_CALL_ID = "gemini-"  # prefix of the ids Convoy gives calls Gemini sent without one
# The SDK's backoff between retries (it reads neither Retry-After nor Gemini's RetryInfo): the
# openai and anthropic SDKs' schedule, 0.5 s doubling up to 8 s, plus up to 0.25 s of jitter.
RETRY_INITIAL_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0
RETRY_JITTER_S = 0.25
JSON_SCHEMA_SINCE = 2.5  # Gemini takes a plain JSON Schema (responseJsonSchema) from this version on
_STAND_IN = "."  # the SDK insists on typed contents; the body's own replace them

_FINISH: dict[str, FinishReason] = {
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    **dict.fromkeys(
        (
            "SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR", "PUP_LIMITED_DISABLED",
        ),
        "content_filter",
    ),
}  # fmt: skip
# Finishes that say the model's output cannot be used; anything else unknown ends the turn.
_INVALID = {"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "MALFORMED_RESPONSE"}
_REFUSED_REQUEST = {"MISSING_THOUGHT_SIGNATURE"}

# The HTTP responses of the stream being read in this task (see ``_hold``).
_RESPONSES: ContextVar[list[Any] | None] = ContextVar("convoy_gemini_responses", default=None)


def make_client(
    *,
    api_key: str | None,
    base_url: str | None,
    vertex_project: str | None,
    vertex_location: str,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_retries: int,
) -> genai.Client:
    """One SDK client: Vertex AI when ``vertex_project`` is set, else the Gemini Developer API.

    The SDK gives a request one timeout for connect and read alike; an httpx request hook sets
    Convoy's connect and read timeouts instead, and a response hook hands each response to the
    stream reading it (``_hold``). Retries: ``max_retries`` after the first attempt, on the SDK's
    retryable statuses (408, 429, 5xx) and connection errors. The transport is given explicitly (the
    SDK's own default, httpx2): with ``aiohttp`` installed, which Ray's metrics agent needs, the SDK
    would otherwise read streams through aiohttp, where these hooks do not exist.
    """
    limits = {"connect": connect_timeout_s, "read": read_timeout_s, "write": connect_timeout_s, "pool": connect_timeout_s}

    async def deadlines(request: Any) -> None:
        request.extensions = {**request.extensions, "timeout": limits}

    http = types.HttpOptions(
        base_url=base_url,
        api_version=None if vertex_project else API_VERSION,
        retry_options=types.HttpRetryOptions(
            attempts=1 + max_retries,
            initial_delay=RETRY_INITIAL_DELAY_S,
            max_delay=RETRY_MAX_DELAY_S,
            jitter=RETRY_JITTER_S,
        ),
        async_client_args={
            "event_hooks": {"request": [deadlines], "response": [_hold]},
            "transport": httpx2.AsyncHTTPTransport(),
        },
    )
    if vertex_project:
        return genai.Client(vertexai=True, project=vertex_project, location=vertex_location, http_options=http)
    return genai.Client(vertexai=False, api_key=api_key, http_options=http)


async def _hold(response: Any) -> None:
    held = _RESPONSES.get()
    if held is not None:
        held.append(response)


class GeminiAdapter:
    def __init__(self, client: genai.Client, *, provider: str, include_thoughts: bool) -> None:
        self._models = client.aio.models
        self._provider = provider
        self._include_thoughts = include_thoughts

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        generation = self._generation(request)
        body: dict[str, Any] = {"contents": contents(request.messages)}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        if request.tools:
            declarations = []
            for tool in request.tools:
                declaration: dict[str, Any] = {"name": tool.name, "description": tool.description}
                parameters = function_parameters(tool.parameters)
                if parameters is not None:
                    declaration["parameters"] = parameters
                declarations.append(declaration)
            body["tools"] = [{"functionDeclarations": declarations}]
        if generation:
            body["generationConfig"] = generation
        return body

    def _generation(self, request: LLMRequest) -> dict[str, Any]:
        """``generationConfig``: the output limit, ``temperature``, ``thinkingConfig`` (thought
        summaries, ``thinkingBudget``) and JSON output (``responseMimeType``, with the schema as
        ``responseJsonSchema`` on Gemini 2.5 and later, as ``responseSchema`` in Gemini's dialect before)."""
        s = request.settings
        generation: dict[str, Any] = {}
        if request.max_output_tokens:
            generation["maxOutputTokens"] = request.max_output_tokens
        if s.temperature is not None:
            generation["temperature"] = s.temperature
        thinking: dict[str, Any] = {}
        if s.include_thoughts if s.include_thoughts is not None else self._include_thoughts:
            thinking["includeThoughts"] = True
        if s.thinking_budget_tokens is not None:
            thinking["thinkingBudget"] = s.thinking_budget_tokens
        if thinking:
            generation["thinkingConfig"] = thinking
        rf = s.response_format
        if rf is not None:
            generation["responseMimeType"] = "text/plain" if rf.kind == "text" else "application/json"
            if rf.kind == "json_schema" and rf.schema is not None:
                version = gemini_version(request.model)
                if version is None or version >= JSON_SCHEMA_SINCE:
                    generation["responseJsonSchema"] = rf.schema
                elif (dialect := function_parameters(rf.schema)) is not None:  # an object schema (older models)
                    generation["responseSchema"] = dialect
        return generation

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        config: types.GenerateContentConfigDict = {
            "http_options": {"extra_body": self.payload(request)},
            "automatic_function_calling": {"disable": True},
        }
        held: list[Any] = []
        _RESPONSES.set(held)  # the SDK sends this stream's requests from this task (see _hold)
        chunks: AsyncIterator[types.GenerateContentResponse] | None = None
        reader = _Reader(self._provider)
        try:
            chunks = await self._models.generate_content_stream(model=request.model, contents=_STAND_IN, config=config)
            async for chunk in chunks:
                for event in reader.read(chunk):
                    yield event
        finally:
            _RESPONSES.set(None)
            for response in held:
                await response.aclose()
            if chunks is not None:
                await chunks.aclose()  # type: ignore[attr-defined]  # google-genai declares an AsyncIterator, returns an async generator
        usage = reader.usage()
        if usage is not None:
            yield usage
        yield reader.finish()


class _Reader:
    """One response's chunks -> events."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._response_id: str | None = None
        self._described = False
        self._calls = 0
        self._usage: types.GenerateContentResponseUsageMetadata | None = None
        self._finish: str | None = None
        self._finish_message: str | None = None
        self._blocked: str | None = None

    def read(self, chunk: types.GenerateContentResponse) -> list[LLMEvent]:
        events: list[LLMEvent] = []
        if not self._described:
            self._described = True
            if chunk.sdk_http_response is not None:
                require_event_stream(chunk.sdk_http_response, self._provider)
            self._response_id = chunk.response_id
            events.append(ResponseInfo(chunk.response_id or "", chunk.model_version or ""))
        if chunk.usage_metadata is not None:
            self._usage = chunk.usage_metadata
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason:
            self._blocked = _word(feedback.block_reason)
        for candidate in (chunk.candidates or ())[:1]:
            content = candidate.content
            for part in (content.parts if content is not None else None) or ():
                events += self._part(part)
            if candidate.finish_reason:
                self._finish = _word(candidate.finish_reason)
                self._finish_message = candidate.finish_message
        return events

    def _part(self, part: types.Part) -> list[LLMEvent]:
        events: list[LLMEvent] = []
        if part.thought_signature:
            events.append(PartSignature(base64.b64encode(part.thought_signature).decode("ascii")))
        call = part.function_call
        if call is not None:
            call_id = call.id or f"{SYNTHETIC_CALL_ID}{self._response_id or 'response'}-{self._calls}"
            events.append(ToolCallDelta(self._calls, call_id=call_id, name=call.name or "", arguments=json.dumps(call.args or {})))
            self._calls += 1
        elif part.text:
            events.append(ReasoningDelta(part.text) if part.thought else TextDelta(part.text))
        return events

    def usage(self) -> Usage | None:
        u = self._usage
        if u is None:
            return None
        thoughts = u.thoughts_token_count
        return Usage(
            prompt_tokens=(u.prompt_token_count or 0) + (u.tool_use_prompt_token_count or 0),
            completion_tokens=(u.candidates_token_count or 0) + (thoughts or 0),
            cached_input_tokens=u.cached_content_token_count,
            reasoning_tokens=thoughts,
        )

    def finish(self) -> Finish:
        """How the response ended; raises for a response that cannot be used or that never ended."""
        if self._blocked is not None:
            return Finish("content_filter", raw=f"blockReason:{self._blocked}")
        raw = self._finish
        if raw is None:
            raise LLMUnavailableError(f"{self._provider}: the stream ended before a finish reason")
        said = f": {self._finish_message}" if self._finish_message else ""
        if raw in _INVALID:
            raise LLMInvalidResponseError(f"{self._provider}: finish reason {raw}{said}")
        if raw in _REFUSED_REQUEST:
            raise LLMBadRequestError(f"{self._provider}: finish reason {raw}{said}")
        reason = _FINISH.get(raw, "end_turn")
        return Finish("tool_calls" if reason == "end_turn" and self._calls else reason, raw=raw)


def _word(value: Any) -> str:
    """An SDK enum (or a value it did not know) as the API's own word."""
    return str(getattr(value, "value", value))


def contents(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Provider-neutral history -> Gemini ``contents``: roles ``user`` and ``model``; tool results are
    ``functionResponse`` parts of a user turn; adjacent turns of one role are one content."""
    names = {c.call_id: c.name for m in messages for c in m.tool_calls}
    out: list[dict[str, Any]] = []

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})

    for m in messages:
        if m.role == "tool":
            add("user", [_function_response(m, names.get(m.tool_call_id or "", m.tool_name or ""))])
        elif m.role == "assistant":
            add("model", _model_parts(m))
        else:
            add("user", [{"text": m.content}])
    return out


def _function_response(m: ChatMessage, name: str) -> dict[str, Any]:
    response: dict[str, Any] = {"name": name, "response": {"error" if m.is_error else "output": m.content}}
    if m.tool_call_id and not m.tool_call_id.startswith(SYNTHETIC_CALL_ID):
        response["id"] = m.tool_call_id
    return {"functionResponse": response}


def _model_parts(m: ChatMessage) -> list[dict[str, Any]]:
    """An assistant message's parts in their order; a ``PartSignature`` (a reasoning block with a
    signature and no text) goes on the part after it. Reasoning with text is sent as a thought part
    without its signature (a signature on reasoning text is another provider's); redacted blocks
    (Anthropic's) are left out."""
    ordered = m.parts or (*m.reasoning, *([m.content] if m.content else []), *m.tool_calls)
    parts: list[dict[str, Any]] = []
    signature: str | None = None
    for item in ordered:
        if isinstance(item, ReasoningBlock):
            if item.redacted is not None:
                continue
            if not item.text:
                if item.signature:
                    if signature is not None:  # a signed part with nothing in it
                        parts.append({"text": "", "thoughtSignature": signature})
                    signature = item.signature
                continue
            part: dict[str, Any] = {"text": item.text, "thought": True}
        elif isinstance(item, ToolCall):
            call: dict[str, Any] = {"name": item.name, "args": _arguments(item.arguments)}
            if item.call_id and not item.call_id.startswith(SYNTHETIC_CALL_ID):
                call["id"] = item.call_id
            part = {"functionCall": call}
        else:
            part = {"text": item}
        if signature is not None:
            part["thoughtSignature"] = signature
            signature = None
        parts.append(part)
    if signature is not None:
        parts.append({"text": "", "thoughtSignature": signature})
    return parts


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_unparsed_arguments": text}
    return value if isinstance(value, dict) else {"value": value}

