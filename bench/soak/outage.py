"""The soak's Redis outage (``--redis-outage-s``, off by default), and how its clients ride it out.

Once, halfway through the timed workload (``Outage.run``): the embedded Redis is frozen (SIGSTOP:
it keeps its connections and answers nothing, so every client meets timeouts, not refusals) for
``--redis-outage-s``, then SIGKILLed, so ``convoy serve`` must start it again (same port, same
data). It is survived (``OUTAGE``) when serve restarted it (a new pid), the API answered healthy
again within ``RECOVERY_TIMEOUT_S`` of the kill, and a fresh turn then completed. Host faults
never overlap it, its fresh turn included (they share a lock).

Every other invariant holds through it unchanged: no run may fail and no item may be lost,
because a conversation's owner waits for Redis for ``CONVOY_STORE_OUTAGE_S`` (the server runs with
its default, ``TOLERANCE_S``). ``store_unavailable`` is excused only for a run that spanned an
outage longer than that (``excused``).

Requests the API refused meanwhile (503 ``store_unavailable`` with ``Retry-After``) are sent again
by the clients' transport (``StoreRetry``) after ``Retry-After``, unchanged: every send carries an
``Idempotency-Key`` (``bench.soak.turns``), so a send whose first answer was lost joins the
run it had started. The refusals are counted, not judged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import Progress
from bench.soak.ledger import COMPLETED, OUTAGE, STORE_UNAVAILABLE, Conversation, Ledger, Outage
from bench.soak.turns import Turns
from runtime.settings import Settings

RECOVERY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 30.0
POLL_S = 0.1
PROBE_WORDS = 5
REFUSAL_RETRY_FOR_S = 300.0  # a request refused this long is given up (answered with its last 503)
TOLERANCE_S = float(Settings.model_fields["store_outage_s"].default)  # the server runs with the default


def excused(outage: Outage | None, view: dict[str, Any]) -> bool:
    """Whether the outage excuses how this run ended: failed ``store_unavailable``, spanning an
    outage longer than the owners wait for Redis."""
    error = (view.get("metadata") or {}).get("error")
    if outage is None or outage.seconds <= TOLERANCE_S or view["status"] != "failed" or not view.get("completed_at"):
        return False
    if not isinstance(error, dict) or error.get("error_type") != STORE_UNAVAILABLE:
        return False
    created = datetime.fromisoformat(view["created_at"]).timestamp()
    ended = datetime.fromisoformat(view["completed_at"]).timestamp()
    return created <= outage.frozen_at_s + outage.seconds and ended >= outage.frozen_at_s


def _refused_by_store(response: httpx.Response, body: bytes) -> bool:
    """A 503 the API answers when Redis did not answer it (``api.errors``), in its shape or OpenAI's;
    not a run that failed (those carry no ``Retry-After``)."""
    if response.status_code != 503 or "retry-after" not in response.headers:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    error = doc.get("error") if isinstance(doc.get("error"), dict) else {}
    return "store_unavailable" in (doc.get("code"), error.get("code"))


class StoreRetry(httpx.AsyncBaseTransport):
    """Sends a request the API refused because Redis was unreachable again, unchanged, after its
    ``Retry-After`` (see the module docstring); counts each refusal in the ledger."""

    def __init__(self, inner: httpx.AsyncBaseTransport, ledger: Ledger) -> None:
        self._inner = inner
        self._ledger = ledger

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + REFUSAL_RETRY_FOR_S
        while True:
            response = await self._inner.handle_async_request(request)
            if response.status_code != 503:
                return response
            body = await response.aread()
            await response.aclose()
            if not _refused_by_store(response, body) or time.monotonic() > deadline:
                return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)
            self._ledger.store_refusals[f"{request.method} /v1/{request.url.path.split('/')[2]}"] += 1
            await asyncio.sleep(float(response.headers["retry-after"]))

    async def aclose(self) -> None:
        await self._inner.aclose()


class Injector:
    def __init__(
        self, http: httpx.AsyncClient, home: Path, ledger: Ledger, echo_agent: str, lock: asyncio.Lock, say: Progress
    ) -> None:
        self._http = http
        self._home = home
        self._ledger = ledger
        self._agent = echo_agent
        self._lock = lock  # held by host faults too: the two never overlap
        self._say = say
        self._turns = Turns(http, ledger)

    async def run(self, started: float, ends: float, seconds: float) -> None:
        """The outage, halfway between ``started`` and ``ends`` (monotonic)."""
        await asyncio.sleep(max(0.0, started + (ends - started) / 2 - time.monotonic()))
        async with self._lock:  # the probe too: a host killed under it would fail it owner_lost
            outage = await self._inject(started, seconds)
            if outage.problem is None:
                await self._probe(outage)
        self._conclude(outage)

    def _pid(self) -> int:
        return int((self._home / "redis" / "server.pid").read_text())

    async def _inject(self, started: float, seconds: float) -> Outage:
        pid = self._pid()
        outage = Outage(seconds, pid, time.monotonic() - started, time.time())
        self._ledger.outage = outage
        self._say(f"redis outage: SIGSTOP pid {pid} for {seconds:g} s, then SIGKILL (convoy serve must restart it)")
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)  # the outage itself
        finally:
            os.kill(pid, signal.SIGKILL)
        outage.killed_at_s = time.time()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while (new := self._pid()) == pid:
            if time.monotonic() > deadline:
                outage.problem = f"convoy serve started no new Redis within {RECOVERY_TIMEOUT_S:g} s"
                return outage
            await asyncio.sleep(POLL_S)
        outage.new_pid = new
        outage.back_s = time.time() - outage.killed_at_s
        while (await self._http.get("/v1/health")).status_code != 200:
            if time.monotonic() > deadline:
                outage.problem = f"the API was not healthy again within {RECOVERY_TIMEOUT_S:g} s"
                return outage
            await asyncio.sleep(POLL_S)
        outage.healthy_s = time.time() - outage.killed_at_s
        return outage

    async def _probe(self, outage: Outage) -> None:
        """A fresh turn on a new conversation must complete (bounded)."""
        reply = await self._http.post("/v1/conversations", params={"agent_id": self._agent})
        if not self._ledger.answer("create conversation", reply.status_code, reply.text):
            outage.problem = f"a conversation could not be created after the outage: HTTP {reply.status_code}"
            return
        conv: Conversation = self._ledger.conversation(reply.json()["id"], "echo")
        text = "outage-probe " + " ".join(["probe"] * (PROBE_WORDS - 1))
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S), self._turns.send(conv, {"input": text}, "outage probe stream") as probe:
                if probe is None:
                    outage.problem = "the probe turn was refused"
                    return
                record = self._ledger.accept(str(probe.run_id), conv, "outage probe", text, COMPLETED)
                await self._turns.finish(probe, record, "end_turn")
                if probe.stop_reason != "end_turn" or probe.ending_problem() is not None:
                    outage.problem = f"the probe turn stopped with {probe.stop_reason} ({probe.ending_problem()})"
                    return
        except TimeoutError:
            outage.problem = f"the probe turn was not over within {PROBE_TIMEOUT_S:g} s"
            return
        outage.probe_s = time.time() - (outage.killed_at_s or time.time())

    def _conclude(self, outage: Outage) -> None:
        if outage.survived:
            self._say(
                f"redis outage: survived: Redis back as pid {outage.new_pid} {outage.back_s:.1f} s after the kill,"
                f" API healthy at {outage.healthy_s:.1f} s, probe turn done at {outage.probe_s:.1f} s"
            )
            return
        self._say(f"redis outage: NOT survived: {outage.problem}")
        self._ledger.violate(OUTAGE, f"redis outage ({outage.seconds:g} s, pid {outage.pid}): {outage.problem}")
