"""Faults the soak injects while its clients work: a conversation host SIGKILLed every
``--fault-every-s`` seconds, round-robin over the hosts, and whether Convoy survived each one.

One fault (``Injector.inject``):

1. **canary**: a long turn (echo model) on one of the injector's own conversations, placed on the
   host by the rendezvous placement the router uses, read until it streams. The host killed is
   the one the conversation's lease names (the intended one, unless placement had to move it);
2. **kill**: SIGKILL of that host's process (the pid in its heartbeat). The conversations it held
   are noted: its ``host_conversations`` set read just before and just after the kill, so an
   activation racing with the kill is in one of them;
3. **recovery**: Ray restarts the host, and a new pid heartbeats within ``RECOVERY_TIMEOUT_S``;
4. **probe**: once the canary's stream has ended, a fresh turn on its conversation (the killed
   host held it) completes with ``end_turn``, its stream ending right, within ``PROBE_TIMEOUT_S``.

A fault is survived when 3 and 4 happen (``FAULTS``). The canary must end ``failed`` with
``owner_lost``; the injector's conversations and runs are in the ledger like the clients', so every
other invariant covers them too. Faults never overlap: each is resolved before the next is due (a
slow recovery delays the next one), and none runs during the Redis outage (``outage``).

What a fault excuses (``excused``), and nothing else: a run that ended ``failed`` with
``error_type`` ``owner_lost`` whose conversation the killed host held and whose lifetime spans the
kill (accepted before it, ended after it: only a run the dead process had started can be left
``running`` for the next incarnation to end; one accepted later is queued and runs normally). Its
stream must still end with the terminal sequence (``stop_reason``, ``error``, ``[DONE]``):
``STREAMS_END`` is not relaxed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime
from typing import Any

import httpx
import redis.asyncio as aioredis

from actors import placement
from actors.directory import host_of
from bench import Progress
from bench.soak.keyspace import host_names
from bench.soak.ledger import (
    COMPLETED,
    FAULTS,
    LOST_ONLY,
    OWNER_LOST,
    STREAMS_END,
    Conversation,
    Fault,
    Ledger,
    RunRecord,
)
from bench.soak.sse import Transcript
from bench.soak.turns import Turns
from runtime.store import keyspace

RECOVERY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 30.0
POLL_S = 0.1
CANARY_WORDS = 500  # ~10 s of echo at 20 ms a word: still streaming when its host dies
PROBE_WORDS = 5
PLACEMENT_TRIES = 32  # conversations created, at most, to find one placed on a given host


def lost(view: dict[str, Any]) -> bool:
    """Whether the server's view of a run says it failed ``owner_lost``."""
    error = (view.get("metadata") or {}).get("error")
    return view["status"] == "failed" and isinstance(error, dict) and error.get("error_type") == OWNER_LOST


def excused(faults: list[Fault], conversation_id: str, view: dict[str, Any]) -> bool:
    """Whether a fault excuses how this run ended (see the module docstring)."""
    if not lost(view) or not view.get("completed_at"):
        return False
    created = datetime.fromisoformat(view["created_at"]).timestamp()
    ended = datetime.fromisoformat(view["completed_at"]).timestamp()
    return any(conversation_id in f.held and created <= f.killed_at_s <= ended for f in faults)


class Injector:
    def __init__(
        self, http: httpx.AsyncClient, redis: aioredis.Redis, ledger: Ledger, echo_agent: str, lock: asyncio.Lock, say: Progress
    ) -> None:
        self._http = http
        self._redis = redis
        self._ledger = ledger
        self._agent = echo_agent
        self._lock = lock  # held by the Redis outage too (``outage``): the two never overlap
        self._say = say
        self._turns = Turns(http, ledger)
        self._canaries: dict[str, Conversation] = {}  # host -> the injector's conversation placed there

    async def run(self, started: float, ends: float, every_s: float) -> None:
        """One fault now, then one every ``every_s``, until ``ends`` (monotonic)."""
        due = time.monotonic()
        while due < ends:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            async with self._lock:
                await self.inject(started)
            due += every_s

    async def inject(self, started: float) -> None:
        number = len(self._ledger.faults) + 1
        hosts = sorted(await host_names(self._redis))
        target = hosts[(number - 1) % len(hosts)] if hosts else ""
        conv = await self._canary(target, hosts) if hosts else None
        if conv is None:
            self._ledger.violate(FAULTS, f"fault {number}: no host heartbeats, or no conversation for the canary")
            return
        text = f"fault{number}-canary " + " ".join(["canary"] * (CANARY_WORDS - 1))
        async with self._turns.send(conv, {"input": text}, "fault canary stream") as canary:
            if canary is None:
                self._ledger.violate(FAULTS, f"fault {number}: the canary turn was refused")
                return
            record = self._ledger.accept(str(canary.run_id), conv, "fault canary", text, LOST_ONLY)
            await canary.read_until(lambda t: t.count("assistant_message") > 0)
            fault = await self._kill(conv.id, target, started)
            self._say(
                f"fault {number}: SIGKILL {fault.host} pid {fault.pid} while canary run {record.run_id} streamed"
                f" ({len(fault.held)} conversation(s) held)"
            )
            await self._recover(fault)
            await self._end_canary(canary, record)
        if fault.problem is None:
            await self._probe(fault, conv, number)
        self._conclude(number, fault)

    async def _canary(self, target: str, hosts: list[str]) -> Conversation | None:
        """The injector's conversation placed on ``target`` (created on first use)."""
        for _ in range(PLACEMENT_TRIES):
            if target in self._canaries:
                break
            reply = await self._http.post("/v1/conversations", params={"agent_id": self._agent})
            if not self._ledger.answer("create conversation", reply.status_code, reply.text):
                break
            conv = self._ledger.conversation(reply.json()["id"], "echo")
            self._canaries.setdefault(placement.choose(conv.id, hosts), conv)
        return self._canaries.get(target) or next(iter(self._canaries.values()), None)

    async def _kill(self, conversation_id: str, target: str, started: float) -> Fault:
        owner = await self._redis.get(keyspace.lease(conversation_id))
        holder = host_of(owner.decode()) if owner else target
        hosts = await host_names(self._redis)
        host = holder if holder in hosts else target
        before = await self._held(host)
        killed_at_s = time.time()
        fault = Fault(host, hosts[host], time.monotonic() - started, killed_at_s, frozenset())
        self._ledger.faults.append(fault)
        try:
            os.kill(fault.pid, signal.SIGKILL)
        except OSError as exc:
            fault.problem = f"could not kill pid {fault.pid}: {exc}"
        fault.held = frozenset(before | await self._held(host))
        if conversation_id not in fault.held:
            fault.problem = f"the canary's conversation {conversation_id} was not listed as held by {host}"
        return fault

    async def _held(self, host: str) -> set[str]:
        return {m.decode() for m in await self._redis.smembers(keyspace.host_conversations(host))}

    async def _recover(self, fault: Fault) -> None:
        """Wait (bounded) for the host to heartbeat with a new pid."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while (pid := (await host_names(self._redis)).get(fault.host)) in (fault.pid, None):
            if time.monotonic() > deadline:
                fault.problem = fault.problem or f"no new pid heartbeated within {RECOVERY_TIMEOUT_S:g} s"
                return
            await asyncio.sleep(POLL_S)
        fault.new_pid = pid
        fault.recovered_s = time.time() - fault.killed_at_s

    async def _end_canary(self, canary: Transcript, record: RunRecord) -> None:
        """Read the canary to its end (bounded): its host came back, so its run must have ended."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self._turns.finish(canary, record, None)
        except TimeoutError:
            self._ledger.violate(
                STREAMS_END, f"fault canary run {record.run_id}: not over {PROBE_TIMEOUT_S:g} s after its host came back"
            )

    async def _probe(self, fault: Fault, conv: Conversation, number: int) -> None:
        """A fresh turn on a conversation the killed host held must complete (bounded)."""
        text = f"fault{number}-probe " + " ".join(["probe"] * (PROBE_WORDS - 1))
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                async with self._turns.send(conv, {"input": text}, "fault probe stream") as probe:
                    if probe is None:
                        fault.problem = "the probe turn was refused"
                        return
                    record = self._ledger.accept(str(probe.run_id), conv, "fault probe", text, COMPLETED)
                    await self._turns.finish(probe, record, "end_turn")
                    problem = probe.ending_problem()
                    if probe.stop_reason != "end_turn" or problem is not None:
                        fault.problem = f"the probe turn stopped with {probe.stop_reason} ({problem})"
                        return
        except TimeoutError:
            fault.problem = f"the probe turn was not over within {PROBE_TIMEOUT_S:g} s"
            return
        fault.probe_s = time.time() - fault.killed_at_s

    def _conclude(self, number: int, fault: Fault) -> None:
        if fault.survived:
            self._say(
                f"fault {number}: survived: {fault.host} back as pid {fault.new_pid} {fault.recovered_s:.1f} s"
                f" after the kill; probe turn done at {fault.probe_s:.1f} s"
            )
            return
        self._say(f"fault {number}: NOT survived: {fault.problem}")
        self._ledger.violate(FAULTS, f"fault {number} ({fault.host} pid {fault.pid}): {fault.problem}")
