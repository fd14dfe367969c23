"""OpenAI Chat Completions streams (and every compatible server's), and OpenAI's error bodies."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from bench.upstream.script import Frame, Status, ToolCall, Usage, data, obfuscation, rand


def openai_error(
    code: int,
    message: str,
    type: str,
    err_code: str | None = None,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Status:
    """An OpenAI error response: ``{"error": {"message", "type", "param", "code"}}`` plus ``x-request-id``."""
    body = {"error": {"message": message, "type": type, "param": param, "code": err_code}}
    return Status(code, body, {"x-request-id": "req_" + secrets.token_hex(16), **(headers or {})})


def openai_context_length_error(maximum: int = 128000, requested: int = 130000) -> Status:
    """OpenAI's 400 for an over-long prompt (``code: context_length_exceeded``)."""
    message = (
        f"This model's maximum context length is {maximum} tokens. However, your messages resulted in "
        f"{requested} tokens. Please reduce the length of the messages."
    )
    return openai_error(400, message, "invalid_request_error", "context_length_exceeded", param="messages")




_DONE = b"data: [DONE]\n\n"


def _chat_stream(
    model: str,
    deltas: Iterable[dict[str, Any]],
    finish: str,
    usage: Usage | None,
    include_usage_chunk: bool,
    obfuscate: bool,
) -> list[Frame]:
    base = {
        "id": "chatcmpl-" + rand(29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }

    def chunk(choices: list[dict[str, Any]], usage_field: dict[str, Any] | None) -> bytes:
        payload: dict[str, Any] = {**base, "choices": choices}
        if usage is not None:
            payload["usage"] = usage_field
        if obfuscate:
            payload["obfuscation"] = obfuscation(choices[0]["delta"] if choices else payload, 11)
        return data(payload)

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    usage_body = None
    if usage is not None:
        usage_body = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": usage.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    frames: list[Frame] = [chunk([choice(delta)], None) for delta in deltas]
    if include_usage_chunk:
        frames.append(chunk([choice({}, finish)], None))
        if usage_body is not None:
            frames.append(chunk([], usage_body))
    else:
        frames.append(chunk([choice({}, finish)], usage_body))
    frames.append(_DONE)
    return frames


def chat_text(
    model: str,
    pieces: Sequence[str],
    *,
    finish: str = "stop",
    reasoning: Sequence[str] = (),
    usage: Usage | None = Usage(),
    include_usage_chunk: bool = True,
    obfuscate: bool = True,
) -> list[Frame]:
    """A Chat Completions text stream (``finish``: "stop", "length", "content_filter", ...).

    ``reasoning`` pieces come first as ``delta.reasoning_content`` (vLLM/DeepSeek-style compatible
    servers). With ``usage`` every chunk carries ``"usage": null`` and a final ``choices: []`` chunk
    carries the counts (OpenAI with ``stream_options.include_usage``); ``include_usage_chunk=False``
    instead puts the counts on the finish chunk (what several compatible servers do). ``usage=None``
    is a stream without usage at all.
    """
    deltas = [{"role": "assistant", "content": "", "refusal": None}]
    deltas += [{"content": None, "reasoning_content": piece} for piece in reasoning]
    deltas += [{"content": piece} for piece in pieces]
    return _chat_stream(model, deltas, finish, usage, include_usage_chunk, obfuscate)


async def chat_live(model: str, pieces: AsyncIterator[str], *, completion_tokens: int, response_id: str = "") -> AsyncIterator[bytes]:
    """A Chat Completions text stream written as its ``pieces`` come (the benchmarks' paced models):
    the role chunk, a chunk per piece, the finish chunk, the usage chunk, ``[DONE]``. Lean (no
    obfuscation, one ``json.dumps`` per chunk): a benchmark's upstream shares the machine with what
    it measures."""
    created = int(time.time())
    response_id = response_id or "chatcmpl-" + rand(29)

    def chunk(delta: dict[str, object], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        doc = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": usage,
        }
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for piece in pieces:
        yield chunk({"content": piece})
    yield chunk({}, finish="stop")
    yield chunk({}, usage={"prompt_tokens": 1, "completion_tokens": completion_tokens, "total_tokens": completion_tokens + 1})
    yield _DONE


def chat_length(model: str, pieces: Sequence[str], *, usage: Usage | None = Usage()) -> list[Frame]:
    """A Chat Completions stream cut short by ``max_tokens`` (``finish_reason: "length"``)."""
    return chat_text(model, pieces, finish="length", usage=usage)


def chat_refusal(model: str, pieces: Sequence[str], *, usage: Usage | None = Usage()) -> list[Frame]:
    """A Chat Completions refusal: ``delta.refusal`` fragments with ``content: null``, finish "stop"."""
    deltas = [{"role": "assistant", "content": None, "refusal": ""}]
    deltas += [{"refusal": piece} for piece in pieces]
    return _chat_stream(model, deltas, "stop", usage, True, True)


def chat_tool_calls(
    model: str,
    calls: Sequence[ToolCall],
    *,
    content: Sequence[str] = (),
    interleave: bool = False,
    finish: str = "tool_calls",
    usage: Usage | None = Usage(),
) -> list[Frame]:
    """A Chat Completions stream of (parallel) tool calls, ``finish_reason: "tool_calls"`` (or
    ``finish="length"``: the token limit cut the last call's arguments).

    Each call opens with ``{index, id, type, function: {name, arguments: ""}}`` and continues with
    ``function.arguments`` fragments keyed only by ``index``. OpenAI sends calls one after the other;
    ``interleave=True`` round-robins the fragments across calls, which a correct client also handles.
    Optional ``content`` text precedes the calls (as compatible servers do).
    """
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None, "refusal": None}]
    deltas += [{"content": piece} for piece in content]
    streams: list[list[dict[str, Any]]] = []
    for index, (call_id, name, *fragments) in enumerate(calls):
        opening = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        tail = [{"index": index, "function": {"arguments": fragment}} for fragment in fragments]
        streams.append([opening, *tail])
    if interleave:
        ordered = [tc for row in _round_robin(streams) for tc in row]
    else:
        ordered = [tc for stream in streams for tc in stream]
    deltas += [{"tool_calls": [tc]} for tc in ordered]
    return _chat_stream(model, deltas, finish, usage, True, True)


def _round_robin(streams: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    depth = max((len(s) for s in streams), default=0)
    return [[s[i] for s in streams if i < len(s)] for i in range(depth)]


