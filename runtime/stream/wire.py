"""Encoding stream items, and the one terminal sequence every run stream ends with.

A stream ends exactly one of these ways, and nothing follows ``[DONE]``:

- success or cancel: ``stop_reason``, ``usage_statistics``, ``[DONE]``
- failure:           ``stop_reason``, ``event: error`` (``error_message``), ``[DONE]``

How a run ended is an ``Ending`` (``Completed``, ``Cancelled``, ``Failed``); ``terminal`` turns it
into those items and the run's final record. ``RunStore.end`` is the one place that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.errors import RunFailure
from runtime.schemas.messages import (
    AssistantMessage,
    ErrorMessage,
    ReasoningMessage,
    StopReasonItem,
    UsageStatistics,
    WireItem,
)
from runtime.schemas.runs import STATUS_FOR_STOP_REASON, RunStatus
from runtime.stream.items import ItemKind

Item = tuple[int, ItemKind, bytes]
DONE_PAYLOAD = b"[DONE]"


def encode(item: WireItem) -> bytes:
    return item.model_dump_json(exclude_none=True).encode()


JOIN_MAX_CHARS = 4096  # a joined item's text stays under this: joining is for many small deltas


def join(held: WireItem, delta: WireItem) -> bool:
    """Append ``delta`` to ``held`` if it continues it, and say whether it did: both text deltas of
    the same part of the same message (an assistant message's text, or reasoning without a
    signature yet), together at most ``JOIN_MAX_CHARS`` (a reader's buffer is bounded in items, so
    items stay small). A client accumulating deltas by message id and ``otid``, as Letta's do, reads
    the joined item exactly as it would have read the two."""
    if isinstance(held, AssistantMessage) and isinstance(delta, AssistantMessage):
        if (
            held.id == delta.id
            and held.otid == delta.otid
            and isinstance(held.content, str)
            and isinstance(delta.content, str)
            and len(held.content) + len(delta.content) <= JOIN_MAX_CHARS
        ):
            held.content += delta.content
            return True
    elif isinstance(held, ReasoningMessage) and isinstance(delta, ReasoningMessage) and (
        held.id == delta.id
        and held.otid == delta.otid
        and held.source == delta.source
        and held.signature is None
        and delta.signature is None
        and len(held.reasoning) + len(delta.reasoning) <= JOIN_MAX_CHARS
    ):
        held.reasoning += delta.reasoning
        return True
    return False


def _stamp(item: WireItem, run_id: str, seq: int) -> WireItem:
    item.run_id = run_id
    item.seq_id = seq
    return item


def success_items(run_id: str, first_seq: int, stop_reason: str, usage: UsageStatistics) -> list[Item]:
    return [
        (first_seq, "data", encode(_stamp(StopReasonItem(stop_reason=stop_reason), run_id, first_seq))),
        (first_seq + 1, "data", encode(_stamp(usage, run_id, first_seq + 1))),
        (first_seq + 2, "done", DONE_PAYLOAD),
    ]


def error_message(run_id: str, failure: RunFailure, seq: int | None = None) -> ErrorMessage:
    return ErrorMessage(
        run_id=run_id,
        error_type=failure.error_type,
        message=failure.public_message,
        detail=failure.detail or None,
        seq_id=seq,
    )


def failure_items(run_id: str, first_seq: int, failure: RunFailure) -> list[Item]:
    return [
        (first_seq, "data", encode(_stamp(StopReasonItem(stop_reason=failure.stop_reason), run_id, first_seq))),
        (first_seq + 1, "error", encode(error_message(run_id, failure, first_seq + 1))),
        (first_seq + 2, "done", DONE_PAYLOAD),
    ]


def cancel_items(run_id: str, first_seq: int, usage: UsageStatistics | None = None) -> list[Item]:
    return success_items(run_id, first_seq, "cancelled", usage or UsageStatistics(run_ids=[run_id]))


def status_for(stop_reason: str) -> RunStatus:
    return STATUS_FOR_STOP_REASON.get(stop_reason, "failed")


@dataclass(frozen=True, slots=True)
class Completed:
    """The turn ran to a stop reason (``end_turn``, ``max_steps``, ``requires_approval``...)."""

    stop_reason: str
    usage: UsageStatistics


@dataclass(frozen=True, slots=True)
class Cancelled:
    usage: UsageStatistics | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    failure: RunFailure


Ending = Completed | Cancelled | Failed


@dataclass(frozen=True, slots=True)
class Terminal:
    """What ending a run writes: its last items, its status and stop reason, and its error."""

    items: list[Item]
    status: RunStatus
    stop_reason: str
    error: dict[str, Any] | None


def outcome(ending: Ending) -> tuple[RunStatus, str]:
    """The terminal status and stop reason ``ending`` gives its run."""
    if isinstance(ending, Completed):
        return status_for(ending.stop_reason), ending.stop_reason
    if isinstance(ending, Cancelled):
        return "cancelled", "cancelled"
    return "failed", ending.failure.stop_reason


def terminal(run_id: str, first_seq: int, ending: Ending) -> Terminal:
    """The terminal sequence of ``ending``, its first item at ``first_seq``."""
    status, stop_reason = outcome(ending)
    if isinstance(ending, Completed):
        return Terminal(success_items(run_id, first_seq, stop_reason, ending.usage), status, stop_reason, None)
    if isinstance(ending, Cancelled):
        return Terminal(cancel_items(run_id, first_seq, ending.usage), status, stop_reason, None)
    error = error_message(run_id, ending.failure).model_dump(exclude_none=True)
    return Terminal(failure_items(run_id, first_seq, ending.failure), status, stop_reason, error)
