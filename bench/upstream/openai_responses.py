"""OpenAI Responses event streams (``event:`` + ``data:`` with ``sequence_number``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from bench.upstream.script import Frame, ToolCall, Usage, event, obfuscation


class _Responses:
    """Accumulates a Responses API event stream (``event:`` + ``data:`` with ``sequence_number``)."""

    def __init__(self, model: str) -> None:
        self.frames: list[Frame] = []
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self._base: dict[str, Any] = {
            "id": "resp_" + secrets.token_hex(25),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "auto",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": {},
        }
        self.emit("response.created", response=self._base)
        self.emit("response.in_progress", response=self._base)

    def emit(self, type_: str, **fields: Any) -> None:
        payload = {"type": type_, "sequence_number": self._seq, **fields}
        if "delta" in fields:
            payload["obfuscation"] = obfuscation({"delta": fields["delta"]}, 16)
        self._seq += 1
        self.frames.append(event(type_, payload))

    def reasoning(self, summary: Sequence[Sequence[str]]) -> None:
        item_id, index = "rs_" + secrets.token_hex(25), len(self.output)
        self.emit(
            "response.output_item.added", output_index=index, item={"id": item_id, "type": "reasoning", "summary": []}
        )
        parts = []
        for summary_index, pieces in enumerate(summary):
            where = {"item_id": item_id, "output_index": index, "summary_index": summary_index}
            text = "".join(pieces)
            self.emit("response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""})
            for piece in pieces:
                self.emit("response.reasoning_summary_text.delta", **where, delta=piece)
            self.emit("response.reasoning_summary_text.done", **where, text=text)
            self.emit("response.reasoning_summary_part.done", **where, part={"type": "summary_text", "text": text})
            parts.append({"type": "summary_text", "text": text})
        self._item_done({"id": item_id, "type": "reasoning", "summary": parts})

    def message(self, pieces: Sequence[str], status: str = "completed") -> None:
        item_id, index = "msg_" + secrets.token_hex(25), len(self.output)
        item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        self.emit("response.output_item.added", output_index=index, item=item)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        self.emit("response.content_part.added", **where, part=_output_text(""))
        for piece in pieces:
            self.emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        text = "".join(pieces)
        self.emit("response.output_text.done", **where, text=text, logprobs=[])
        self.emit("response.content_part.done", **where, part=_output_text(text))
        self._item_done({**item, "status": status, "content": [_output_text(text)]})

    def function_call(self, call: ToolCall, *, cut: bool = False) -> None:
        """``cut``: the token limit stopped it mid-arguments (no ``arguments.done``; the item ends
        ``incomplete``)."""
        call_id, name, *fragments = call
        item_id, index = "fc_" + secrets.token_hex(25), len(self.output)
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }
        self.emit("response.output_item.added", output_index=index, item=item)
        for fragment in fragments:
            self.emit("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=fragment)
        arguments = "".join(fragments)
        if not cut:
            self.emit("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        self._item_done({**item, "status": "incomplete" if cut else "completed", "arguments": arguments})

    def _item_done(self, item: dict[str, Any]) -> None:
        self.emit("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)

    def end(self, type_: str, status: str, usage: Usage | None, **fields: Any) -> list[Frame]:
        response = {**self._base, "status": status, "output": self.output, **fields}
        if usage is not None:
            response["usage"] = {
                "input_tokens": usage.input_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                "total_tokens": usage.input_tokens + usage.output_tokens,
            }
        self.emit(type_, response=response)
        return self.frames


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def responses_text(model: str, pieces: Sequence[str], *, usage: Usage = Usage()) -> list[Frame]:
    """A Responses stream with one assistant message, ending in ``response.completed``."""
    stream = _Responses(model)
    stream.message(pieces)
    return stream.end("response.completed", "completed", usage)


def responses_reasoning_summary(
    model: str, summary: Sequence[Sequence[str]], pieces: Sequence[str], *, usage: Usage = Usage()
) -> list[Frame]:
    """A reasoning item streaming its summary parts (each a list of deltas), then a text message."""
    stream = _Responses(model)
    stream.reasoning(summary)
    stream.message(pieces)
    return stream.end("response.completed", "completed", usage)


def responses_function_call(
    model: str, calls: Sequence[ToolCall], *, incomplete: str | None = None, usage: Usage = Usage()
) -> list[Frame]:
    """One ``function_call`` output item per call: ``added`` (call_id, name), argument deltas, ``done``.

    ``incomplete`` (e.g. ``"max_output_tokens"``): the last call is cut mid-arguments and the stream
    ends in ``response.incomplete`` with that reason."""
    stream = _Responses(model)
    for i, call in enumerate(calls):
        stream.function_call(call, cut=incomplete is not None and i == len(calls) - 1)
    if incomplete is not None:
        return stream.end("response.incomplete", "incomplete", usage, incomplete_details={"reason": incomplete})
    return stream.end("response.completed", "completed", usage)


def responses_incomplete(
    model: str, pieces: Sequence[str], *, reason: str = "max_output_tokens", usage: Usage = Usage()
) -> list[Frame]:
    """A message cut short, ending in ``response.incomplete`` with ``incomplete_details.reason``."""
    stream = _Responses(model)
    stream.message(pieces, status="incomplete")
    return stream.end("response.incomplete", "incomplete", usage, incomplete_details={"reason": reason})


def responses_failed(
    model: str, *, code: str = "server_error", message: str = "The server had an error while processing your request."
) -> list[Frame]:
    """A stream that ends in ``response.failed`` carrying ``response.error`` (no output)."""
    stream = _Responses(model)
    return stream.end("response.failed", "failed", None, error={"code": code, "message": message})


def responses_error_event(
    model: str,
    *,
    code: str = "insufficient_quota",
    message: str = "You exceeded your current quota.",
    nested: bool = True,
) -> list[Frame]:
    """A top-level ``error`` event, then ``response.failed``.

    ``nested=True`` is the shape observed on the wire, ``{"type": "error", "error": {type, code, message,
    param}}``; ``nested=False`` is the documented one, ``{"type": "error", code, message, param}``.
    """
    stream = _Responses(model)
    if nested:
        stream.emit("error", error={"type": code, "code": code, "message": message, "param": None})
    else:
        stream.emit("error", code=code, message=message, param=None)
    return stream.end("response.failed", "failed", None, error={"code": code, "message": message})


