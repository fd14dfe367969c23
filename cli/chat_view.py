"""What ``convoy chat`` prints: a run's items, as they stream, through ``rich``.

Items are read by ``message_type``. The same message may come as token deltas (its pieces share
``id`` and ``otid``) or whole (one item per segment): each item's text is printed as it comes, and
a new segment (another ``otid``) starts on a new line, so both shapes print the same. Answer text
is plain, reasoning dimmed, tool calls and their results on lines of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

RESULT_CHARS = 400  # a tool result longer than this is cut on screen (the history keeps it whole)
# Control characters a model or a tool could send to the terminal (escape sequences that hide,
# move or rewrite what is on screen); tabs and newlines stay.
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)])


def printable(text: str) -> str:
    """``text`` without the control characters a terminal would act on (``_CONTROLS``)."""
    return text.translate(_CONTROLS)

# What a failed run's error_type means, in words; others are shown as they are named.
ERROR_TITLES = {
    "llm_rate_limit": "the model provider is rate limiting requests",
    "llm_timeout": "the model provider did not answer in time",
    "llm_unavailable": "the model provider is unavailable",
    "llm_authentication": "the model provider refused Convoy's credentials",
    "llm_context_window_exceeded": "the conversation no longer fits the model's context window",
    "store_unavailable": "Convoy's store (Redis) is unreachable",
    "owner_lost": "the process running this answer stopped",
}


@dataclass
class PendingCall:
    """A tool call that waits for a person's approval."""

    tool_call_id: str
    name: str = ""
    arguments: str = ""


@dataclass
class RunView:
    """One run as printed so far: what the next item continues, and what the run asked for."""

    console: Console
    segment: tuple[str, str] | None = None
    at_line_start: bool = True
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    failed: bool = False
    approvals: dict[str, PendingCall] = field(default_factory=dict)
    _calls_by_segment: dict[str, PendingCall] = field(default_factory=dict)

    def show(self, item: dict[str, Any]) -> None:
        kind = item.get("message_type")
        if kind == "assistant_message":
            self._piece(item, _text(item.get("content")), None)
        elif kind == "reasoning_message" and item.get("reasoning"):
            self._piece(item, item["reasoning"], "dim italic", opening="thinking: ")
        elif kind == "hidden_reasoning_message":
            self._piece(item, "", "dim italic", opening="thinking (redacted by the provider)")
        elif kind in ("tool_call_message", "approval_request_message"):
            self._call(item, approval=kind == "approval_request_message")
        elif kind == "tool_return_message":
            self._result(item)
        elif kind == "stop_reason":
            self.stop_reason = item.get("stop_reason")
        elif kind == "usage_statistics":
            self.usage = item
        elif kind == "error_message":
            self.failed = True
            self._line()
            title = ERROR_TITLES.get(item.get("error_type", ""), item.get("error_type", "error"))
            self.console.print(f"error: {title}: {item.get('message', '')}", style="bold red", markup=False, highlight=False)
            if item.get("detail"):
                self.console.print(str(item["detail"]), style="red", markup=False, highlight=False)

    def end(self) -> None:
        self._line()

    def _piece(self, item: dict[str, Any], text: str, style: str | None, opening: str = "") -> None:
        key = (str(item.get("message_type")), str(item.get("otid") or item.get("id")))
        if key != self.segment:
            self._line()
            self.segment = key
            if opening:
                self._out(opening, style)
        if text:
            self._out(text, style)

    def _call(self, item: dict[str, Any], *, approval: bool) -> None:
        """One call (``tool_call``), or several in one message (``tool_calls``): a line for each."""
        calls = item.get("tool_calls") or [item.get("tool_call") or {}]
        for index, call in enumerate(calls):
            self._one_call(item, call, approval=approval, part=index if len(calls) > 1 else None)

    def _one_call(self, item: dict[str, Any], call: dict[str, Any], *, approval: bool, part: int | None) -> None:
        key = str(item.get("otid") or item.get("id")) + ("" if part is None else f":{part}")
        pending = self._calls_by_segment.get(key)
        if pending is None:
            pending = self._calls_by_segment[key] = PendingCall(tool_call_id="")
            self._line()
            self.segment = (str(item.get("message_type")), key)
            self._out("? " if approval else "⚙ ", "bold yellow" if approval else "bold cyan")
        if call.get("tool_call_id") and not pending.tool_call_id:
            pending.tool_call_id = call["tool_call_id"]
            if approval:
                self.approvals[pending.tool_call_id] = pending
        if call.get("name"):
            pending.name += call["name"]
            self._out(call["name"] + " ", "bold")
        if call.get("arguments"):
            pending.arguments += call["arguments"]
            self._out(call["arguments"], "dim")

    def _result(self, item: dict[str, Any]) -> None:
        self._line()
        self.segment = None
        text = printable(str(item.get("tool_return", "")))
        if len(text) > RESULT_CHARS:
            text = text[:RESULT_CHARS] + f"… ({len(text) - RESULT_CHARS} more characters)"
        ok = item.get("status") == "success"
        self.console.print(f"  ↳ {text}", style="green" if ok else "red", markup=False, highlight=False)

    def _out(self, text: str, style: str | None) -> None:
        text = printable(text)
        self.console.out(text, style=style, highlight=False, end="")
        self.at_line_start = text.endswith("\n")

    def _line(self) -> None:
        if not self.at_line_start:
            self.console.out("")
            self.at_line_start = True


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def describe_call(call: PendingCall) -> str:
    try:
        arguments = json.dumps(json.loads(call.arguments or "{}"), ensure_ascii=False)
    except ValueError:
        arguments = call.arguments
    return printable(f"{call.name}({arguments})")


def describe_run(run: dict[str, Any], usage: dict[str, Any] | None) -> str:
    """The line printed under an answer: status, stop reason, time to first token, time, tokens."""
    parts = [str(run.get("status"))]
    if run.get("stop_reason") and run["stop_reason"] != run.get("status"):
        parts.append(str(run["stop_reason"]))
    if run.get("ttft_ns"):
        parts.append(f"first token {run['ttft_ns'] / 1e6:.0f} ms")
    if run.get("total_duration_ns"):
        parts.append(f"{run['total_duration_ns'] / 1e9:.2f} s")
    if usage and usage.get("total_tokens"):
        parts.append(f"{usage.get('prompt_tokens', 0)} in / {usage.get('completion_tokens', 0)} out tokens")
    return " · ".join(parts)
