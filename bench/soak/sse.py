"""Reading a Convoy SSE stream the way a strict client would, and judging how it ended.

A ``Transcript`` keeps every event of one response in order: its own ``id:`` (the item's seq id;
none for keepalive pings), its kind (the item's ``message_type``; ``error`` for ``event: error``;
``done`` for ``[DONE]``) and its JSON. ``ending_problem`` says what is wrong with how it ended, if
anything: the wire contract is ``stop_reason``, ``usage_statistics`` or ``error``, ``[DONE]``, then
the response closes; stored items carry consecutive ids from the cursor on.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource

SUCCESS_END = ("stop_reason", "usage_statistics", "done")
FAILURE_END = ("stop_reason", "error", "done")


@dataclass(frozen=True)
class Event:
    seq: int | None
    kind: str
    doc: dict[str, Any]


async def sse_events(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of an SSE response, as they arrive (parsed by ``httpx-sse``).

    By the SSE spec an event without an ``id:`` field carries the last id seen (an
    ``EventSource``'s ``lastEventId``), so a keepalive ping sent after item N reads as id N too. A
    strict reader must know which events carried an id of their own (found by the soak's faults:
    a run waiting for its restarting host gets pings mid-stream). Convoy's stored ids only grow
    within a response, so an event carried its own id when the id changed, or when it repeats the
    id its JSON's ``seq_id`` names (an item sent twice, which the consecutive-ids check must see).
    Items the reader made up carry a ``seq_id`` past the last id sent, never equal to it.
    """
    previous = ""
    async for sse in EventSource(response).aiter_sse():
        event = _event(sse.id, previous, sse.event, sse.data)
        previous = sse.id
        yield event


def _event(event_id: str, previous_id: str, name: str, data: str) -> Event:
    seq = int(event_id) if event_id.isascii() and event_id.isdigit() else None
    if data == "[DONE]":
        return Event(seq if event_id != previous_id else None, "done", {})
    doc = json.loads(data)
    kind = "error" if name == "error" else str(doc.get("message_type", "?"))
    own = seq is not None and (event_id != previous_id or doc.get("seq_id") == seq)
    return Event(seq if own else None, kind, doc)


@dataclass
class Transcript:
    """One SSE response as read so far. ``after``: the resume cursor it was opened with;
    ``opened_at``: when its request was sent (``perf_counter``)."""

    events: AsyncIterator[Event]
    after: int = 0
    opened_at: float = field(default_factory=time.perf_counter)
    read: list[Event] = field(default_factory=list)
    first_text_at: float | None = None
    closed: bool = False

    async def read_until(self, stop: Callable[[Transcript], bool] | None = None) -> None:
        """Read until ``stop`` says so, or to the end of the response (``closed``)."""
        async for event in self.events:
            self.read.append(event)
            if event.kind == "assistant_message" and self.first_text_at is None:
                self.first_text_at = time.perf_counter()
            if stop is not None and stop(self):
                return
        self.closed = True

    @property
    def run_id(self) -> str | None:
        return next((e.doc["run_id"] for e in self.read if e.doc.get("run_id")), None)

    @property
    def last_seq(self) -> int:
        return max((e.seq for e in self.read if e.seq is not None), default=self.after)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.read if e.kind == kind)

    def stored(self) -> list[Event]:
        return [e for e in self.read if e.seq is not None]

    @property
    def stop_reason(self) -> str | None:
        return next((str(e.doc.get("stop_reason")) for e in self.read if e.kind == "stop_reason"), None)

    def tool_call_id(self) -> str | None:
        calls = (e.doc.get("tool_call") or {} for e in self.read if e.kind == "approval_request_message")
        return next((c["tool_call_id"] for c in calls if c.get("tool_call_id")), None)

    def ending_problem(self) -> str | None:
        """What is wrong with the end of this (fully read) response; None when it ended right."""
        kinds = tuple(e.kind for e in self.read if e.kind != "ping")
        if not self.closed:
            return "the response did not close"
        if "done" in kinds and self.read[-1].kind != "done":
            return f"{self.read[-1].kind} after [DONE]"
        if kinds.count("done") != 1 or kinds.count("stop_reason") != 1:
            counts = f"{kinds.count('stop_reason')} stop_reason and {kinds.count('done')} [DONE] items"
            return f"{counts} (want 1 each); ends {kinds[-4:]}"
        if kinds[-3:] not in (SUCCESS_END, FAILURE_END):
            return f"ends with {kinds[-3:]}, not stop_reason, usage_statistics|error, [DONE]"
        seqs = [e.seq for e in self.stored()]
        if seqs and seqs != list(range(self.after + 1, self.after + 1 + len(seqs))):
            return f"seq ids after cursor {self.after} are not consecutive: {_runs(seqs)}"
        return None


def _runs(seqs: list[int | None]) -> str:
    """``1-5, 7-9``: a short picture of a list of seq ids."""
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and prev is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = seq
    return ", ".join(parts[:8]) + (" ..." if len(parts) > 8 else "")
