"""A conversation host: one Ray actor process holding many conversation activations (the silo).

``HostCore`` is plain Python (testable without Ray); ``ConversationHost`` is the thin Ray shell.

Guarantees:

- **Activation on demand.** ``deliver(conversation_id)`` activates the conversation here if it
  can take the lease, or answers with the current owner so the caller can go there.
- **Leases kept alive in bulk.** One loop renews every lease this host holds in one round trip
  per period (a third of the TTL); an activation whose lease was lost to another owner is stopped
  at once. A renewal that could not reach Redis is tried again within a fraction of a second, not
  a period later, so that once Redis is back the owner takes back a lease that lapsed meanwhile
  (``actors.directory``) before anyone else could acquire it: an outage is not a change of owner.
- **Passivation.** An activation idle for ``idle_passivate_s`` ends, releases its lease and
  frees its memory; the next message re-activates it here or anywhere. Letting go waits for Redis
  as an owner's writes do (``CONVOY_STORE_OUTAGE_S``): a lease left behind by an activation that
  ended during an outage would refuse its own host's next activation until it expired, and a
  message accepted meanwhile would wait for a reader to wake it.
- **Woken by its doorbell.** A ring names a conversation with new mail: an active one is poked; one
  active nowhere is activated here, as ``deliver`` would (the API rings the first live host of its
  placement order: ``actors.router.wake``); one another owner holds is rung at that owner's host.
  Each heartbeat records how far the doorbell has been read, and a new incarnation reads on from
  there, so a ring that arrived while the host was down (Ray restarting it) is not lost; a ring
  whose activation failed (Redis away) is tried again until it is done, not dropped.
- **No lease without its activation.** A conversation is recorded among the host's before its
  lease is taken (so recovery finds it), and an acquisition that raised, which may have landed with
  its reply lost, is let go of at once (or before the next try): a lease naming an activation that
  does not exist would make the host refuse the conversation as its own until the lease expired.
- **Recovery after a crash.** The conversations a host owns are recorded in Redis under its name.
  When Ray restarts a dead host (same name, new incarnation), it takes those conversations over
  at once (bumping their epochs, which fences out anything the old process might still write)
  and ends their interrupted runs as ``owner_lost``. "At once" is the host's own doing: it starts
  as it is constructed (Ray runs an async actor's constructor on its event loop), trying again
  until it has, so nobody has to call it first; only a start that got through counts, so a host
  never runs without its loops (lease renewal, heartbeat, doorbell, recovery).
- **Measured.** Activations (how long each took, how many are active, why each ended), lease
  renewals and losses, and everything its conversations measure go to the host's ``Recorder``
  (``actors.metrics.RayRecorder`` in a Ray host, ``QUIET`` with ``CONVOY_RAY_METRICS`` off;
  ``runtime.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import ray
import redis.asyncio as aioredis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError

from actors.conversation import Activation, Services
from actors.directory import Directory, Held, Lease, host_of, owner_id
from actors.mailbox import Mailbox
from actors.metrics import RayRecorder
from runtime import heap, tools
from runtime.background import forever
from runtime.logs import configure_logging, log_context
from runtime.metrics import QUIET, Recorder
from runtime.providers.registry import Providers
from runtime.settings import Settings
from runtime.store import keyspace, replies
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.connection import close_dedicated, connect, dedicated
from runtime.store.fencing import through_outage
from runtime.store.history import HistoryStore
from runtime.store.runs import RunStore

log = logging.getLogger(__name__)

HEARTBEAT_PERIOD_S = 2.0
BELL_BATCH = 512
BELL_MAXLEN = 10_000  # rings kept per doorbell (trimmed approximately)
BELL_RETRY = EqualJitterBackoff(cap=0.2, base=0.05)
RING_RETRY = EqualJitterBackoff(cap=1.0, base=0.05)  # a ring whose activation failed, tried again
# After a renewal that failed, the next one comes after this backoff (jittered, doubling), not a period.
RENEW_RETRY = EqualJitterBackoff(cap=0.5, base=0.05)


class HostClosingError(Exception):
    """A dedicated host that is about to exit refuses new work (the router creates a new one)."""


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        for line in open("/proc/self/status"):  # noqa: SIM115 - tiny procfs read
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def ring(redis: aioredis.Redis, host: str, conversation_id: str) -> None:
    """Tell ``host`` that ``conversation_id`` has new mail: one append to its doorbell (module docstring)."""
    await redis.xadd(keyspace.host_bell(host), {"c": conversation_id}, maxlen=BELL_MAXLEN)


class HostCore:
    def __init__(self, name: str, settings: Settings, *, exit_when_idle: bool = False, metrics: Recorder = QUIET) -> None:
        self.name = name
        self._metrics = metrics
        self._exit_when_idle = exit_when_idle
        self.incarnation = uuid.uuid4().hex[:12]
        self._activation_seq = 0
        self._settings = settings
        self._activations: dict[str, Activation] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._activating: dict[str, asyncio.Future[str]] = {}
        # Conversation -> the owner id of its activation that is letting go here (``_release``).
        self._letting_go: dict[str, str] = {}
        # Conversation -> an owner id whose acquisition raised: it may have landed (``_disown``).
        self._unacquired: dict[str, str] = {}
        self._services: Services | None = None
        self._directory: Directory | None = None
        self._background: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[object]] = set()
        self._closing = False
        self._bell_cursor = "0-0"  # the last doorbell entry read (recorded by each heartbeat)
        self._started = asyncio.Lock()
        self.started_at = time.time()

    async def start(self) -> None:
        """Connect, read where the doorbell reading got to and start the background loops; once.

        Nothing of an attempt that failed is kept (its client is closed): ``ConversationHost`` calls
        again until one gets through, and the host counts as started (``_services`` set) only with
        its loops running. A host marked started by an attempt whose Redis read failed would answer
        calls for ever with no lease renewal, heartbeat, doorbell or recovery."""
        async with self._started:
            if self._services is not None:
                return
            s = self._settings
            redis = connect(s)
            try:
                # Where the previous incarnation's doorbell reading got to, before a heartbeat of
                # ours replaces its record (module docstring).
                beat = await redis.hget(keyspace.hosts(), self.name)
                bell_cursor = str(json.loads(beat).get("bell") or "0-0") if beat else "0-0"
                services = self._services_on(redis)
            except BaseException:
                with contextlib.suppress(Exception):
                    await redis.aclose()
                raise
            # From here on nothing awaits: the host is started with its loops, or not at all.
            self._services, self._bell_cursor = services, bell_cursor
            self._directory = Directory(redis, lease_ttl_ms=s.lease_ttl_ms)
            heap.freeze()  # set up: keep what it made out of every later collection (runtime.heap)
            self._background = [
                asyncio.create_task(forever("lease renewal", self._renew, retry=RENEW_RETRY), name="lease-renewal"),
                asyncio.create_task(forever("heartbeat", self._heartbeat), name="heartbeat"),
                asyncio.create_task(self._recover(), name="recovery"),
                asyncio.create_task(self._bell_loop(), name="doorbell"),
            ]

    def _services_on(self, redis: aioredis.Redis) -> Services:
        """What this host's activations share, on ``redis`` (the model SDKs loaded now rather than on
        a turn's path)."""
        s = self._settings
        providers = Providers(s)
        providers.warm()
        return Services(
            redis=redis,
            settings=s,
            mailbox=Mailbox(redis),
            runs=RunStore(redis, ttl_s=s.stream_ttl_s, maxlen=s.stream_maxlen),
            history=HistoryStore(redis),
            agents=AgentStore(redis),
            conversations=ConversationStore(redis),
            models=providers.model,
            tools=tools.load(s.tool_modules),
            metrics=self._metrics,
        )

    async def stop(self) -> None:
        """Stop every activation and background loop and close the connections; an activation
        stopped mid-turn leaves its run to its conversation's next owner (``owner_lost``). (A Ray
        host is simply killed; this is for a host run in plain Python.)"""
        self._closing = True
        tasks = [*self._background, *self._workers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._services is not None:
            await self._services.redis.aclose()

    # -- messages from the API -------------------------------------------------------------

    async def deliver(self, conversation_id: str) -> str:
        """Make sure the conversation is active here and looks at its mailbox.

        Returns ``"ok"``, or ``"owner:<owner id>"`` when another activation holds it.
        """
        await self.start()
        return await self._deliver(conversation_id)

    async def _deliver(self, conversation_id: str) -> str:
        if self._closing:
            raise HostClosingError(f"{self.name} is leaving; create it again")
        activation = self._activations.get(conversation_id)
        if activation is not None:
            activation.poke()
            return "ok"
        pending = self._activating.get(conversation_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._activating[conversation_id] = future
        try:
            result = await self._activate(conversation_id)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiting callers get it, nobody else logs it
            raise
        finally:
            del self._activating[conversation_id]

    async def cancel(self, conversation_id: str, run_id: str) -> bool:
        activation = self._activations.get(conversation_id)
        if activation is None:
            log.info("cancel: conversation not active here", extra={"run_id": run_id, "host": self.name})
            return False
        return activation.cancel(run_id)

    async def stats(self) -> dict[str, Any]:
        await self.start()
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname(),
            "activations": len(self._activations),
            "running": sum(1 for a in self._activations.values() if a.current_run),
            "rss_bytes": _rss_bytes(),
            "settings": self._settings.fingerprint(),  # which settings it was started with
        }

    # -- activation lifecycle ---------------------------------------------------------------

    async def _activate(self, conversation_id: str) -> str:
        """Take the conversation's lease and start its activation, or name the owner holding it.

        The conversation is recorded among this host's before its lease is taken, so a host that
        dies holding it recovers it; a previous activation still letting go of it is waited for
        (its let-go delivers what arrived meanwhile), so its unrecording cannot follow this one's
        recording. An acquisition that raised may still have landed: its lease is let go
        (``_disown``) before anything else is tried here."""
        assert self._directory is not None and self._services is not None
        letting_go = self._letting_go.get(conversation_id)
        if letting_go is not None:
            return f"owner:{letting_go}"
        started = time.perf_counter()
        await self._forget_unacquired(conversation_id)
        self._activation_seq += 1
        owner = owner_id(self.name, self.incarnation, self._activation_seq)
        redis = self._services.redis
        await redis.sadd(keyspace.host_conversations(self.name), conversation_id)
        try:
            got = await self._directory.acquire(conversation_id, owner)
        except BaseException:
            await self._disown(conversation_id, owner)
            raise
        if isinstance(got, Held):
            if host_of(got.owner) != self.name:
                # Not ours: recovery need not look at it (a leftover entry costs one call there).
                with contextlib.suppress(RedisError):
                    await redis.srem(keyspace.host_conversations(self.name), conversation_id)
            return f"owner:{got.owner}"
        self._start_worker(got)
        self._metrics.activated(time.perf_counter() - started)
        return "ok"

    async def _disown(self, conversation_id: str, owner: str) -> None:
        """Let go of a lease whose acquisition raised (its reply lost to a broken connection, or its
        caller cancelled after it left): if it landed, it names an activation that does not exist,
        and this host would refuse the conversation as "held by me" until it expired while its
        messages waited. The release deletes only a lease ``owner`` holds; if it cannot reach Redis
        now, the next activation of the conversation here does it first (``_forget_unacquired``)."""
        self._unacquired[conversation_id] = owner
        with contextlib.suppress(Exception):
            await asyncio.shield(self._forget_unacquired(conversation_id))

    async def _forget_unacquired(self, conversation_id: str) -> None:
        """Release the lease an acquisition that raised may have left (``_disown``), if any."""
        assert self._directory is not None
        owner = self._unacquired.get(conversation_id)
        if owner is None:
            return
        await self._directory.disown(conversation_id, owner)
        if self._unacquired.get(conversation_id) == owner:
            del self._unacquired[conversation_id]

    def _start_worker(self, lease: Lease) -> None:
        assert self._services is not None
        activation = Activation(lease, self._services)
        self._activations[lease.conversation_id] = activation
        self._metrics.conversations_active(len(self._activations))
        with log_context(conversation_id=lease.conversation_id):  # every line of the activation's task
            task = asyncio.create_task(self._work(activation), name=f"conv:{lease.conversation_id}")
        self._workers[lease.conversation_id] = task

    async def _work(self, activation: Activation) -> None:
        try:
            self._metrics.deactivated(await activation.run())
        except asyncio.CancelledError:
            raise  # a lease lost (counted by the renewal that found it) or the host stopping
        except Exception:
            self._metrics.deactivated("crashed")
            log.exception("activation crashed")
        finally:
            await self._deactivate(activation)

    async def _deactivate(self, activation: Activation) -> None:
        conv = activation.conversation_id
        if self._activations.get(conv) is activation:
            del self._activations[conv]
            self._workers.pop(conv, None)
            self._metrics.conversations_active(len(self._activations))
        assert self._directory is not None and self._services is not None
        with contextlib.suppress(Exception):
            await asyncio.shield(self._release(activation.lease))

    async def _release(self, lease: Lease) -> None:
        assert self._directory is not None and self._services is not None
        services, directory = self._services, self._directory

        async def let_go() -> int:  # each step idempotent: done again while Redis is unreachable
            await services.redis.srem(keyspace.host_conversations(self.name), lease.conversation_id)
            await directory.release(lease)
            return await services.mailbox.depth(lease.conversation_id)

        # However long Redis is away: until the lease is gone, a message for this conversation rings
        # this host, which will not activate it again meanwhile (``_activate``); the depth read
        # afterwards delivers whatever was accepted meanwhile.
        self._letting_go[lease.conversation_id] = lease.owner
        try:
            depth = await through_outage(let_go, patience_s=math.inf, what="letting a conversation go")
        finally:
            if self._letting_go.get(lease.conversation_id) == lease.owner:
                del self._letting_go[lease.conversation_id]
        # A message accepted while we were letting go must not wait for the next sender.
        if depth:
            await self._deliver(lease.conversation_id)
        elif self._exit_when_idle and not self._activations and not self._activating:
            self._closing = True  # from here on, new work is refused (the caller re-creates us)
            await self._services.redis.hdel(keyspace.hosts(), self.name)
            await self._services.redis.delete(keyspace.host_bell(self.name))
            # A dedicated host has nothing left to do: leave for good (no restart).
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _recover(self) -> None:
        """Take over what earlier incarnations of this host owned (see the module docstring)."""
        assert self._services is not None
        redis = self._services.redis
        members = await through_outage(
            lambda: redis.smembers(keyspace.host_conversations(self.name)), patience_s=math.inf, what="recovery"
        )
        for raw in members:
            conv = replies.text(raw)
            try:
                await self._deliver(conv)
            except Exception:
                log.exception("recovery failed; trying again", extra={"conversation_id": conv})
                self._spawn(self._answer_ring(conv), name=f"recover:{conv}")  # tried until it is done

    # -- background loops -------------------------------------------------------------------

    async def _renew(self) -> float:
        """One renewal of every lease this host holds; an activation whose lease another owner took
        is stopped (see ``actors.directory``). A failed renewal is tried again within a fraction
        of a second (``RENEW_RETRY``), so the owner takes a lapsed lease back before anyone else."""
        assert self._directory is not None
        held = [a.lease for a in self._activations.values()]
        lost = await self._directory.renew(held)
        self._metrics.leases_renewed(len(held) - len(lost), len(lost))
        for lease in lost:
            activation = self._activations.get(lease.conversation_id)
            task = self._workers.get(lease.conversation_id)
            # Only the activation that held this lease: it may have been replaced meanwhile.
            if activation is not None and activation.lease == lease and task is not None:
                log.warning("lease lost to another owner", extra={"conversation_id": lease.conversation_id})
                self._metrics.deactivated("lease_lost")
                task.cancel()
        return self._settings.lease_ttl_ms / 3000

    async def _bell_loop(self) -> None:
        """Read this host's doorbell: each ring names a conversation with new mail (module
        docstring). A new incarnation reads on from where its predecessor's last heartbeat says it
        had got to; a host that has never beaten reads the whole doorbell."""
        assert self._services is not None
        redis = self._services.redis
        bell = keyspace.host_bell(self.name)
        reader = dedicated(redis)

        async def ring() -> float:
            reply = await reader.xread({bell: self._bell_cursor}, block=self._settings.read_block_ms, count=BELL_BATCH)
            for _, entries in replies.streams(reply):
                self._bell_cursor = entries[-1][0].decode()
                for conv in {fields[b"c"].decode() for _, fields in entries}:
                    activation = self._activations.get(conv)
                    if activation is not None:
                        activation.poke()
                    else:
                        self._spawn(self._answer_ring(conv), name=f"ring:{conv}")
            return 0.0

        try:
            await forever("doorbell", ring, retry=BELL_RETRY)  # a dead doorbell would strand messages
        finally:
            await close_dedicated(reader, redis)

    async def _answer_ring(self, conversation_id: str) -> None:
        """Activate a rung conversation here, or ring the host of the owner that holds it; tried
        again (``RING_RETRY``) until it is done: the ring was read, and nothing else would wake a
        conversation nobody owns. Only a host that is leaving stops trying (a dedicated host: the
        router creates it again)."""

        async def answer() -> None:
            try:
                reply = await self._deliver(conversation_id)
            except HostClosingError:
                return
            owner_host = host_of(reply.removeprefix("owner:")) if reply.startswith("owner:") else self.name
            if owner_host != self.name:
                assert self._services is not None
                await ring(self._services.redis, owner_host, conversation_id)

        await forever("answering a ring", answer, retry=RING_RETRY)

    def _spawn(self, work: Coroutine[Any, Any, object], *, name: str) -> None:
        """Run ``work`` in the background, keeping a reference and logging its failure."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[object]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background work failed", extra={"task": name, "error": repr(t.exception())})

        task.add_done_callback(done)

    async def _heartbeat(self) -> float:
        assert self._services is not None
        beat = {
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "ts": time.time(),
            "activations": len(self._activations),
            "bell": self._bell_cursor,
        }
        await self._services.redis.hset(keyspace.hosts(), self.name, json.dumps(beat))
        return HEARTBEAT_PERIOD_S


@ray.remote
class ConversationHost:
    """Ray shell around ``HostCore``; see ``actors.supervisor`` for how hosts are created."""

    def __init__(self, name: str, settings: Settings, exit_when_idle: bool = False) -> None:
        configure_logging(settings)
        metrics = RayRecorder() if settings.ray_metrics else QUIET
        self._core = HostCore(name, settings, exit_when_idle=exit_when_idle, metrics=metrics)
        # Ray runs an async actor's constructor on the actor's event loop: start now (module docstring).
        self._starting = asyncio.get_running_loop().create_task(forever("host start", self._start), name="host-start")

    async def _start(self) -> None:
        """One try at starting; ``forever`` tries again after a failure, and stops after a success."""
        await self._core.start()

    async def ready(self) -> dict[str, Any]:
        return await self._core.stats()

    async def deliver(self, conversation_id: str) -> str:
        return await self._core.deliver(conversation_id)

    async def cancel(self, conversation_id: str, run_id: str) -> bool:
        return await self._core.cancel(conversation_id, run_id)

    async def stats(self) -> dict[str, Any]:
        return await self._core.stats()
