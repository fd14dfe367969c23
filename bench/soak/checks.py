"""The run and history invariants, checked through the API once the workload has settled.

- **every run terminal**: ``GET /v1/runs?active=true`` lists nothing, and no run of the soak's
  conversations is ``created`` or ``running``;
- **accepted == processed**: every run a client saw accepted is listed by the server with a
  terminal status consistent with what the client did (``Ledger.runs[...].expect``; a foreground
  run whose client left is ``cancelled``, or ``completed`` if it had ended before the client
  left), or ``failed`` with ``owner_lost`` if a fault excuses it (``faults.excused``; a run the
  client saw fail that way must be excused by one), or ``store_unavailable`` if the Redis outage
  was longer than owners wait (``outage.excused``); the server lists no run of those
  conversations that no client saw accepted;
- **history**: per conversation, the user inputs in ``GET /v1/conversations/{id}/messages`` are
  inputs the client sent and the server accepted, each once, in acceptance order, and the inputs
  of completed turns are all there (a cancelled turn's input may be there or not: history is
  written per step).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from bench.soak import faults, outage
from bench.soak.ledger import (
    ACCEPTED_PROCESSED,
    HISTORY,
    RUNS_TERMINAL,
    Conversation,
    Ledger,
    RunRecord,
    near_kill,
)

PAGE = 1000
CONCURRENCY = 8
ACTIVE = ("created", "running")


@dataclass
class RunFigures:
    accepted: int = 0
    processed: int = 0
    listed: int = 0
    owner_lost: int = 0  # failed owner_lost: their host was killed under them
    by_status: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> the server's view


async def wait_settled(http: httpx.AsyncClient, timeout_s: float, period_s: float) -> list[dict[str, Any]]:
    """Poll (bounded) until the server lists no active run; returns those still active at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await http.get("/v1/runs", params={"active": "true", "limit": PAGE})
        reply.raise_for_status()
        active: list[dict[str, Any]] = reply.json()
        if not active or time.monotonic() > deadline:
            return active
        await asyncio.sleep(period_s)


async def check_runs(http: httpx.AsyncClient, ledger: Ledger, still_active: list[dict[str, Any]]) -> RunFigures:
    figures = RunFigures(accepted=len(ledger.runs))
    for run in still_active:
        ledger.violate(
            RUNS_TERMINAL,
            f"run {run['id']} ({run['status']}) is still active after the settle wait{_near_faults(ledger, run)}",
        )
    listed = await _gather([_list_runs(http, c) for c in ledger.conversations.values()])
    for runs in listed:
        for run in runs:
            figures.statuses[run["id"]] = run
    figures.listed = len(figures.statuses)
    for run in figures.statuses.values():
        figures.by_status[run["status"]] = figures.by_status.get(run["status"], 0) + 1
        figures.owner_lost += faults.lost(run)
        if run["status"] in ACTIVE:
            ledger.violate(RUNS_TERMINAL, f"run {run['id']} is {run['status']}")
        if run["id"] not in ledger.runs:
            ledger.violate(ACCEPTED_PROCESSED, f"run {run['id']} ({run['status']}) was never seen accepted by a client")
    for record in ledger.runs.values():
        if _processed(ledger, record, figures.statuses):
            figures.processed += 1
    return figures


def _near_faults(ledger: Ledger, run: dict[str, Any]) -> str:
    """For a violation's text: when the run was accepted, next to the faults."""
    if not ledger.faults:
        return ""
    accepted = near_kill(ledger.faults, datetime.fromisoformat(run["created_at"]).timestamp(), "accepted")
    held = sorted({f"fault {i} ({f.host})" for i, f in enumerate(ledger.faults, 1) if run["conversation_id"] in f.held})
    return f"{accepted}; its conversation was held by the host killed in {', '.join(held) or 'no fault'}"


def _processed(ledger: Ledger, record: RunRecord, statuses: dict[str, dict[str, Any]]) -> bool:
    view = statuses.get(record.run_id)
    if view is None:
        ledger.violate(
            ACCEPTED_PROCESSED, f"{record.op} run {record.run_id} was accepted but the server does not list it"
        )
        return False
    status = view["status"]
    if not record.lost and (status in record.expect or _ended_before_client_left(record, view)):
        return True
    if faults.excused(ledger.faults, record.conversation_id, view) or outage.excused(ledger.outage, view):
        return True
    seen = "; the client saw it fail" if record.lost else ""
    ledger.violate(
        ACCEPTED_PROCESSED,
        f"{record.op} run {record.run_id} ended {status} ({view.get('stop_reason')}),"
        f" expected {'/'.join(sorted(record.expect)) or 'owner_lost in a fault'}"
        + _run_before(ledger, record, statuses)
        + seen
        + _error_of(view),
    )
    return False


def _run_before(ledger: Ledger, record: RunRecord, statuses: dict[str, dict[str, Any]]) -> str:
    """For a violation's text: the run accepted just before this one on its conversation."""
    runs = ledger.conversations[record.conversation_id].run_ids
    at = runs.index(record.run_id)
    if at == 0:
        return ""
    before = ledger.runs[runs[at - 1]]
    view = statuses.get(before.run_id, {})
    error = (view.get("metadata") or {}).get("error") or {}
    return f" [the run before it: {before.op} {before.run_id} {view.get('status')} {error.get('error_type', '')}]"


def _ended_before_client_left(record: RunRecord, view: dict[str, Any]) -> bool:
    if view["status"] != "completed" or record.left_at_s is None or not view.get("completed_at"):
        return False
    return datetime.fromisoformat(view["completed_at"]).timestamp() <= record.left_at_s


def _error_of(view: dict[str, Any]) -> str:
    error = (view.get("metadata") or {}).get("error")
    return f"; error {error.get('error_type')}: {error.get('message')}" if isinstance(error, dict) else ""


async def _list_runs(http: httpx.AsyncClient, conv: Conversation) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"conversation_id": conv.id, "limit": PAGE, "order": "asc"}
    while True:
        reply = await http.get("/v1/runs", params=params)
        reply.raise_for_status()
        page: list[dict[str, Any]] = reply.json()
        runs += page
        if len(page) < PAGE:
            return runs
        params["after"] = page[-1]["id"]


async def check_history(http: httpx.AsyncClient, ledger: Ledger, statuses: dict[str, dict[str, Any]]) -> int:
    """Check every conversation's history; returns how many user messages were checked."""
    histories = await _gather([_user_inputs(http, c) for c in ledger.conversations.values()])
    for conv, inputs in zip(ledger.conversations.values(), histories, strict=True):
        _judge_history(ledger, conv, inputs, statuses)
    return sum(len(h) for h in histories)


def _judge_history(ledger: Ledger, conv: Conversation, inputs: list[str], statuses: dict[str, dict[str, Any]]) -> None:
    records = [ledger.runs[r] for r in conv.run_ids if ledger.runs[r].input_text is not None]
    order = {r.input_text: i for i, r in enumerate(records)}
    completed = [r.input_text for r in records if statuses.get(r.run_id, {}).get("status") == "completed"]
    unknown = [t for t in inputs if t not in order]
    if unknown:
        ledger.violate(HISTORY, f"conversation {conv.id}: user messages no accepted run carried: {unknown[:3]}")
    known = [t for t in inputs if t in order]
    if len(set(known)) != len(known):
        ledger.violate(HISTORY, f"conversation {conv.id}: an input appears twice")
    positions = [order[t] for t in known]
    if positions != sorted(positions):
        ledger.violate(HISTORY, f"conversation {conv.id}: inputs out of acceptance order")
    missing = [t for t in completed if t not in set(known)]
    if missing:
        ledger.violate(
            HISTORY, f"conversation {conv.id}: {len(missing)} completed turn(s) missing, e.g. {missing[0]!r}"
        )


async def _user_inputs(http: httpx.AsyncClient, conv: Conversation) -> list[str]:
    texts: list[str] = []
    params: dict[str, Any] = {"limit": PAGE, "order": "asc"}
    while True:
        reply = await http.get(f"/v1/conversations/{conv.id}/messages", params=params)
        reply.raise_for_status()
        page: list[dict[str, Any]] = reply.json()
        texts += [_text(m["content"]) for m in page if m.get("message_type") == "user_message"]
        if len(page) < PAGE:
            return texts
        params["after"] = page[-1]["id"]


def _text(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else "".join(str(p.get("text", "")) for p in content)


async def _gather(work: list[Any]) -> list[Any]:
    """Run ``work`` (coroutines) with at most ``CONCURRENCY`` in flight, results in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(w) for w in work))
