"""Anthropic Messages event streams (``event: X``, ``ping`` events, whitespace before closing braces), and Anthropic's error bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.upstream.script import Frame, Status, ToolCall, Usage, event, rand


def anthropic_error(code: int, type: str, message: str, *, headers: Mapping[str, str] | None = None) -> Status:
    """An Anthropic error response: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    request_id = "req_011" + rand(21)
    body = {"type": "error", "error": {"type": type, "message": message}, "request_id": request_id}
    return Status(code, body, {"request-id": request_id, **(headers or {})})


def anthropic_prompt_too_long(tokens: int = 210000, maximum: int = 200000) -> Status:
    """Anthropic's 400 for an over-long prompt (``invalid_request_error``, "prompt is too long: ...")."""
    return anthropic_error(400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {maximum} maximum")





class _Anthropic:
    """Accumulates an Anthropic Messages event stream (``event: X\\ndata: {...}``).

    Like the real API (not the documentation examples), payloads carry stray whitespace before their
    closing brace, and a ``ping`` follows the first ``content_block_start``.
    """

    def __init__(self, model: str, usage: Usage) -> None:
        self.frames: list[Frame] = []
        self._index = 0
        self._usage = usage
        self._input_usage = {
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
        }
        message = {
            "id": "msg_01" + rand(22),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                **self._input_usage,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage.cache_write_tokens,
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": 1,
                "service_tier": "standard",
            },
        }
        self.emit("message_start", {"type": "message_start", "message": message})

    def emit(self, name: str, payload: Mapping[str, Any]) -> None:
        self.frames.append(event(name, payload, pad=(len(self.frames) * 7) % 13))

    def block(
        self, content_block: Mapping[str, Any], deltas: Sequence[Mapping[str, Any]], *, stop: bool = True
    ) -> None:
        index = self._index
        start = {"type": "content_block_start", "index": index, "content_block": content_block}
        self.emit("content_block_start", start)
        if index == 0:
            self.frames.append(event("ping", {"type": "ping"}))
        for delta in deltas:
            self.emit("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        if stop:
            self.emit("content_block_stop", {"type": "content_block_stop", "index": index})
        self._index += 1

    def text(self, pieces: Sequence[str], *, stop: bool = True) -> None:
        self.block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces], stop=stop)

    def tool_use(self, call: ToolCall) -> None:
        call_id, name, *fragments = call
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *fragments]]
        self.block({"type": "tool_use", "id": call_id, "name": name, "input": {}}, deltas)

    def end(self, stop_reason: str) -> list[Frame]:
        usage = {**self._input_usage, "output_tokens": self._usage.output_tokens}
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        self.emit("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        self.emit("message_stop", {"type": "message_stop"})
        return self.frames


def anthropic_text(
    model: str, pieces: Sequence[str], *, stop_reason: str = "end_turn", usage: Usage = Usage()
) -> list[Frame]:
    """A Messages text stream (``stop_reason``: end_turn, max_tokens, refusal, stop_sequence, ...)."""
    stream = _Anthropic(model, usage)
    stream.text(pieces)
    return stream.end(stop_reason)


def anthropic_thinking(
    model: str,
    thinking: Sequence[str],
    pieces: Sequence[str],
    *,
    signature: str = "EqQBCgIYAhIM" + "a1b2c3d4e5f6" * 6,
    usage: Usage = Usage(),
) -> list[Frame]:
    """Extended thinking: a ``thinking`` block (``thinking_delta``s then one ``signature_delta``), then text."""
    stream = _Anthropic(model, usage)
    deltas = [{"type": "thinking_delta", "thinking": p} for p in thinking]
    stream.block(
        {"type": "thinking", "thinking": "", "signature": ""},
        [*deltas, {"type": "signature_delta", "signature": signature}],
    )
    stream.text(pieces)
    return stream.end("end_turn")


def anthropic_redacted_thinking(model: str, data: str, pieces: Sequence[str], *, usage: Usage = Usage()) -> list[Frame]:
    """A ``redacted_thinking`` block (opaque ``data`` in the start event, no deltas), then text."""
    stream = _Anthropic(model, usage)
    stream.block({"type": "redacted_thinking", "data": data}, [])
    stream.text(pieces)
    return stream.end("end_turn")


def anthropic_tool_use(
    model: str,
    calls: Sequence[ToolCall],
    *,
    text: Sequence[str] = (),
    stop_reason: str = "tool_use",
    usage: Usage = Usage(),
) -> list[Frame]:
    """Optional text, then one ``tool_use`` block per call streamed as ``input_json_delta`` fragments."""
    stream = _Anthropic(model, usage)
    if text:
        stream.text(text)
    for call in calls:
        stream.tool_use(call)
    return stream.end(stop_reason)


def anthropic_error_event(
    model: str,
    pieces: Sequence[str],
    *,
    error_type: str = "overloaded_error",
    message: str = "Overloaded",
    usage: Usage = Usage(),
) -> list[Frame]:
    """Some text, then a mid-stream ``event: error``; the stream ends there (no block stop, no message_stop)."""
    stream = _Anthropic(model, usage)
    stream.text(pieces, stop=False)
    stream.emit("error", {"type": "error", "error": {"type": error_type, "message": message}})
    return stream.frames


