"""The HTTP side of one soak client's turns: opening SSE requests, reading them to their end and
judging what was read (``bench.soak.sse``), recording what breaks an invariant in the ledger.
Every send carries an ``Idempotency-Key`` of its own (``idempotent``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

from bench.soak.ledger import (
    ACCEPTED_PROCESSED,
    COMPLETED,
    OWNER_LOST,
    RESUMES_EXACT,
    STORE_UNAVAILABLE,
    STREAMS_END,
    Conversation,
    Ledger,
    RunRecord,
    lost_run,
)
from bench.soak.sse import Transcript, sse_events

Opened = AbstractAsyncContextManager[Transcript | None]


def idempotent() -> dict[str, str]:
    """Headers of a send: a key of its own, so that sending it again (``outage.StoreRetry``, after
    a refusal whose cause may have come after the send was accepted) joins its run."""
    return {"Idempotency-Key": f"soak-{uuid.uuid4().hex}"}


class Turns:
    def __init__(self, http: httpx.AsyncClient, ledger: Ledger) -> None:
        self._http = http
        self._ledger = ledger

    @asynccontextmanager
    async def open(
        self, label: str, url: str, body: dict[str, Any], after: int = 0, headers: dict[str, str] | None = None
    ) -> AsyncIterator[Transcript | None]:
        """An SSE request; yields its transcript once the run's id is known (None if refused)."""
        sent = time.perf_counter()
        async with self._http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                self._ledger.answer(label, response.status_code, text)
                yield None
                return
            self._ledger.answer(label, response.status_code)
            events = sse_events(response)
            try:
                transcript = Transcript(events, after=after, opened_at=sent)
                await transcript.read_until(lambda t: t.run_id is not None)
                if transcript.run_id is None:
                    what = f"only {[e.kind for e in transcript.read]}" if transcript.read else "no item at all"
                    self._ledger.violate(STREAMS_END, f"{label} {url} (starting_after {after}): closed with {what}")
                    yield None
                    return
                yield transcript
            finally:
                await events.aclose()

    def send(self, conv: Conversation, body: dict[str, Any], label: str = "send stream") -> Opened:
        """A streaming send, token by token (the soak's cancels and disconnects land mid-message)."""
        return self.open(label, f"/v1/conversations/{conv.id}/messages", {"stream_tokens": True, **body}, headers=idempotent())

    def resume_from(self, run_id: str, cursor: int) -> Opened:
        return self.open("resume run", f"/v1/runs/{run_id}/stream", {"starting_after": cursor}, after=cursor)

    async def blocking(
        self, conv: Conversation, body: dict[str, Any], label: str, op: str, text: str | None
    ) -> tuple[RunRecord, str | None] | None:
        """A non-streaming send: its run, recorded as ``op``, and its stop reason (None when the run
        failed ``owner_lost``: it is marked lost); None if the send was refused."""
        url = f"/v1/conversations/{conv.id}/messages"
        reply = await self._http.post(url, json={**body, "streaming": False}, headers=idempotent())
        if self._ledger.answer(label, reply.status_code, reply.text):
            stop = reply.json()["stop_reason"]
            return self._ledger.accept(stop["run_id"], conv, op, text, COMPLETED), str(stop["stop_reason"])
        lost = lost_run(reply.status_code, reply.text)
        return None if lost is None else (self._ledger.accept(lost, conv, op, text, COMPLETED, lost=True), None)

    async def finish(self, transcript: Transcript, record: RunRecord, want: str | None) -> None:
        """Read to the end; judge the ending and, when ``want`` is given, the stop reason."""
        await transcript.read_until()
        tally = self._ledger.streams
        tally.read += 1
        problem = transcript.ending_problem()
        if problem is not None:
            self._ledger.violate(STREAMS_END, f"{record.op} run {record.run_id}: {problem}")
        else:
            tally.ended += 1
        if want is not None and transcript.stop_reason != want:
            errors = [e.doc.get("error_type") for e in transcript.read if e.kind == "error"]
            if errors in ([OWNER_LOST], [STORE_UNAVAILABLE]):
                record.lost = True  # its host died (or Redis was away) under it: judged at the end
                return
            self._ledger.violate(
                ACCEPTED_PROCESSED,
                f"{record.op} run {record.run_id} stopped with {transcript.stop_reason} (errors {errors}),"
                f" expected {want}",
            )

    async def read_after(self, record: RunRecord, cursor: int, want: str | None) -> Transcript | None:
        """Resume ``record``'s run after ``cursor`` and read it to the end."""
        async with self.resume_from(record.run_id, cursor) as resumed:
            if resumed is not None:
                await self.finish(resumed, record, want)
            return resumed

    def compare(self, record: RunRecord, original: Transcript, resumed: Transcript) -> None:
        """The resumed reader must have seen exactly what the original saw after the cursor."""
        mine = [(e.seq, e.kind, e.doc) for e in original.stored() if e.seq is not None and e.seq > resumed.after]
        theirs = [(e.seq, e.kind, e.doc) for e in resumed.stored()]
        if mine != theirs:
            seqs = ([s for s, _, _ in mine][:6], [s for s, _, _ in theirs][:6])
            self._ledger.violate(
                RESUMES_EXACT, f"run {record.run_id}: resumed items differ from the original's: {seqs}"
            )
