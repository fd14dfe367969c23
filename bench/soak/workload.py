"""The soak's clients: each one owns a few conversations and does one thing at a time, at random.

What a client may do (``OPS``, weighted; the generator is seeded per client):

- ``stream``: a streaming turn read to its end;
- ``blocking``: a non-streaming turn (``streaming: false``);
- ``cancel``: a streaming turn cancelled mid-stream (``POST /v1/runs/{id}/cancel``), read to its end;
- ``resume``: a background turn read by a second reader from a mid-stream cursor, both to the end;
- ``disconnect_fg``: a foreground turn whose client leaves mid-stream (the run must be cancelled);
- ``disconnect_bg``: a background turn whose client leaves mid-stream (it must complete), then
  resumed from where the client left;
- ``tool``: a turn offering a client tool, which the model calls; the run stops with
  ``requires_approval`` and the client answers with the tool's result (streaming or not);
- ``queued``: two background turns sent back to back to one conversation, both read to the end;
- ``retry``: a streaming turn sent again (non-streaming) with the same ``Idempotency-Key`` while
  it runs: the retry must join the run, not start a second one;
- ``busy``: a turn, and while it runs another with ``on_busy: reject`` (must be a 409);
- ``bad``: one of the bad inputs of ``bench.soak.bad``;
- ``new_conversation``: one more conversation for this client (older ones go idle and passivate).

A stream left on purpose is always resumed afterwards to its end, so every run's ending is read.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx

from bench.soak.bad import BUSY_REJECT, BadInputs
from bench.soak.ledger import (
    ACCEPTED_PROCESSED,
    ANSWERS,
    CANCELLED,
    COMPLETED,
    STREAMS_END,
    Conversation,
    Ledger,
    RunRecord,
    lost_run,
)
from bench.soak.sse import Transcript
from bench.soak.turns import Turns, idempotent

OPS: dict[str, int] = {
    "stream": 20,
    "blocking": 8,
    "cancel": 10,
    "resume": 8,
    "disconnect_fg": 8,
    "disconnect_bg": 8,
    "tool": 10,
    "queued": 6,
    "retry": 4,
    "busy": 4,
    "bad": 12,
    "new_conversation": 3,
}
SHORT_WORDS = 10  # a turn of ~0.2 s (echo: 20 ms a word; the upstream: 50 words/s)
LONG_WORDS = 40  # ~0.8 s: long enough to act mid-stream
MAX_READ_BEFORE_ACTING = 4  # text items read before a cancel, a resume or leaving
OP_TIMEOUT_S = 60.0
CLIENT_TOOL = {
    "name": "soak_lookup",
    "description": "Look something up on the client's side.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
VOCABULARY = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


class SoakClient:
    def __init__(self, index: int, http: httpx.AsyncClient, ledger: Ledger, seed: int, agents: dict[str, str]) -> None:
        self._index = index
        self._http = http
        self._ledger = ledger
        self._turns = Turns(http, ledger)
        self._rng = random.Random(f"{seed}/{index}")
        self._agents = agents  # model ("echo", "bench") -> agent id
        self._pool: dict[str, list[Conversation]] = {model: [] for model in agents}
        self._sent = 0
        self._measuring = False  # latencies are taken after the warm-up only
        self._last_run: str | None = None
        self._op_runs: list[str] = []  # the runs the operation under way saw accepted
        self._ops: dict[str, Callable[[], Awaitable[None]]] = {
            "stream": self._stream,
            "blocking": self._blocking,
            "cancel": self._cancel,
            "resume": self._resume,
            "disconnect_fg": self._disconnect_foreground,
            "disconnect_bg": self._disconnect_background,
            "tool": self._tool,
            "queued": self._queued,
            "retry": self._retry,
            "busy": self._busy,
            "bad": self._bad,
            "new_conversation": self._new_conversation,
        }

    async def warm_up(self) -> None:
        """One conversation per model, and one turn in each."""
        for model in self._agents:
            await self._do("new_conversation", functools.partial(self._new_conversation, model))
            await self._do("stream", functools.partial(self._stream, model))

    async def run_until(self, deadline: float) -> None:
        """Do random things until ``deadline`` (monotonic), each to its end."""
        self._measuring = True
        names, weights = list(OPS), list(OPS.values())
        while time.monotonic() < deadline:
            op = self._rng.choices(names, weights)[0]
            await self._do(op, self._ops[op])

    async def _do(self, op: str, work: Callable[[], Awaitable[None]]) -> None:
        self._ledger.ops[op] += 1
        self._op_runs = []
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                await work()
        except TimeoutError:
            self._ledger.violate(STREAMS_END, f"{op}: not over within {OP_TIMEOUT_S:g} s{self._op_runs_text()}")
        except httpx.TimeoutException as exc:
            self._ledger.violate(STREAMS_END, f"{op}: {type(exc).__name__} (a stream went silent){self._op_runs_text()}")
        except Exception as exc:  # the soak goes on; what happened is reported
            self._ledger.violate(ANSWERS, f"{op}: {type(exc).__name__}: {exc}")

    # -- helpers ---------------------------------------------------------------------------------

    def _op_runs_text(self) -> str:
        return f" (runs {', '.join(self._op_runs)})" if self._op_runs else " (no run accepted yet)"

    def _pick(self, model: str | None = None) -> Conversation:
        model = model or self._rng.choice(list(self._pool))
        return self._rng.choice(self._pool[model])

    def _text(self, words: int) -> str:
        """A unique user input of ``words`` words (the history check finds inputs by text)."""
        self._sent += 1
        filler = " ".join(self._rng.choice(VOCABULARY) for _ in range(words - 1))
        return f"c{self._index}-m{self._sent} {filler}"

    def _midway(self) -> Callable[[Transcript], bool]:
        wanted = self._rng.randint(1, MAX_READ_BEFORE_ACTING)
        return lambda t: t.count("assistant_message") >= wanted

    def _accept(self, transcript: Transcript, conv: Conversation, op: str, text: str | None) -> RunRecord:
        assert transcript.run_id is not None
        self._last_run = transcript.run_id
        self._op_runs.append(transcript.run_id)
        return self._ledger.accept(transcript.run_id, conv, op, text, COMPLETED)

    async def _read_midway(self, turn: Transcript, record: RunRecord) -> bool:
        """Read a few text items; False (after judging its ending) if the run ended first."""
        await turn.read_until(self._midway())
        if not turn.closed:
            return True
        await self._turns.finish(turn, record, "end_turn")
        return False

    # -- the operations --------------------------------------------------------------------------

    async def _new_conversation(self, model: str | None = None) -> None:
        model = model or self._rng.choice(list(self._agents))
        reply = await self._http.post("/v1/conversations", params={"agent_id": self._agents[model]})
        if not self._ledger.answer("create conversation", reply.status_code, reply.text):
            return
        self._pool[model].append(self._ledger.conversation(reply.json()["id"], model))

    async def _stream(self, model: str | None = None) -> None:
        conv = self._pick(model)
        text = self._text(SHORT_WORDS)
        async with self._turns.send(conv, {"input": text}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "stream", text)
            await self._turns.finish(turn, record, "end_turn")
            if self._measuring and turn.first_text_at is not None:
                self._ledger.ttft_ms[conv.model].append((turn.first_text_at - turn.opened_at) * 1e3)

    async def _blocking(self) -> None:
        conv = self._pick()
        text = self._text(SHORT_WORDS)
        sent = await self._turns.blocking(conv, {"input": text}, "send blocking", "blocking", text)
        if sent is None:
            return
        record, stop = sent
        self._last_run = record.run_id
        self._op_runs.append(record.run_id)
        if stop not in (None, "end_turn"):
            self._ledger.violate(ACCEPTED_PROCESSED, f"blocking run {record.run_id} stopped with {stop}")

    async def _cancel(self) -> None:
        conv = self._pick()
        text = self._text(LONG_WORDS)
        async with self._turns.send(conv, {"input": text, "background": self._rng.random() < 0.5}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "cancel", text)
            if not await self._read_midway(turn, record):
                return
            started = time.perf_counter()
            reply = await self._http.post(f"/v1/runs/{record.run_id}/cancel")
            self._ledger.answer("cancel run", reply.status_code, reply.text)
            self._ledger.cancel_ms.append((time.perf_counter() - started) * 1e3)
            status = reply.json().get("status") if reply.status_code == 200 else None
            # A run that ended before the cancel reached it keeps its status; any other is cancelled.
            record.expect = COMPLETED if status == "completed" else CANCELLED
            await self._turns.finish(turn, record, "end_turn" if status == "completed" else "cancelled")

    async def _resume(self) -> None:
        conv = self._pick()
        text = self._text(LONG_WORDS)
        async with self._turns.send(conv, {"input": text, "background": True}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "resume", text)
            if not await self._read_midway(turn, record):
                return
            cursor = turn.last_seq
            resumed = await self._turns.read_after(record, cursor, "end_turn")
            await self._turns.finish(turn, record, "end_turn")
        if resumed is not None:
            self._turns.compare(record, turn, resumed)

    async def _disconnect_background(self) -> None:
        conv = self._pick()
        text = self._text(LONG_WORDS)
        async with self._turns.send(conv, {"input": text, "background": True}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "disconnect_bg", text)
            if not await self._read_midway(turn, record):
                return
            cursor = turn.last_seq
        self._ledger.streams.abandoned += 1
        await self._turns.read_after(record, cursor, "end_turn")

    async def _disconnect_foreground(self) -> None:
        conv = self._pick()
        text = self._text(LONG_WORDS)
        async with self._turns.send(conv, {"input": text}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "disconnect_fg", text)
            if not await self._read_midway(turn, record):
                return
            cursor = turn.last_seq
            record.expect = CANCELLED
            record.left_at_s = time.time()
        self._ledger.streams.abandoned += 1
        await self._turns.read_after(record, cursor, None)  # cancelled, unless it had ended before the client left

    async def _tool(self) -> None:
        conv = self._pick("bench")
        text = self._text(SHORT_WORDS)
        async with self._turns.send(conv, {"input": text, "client_tools": [CLIENT_TOOL]}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "tool", text)
            await self._turns.finish(turn, record, "requires_approval")
        call_id = turn.tool_call_id()
        if call_id is None or turn.stop_reason != "requires_approval":  # e.g. its host died after the call
            await self._http.post(f"/v1/conversations/{conv.id}/cancel")  # never leave it waiting
            return
        result = {"type": "tool", "tool_call_id": call_id, "tool_return": f"result of {call_id}", "status": "success"}
        body: dict[str, Any] = {
            "messages": [{"type": "approval", "approvals": [result]}],
            "client_tools": [CLIENT_TOOL],
        }
        if self._rng.random() < 0.5:
            async with self._turns.send(conv, body, "send approval stream") as answer:
                if answer is not None:
                    await self._turns.finish(answer, self._accept(answer, conv, "tool answer", None), "end_turn")
            return
        await self._turns.blocking(conv, body, "send approval blocking", "tool answer", None)

    async def _queued(self) -> None:
        conv = self._pick()
        first, second = self._text(SHORT_WORDS), self._text(SHORT_WORDS)
        async with self._turns.send(conv, {"input": first, "background": True}) as one:
            if one is None:
                return
            first_record = self._accept(one, conv, "queued", first)
            async with self._turns.send(conv, {"input": second, "background": True}) as two:
                if two is not None:
                    await self._turns.finish(two, self._accept(two, conv, "queued", second), "end_turn")
            await self._turns.finish(one, first_record, "end_turn")

    async def _retry(self) -> None:
        conv = self._pick()
        text = self._text(SHORT_WORDS)
        url = f"/v1/conversations/{conv.id}/messages"
        headers = {"Idempotency-Key": f"soak-{self._rng.getrandbits(64):016x}"}
        async with self._turns.open("send stream", url, {"input": text}, headers=headers) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "retry", text)
            reply = await self._http.post(url, json={"input": text, "streaming": False}, headers=headers)
            answered = self._ledger.answer("send blocking, same Idempotency-Key", reply.status_code, reply.text)
            lost = lost_run(reply.status_code, reply.text)  # the run it joined failed owner_lost
            joined = reply.json()["stop_reason"]["run_id"] if answered else lost or record.run_id
            if joined != record.run_id:
                self._ledger.accept(joined, conv, "retry", None, COMPLETED)
                self._ledger.violate(
                    ACCEPTED_PROCESSED, f"a retried send started run {joined} instead of joining {record.run_id}"
                )
            await self._turns.finish(turn, record, "end_turn")

    async def _busy(self) -> None:
        conv = self._pick()
        text, refused = self._text(LONG_WORDS), self._text(SHORT_WORDS)
        async with self._turns.send(conv, {"input": text, "background": True}) as turn:
            if turn is None:
                return
            record = self._accept(turn, conv, "busy", text)
            body = {"input": refused, "on_busy": "reject", "streaming": False}
            reply = await self._http.post(f"/v1/conversations/{conv.id}/messages", json=body, headers=idempotent())
            self._ledger.bad[BUSY_REJECT][reply.status_code] += 1
            lost = lost_run(reply.status_code, reply.text)  # accepted, then its host died under it
            if reply.status_code == 200 or lost is not None:  # accepted: right only if the first had ended
                run_id = lost or reply.json()["stop_reason"]["run_id"]
                second = self._ledger.accept(run_id, conv, "busy", refused, COMPLETED, lost=lost is not None)
                await self._judge_busy_accept(record, second)
            elif reply.status_code != 409:
                self._ledger.violate(ANSWERS, f"{BUSY_REJECT}: HTTP {reply.status_code}: {reply.text[:200]}")
            await self._turns.finish(turn, record, "end_turn")

    async def _judge_busy_accept(self, first: RunRecord, second: RunRecord) -> None:
        """A reject-if-busy send accepted: fine only if the first run had ended before it was accepted
        (the client may have been slow to send it)."""
        ended = (await self._http.get(f"/v1/runs/{first.run_id}")).json().get("completed_at")
        accepted = (await self._http.get(f"/v1/runs/{second.run_id}")).json()["created_at"]
        if ended is None or datetime.fromisoformat(ended) > datetime.fromisoformat(accepted):
            self._ledger.violate(
                ANSWERS, f"{BUSY_REJECT}: run {second.run_id} accepted while run {first.run_id} was unfinished"
            )

    async def _bad(self) -> None:
        bad = BadInputs(self._http, self._pick().id, self._last_run)
        variant, status = await bad.send(self._rng)
        self._refused(variant, status)

    def _refused(self, variant: str, status: int) -> None:
        self._ledger.bad[variant][status] += 1
        if not 400 <= status < 500:
            self._ledger.violate(ANSWERS, f"bad input ({variant}): HTTP {status}, not a 4xx")
