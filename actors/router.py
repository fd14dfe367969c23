"""How an API replica reaches a conversation's activation: the directory first, placement second.

``deliver`` only tells a host to look at the conversation's mailbox; the message itself is
already durable in Redis. So a host that is down (Ray is restarting it) never loses a message:
when it comes back it takes over its conversations and processes their mailboxes. Delivery
therefore succeeds as soon as one live host has either activated the conversation or named a
current owner, and fails (``UnavailableError``) only when no host answers at all.

``wake`` is how an accepted turn reaches a conversation nobody owns, without a Ray call: one append
to the doorbell of the first host in the conversation's placement order whose heartbeat is fresh
(``HOST_FRESH_S``; the hosts' heartbeats are read at most every ``LIVE_HOSTS_TTL_S``), which
activates it as ``deliver`` would (``actors.host``). A host that dies after the ring reads it when
Ray has restarted it: a new incarnation reads its doorbell from where its predecessor's last
heartbeat says it had got to. With no fresh host (all down, or a placement of dedicated hosts)
``wake`` is ``deliver``.

A host's handle is cached by name. A call through it that finds its actor gone (a dedicated host
that passivated and was created again, maybe by another replica, is a new actor under the same
name) drops it; ``cancel`` then looks the host up again and asks once more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import ray
import redis.asyncio as aioredis
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from redis.exceptions import RedisError

from actors import placement
from actors.directory import Directory, host_of
from actors.host import HEARTBEAT_PERIOD_S, ring
from actors.supervisor import dedicated_host, dedicated_name, host_names
from runtime.errors import UnavailableError
from runtime.settings import Settings
from runtime.store import keyspace, replies

log = logging.getLogger(__name__)

MAX_HOPS = 4
DEDICATED_RETRY_S = 0.05
CALL_TIMEOUT_S = 10.0
HOST_FRESH_S = 3 * HEARTBEAT_PERIOD_S  # a host whose last heartbeat is older is taken for down
LIVE_HOSTS_TTL_S = 1.0  # how long a read of the hosts' heartbeats is reused
_UNREACHABLE = (ActorDiedError, ActorUnavailableError, RayActorError, TimeoutError)
# A call that failed because the handle's actor is gone: the name may hold a new actor by now.
_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)

ActorLookup = Callable[[str], ActorHandle[Any]]
"""Finds a live actor by name (``ray.get_actor`` in the cluster's namespace); ``ValueError`` if none."""


class ConversationRouter:
    def __init__(
        self, settings: Settings, directory: Directory, redis: aioredis.Redis, *, lookup: ActorLookup | None = None
    ) -> None:
        self._settings = settings
        self._directory = directory
        self._redis = redis
        self._lookup: ActorLookup = lookup or partial(ray.get_actor, namespace=settings.ray_namespace)
        self._handles: dict[str, ActorHandle[Any]] = {}  # hosts, called by method name
        self._live: tuple[float, frozenset[str]] = (-LIVE_HOSTS_TTL_S, frozenset())  # (read at, hosts)
        self._reading: asyncio.Task[frozenset[str]] | None = None

    async def _handle(self, name: str) -> ActorHandle[Any]:
        handle = self._handles.get(name)
        if handle is None:
            # ray.get_actor is a blocking GCS lookup: keep it off the event loop.
            handle = await asyncio.to_thread(self._lookup, name)
            self._handles[name] = handle
        return handle

    async def _call(self, name: str, method: str, *args: object) -> object:
        ref = getattr(await self._handle(name), method).remote(*args)
        return await asyncio.wait_for(ref, CALL_TIMEOUT_S)

    async def _call_current(self, name: str, method: str, *args: object) -> object:
        """``_call``, made once more through a handle looked up again if the cached one's actor is
        gone: a host created again under its name (a dedicated host that passivated and came back,
        maybe through another replica) is a new actor, which the old handle never reaches."""
        try:
            return await self._call(name, method, *args)
        except _GONE as exc:
            log.info("host handle stale; looking the host up again", extra={"host": name, "error": type(exc).__name__})
            self._handles.pop(name, None)
            return await self._call(name, method, *args)

    async def deliver(self, conversation_id: str) -> str:
        """Wake the conversation's owner (activating it if needed); returns the host that answered."""
        if self._settings.placement == "dedicated":
            return await self._deliver_dedicated(conversation_id)
        owner = await self._directory.owner(conversation_id)
        queue = [host_of(owner)] if owner else []
        queue += [h for h in placement.ranked(conversation_id, host_names(self._settings)) if h not in queue]
        tried: set[str] = set()
        for _ in range(MAX_HOPS + len(queue)):
            if not queue:
                break
            name = queue.pop(0)
            if name in tried:
                continue
            tried.add(name)
            try:
                reply = str(await self._call(name, "deliver", conversation_id))
            except _UNREACHABLE as exc:
                log.warning("host unreachable", extra={"host": name, "error": type(exc).__name__})
                self._handles.pop(name, None)
                continue
            except ValueError:  # ray.get_actor: no such actor (yet)
                continue
            if reply == "ok":
                return name
            owner_host = host_of(reply.removeprefix("owner:"))
            if owner_host in tried:
                return owner_host  # owned by a host that is restarting: it recovers the mailbox itself
            queue.insert(0, owner_host)
        raise UnavailableError(f"no conversation host could take conversation {conversation_id}")

    async def wake(self, conversation_id: str) -> None:
        """Wake a conversation nobody owns: a ring at the first live host of its placement order,
        else ``deliver`` (module docstring)."""
        if self._settings.placement != "dedicated":
            try:
                live = await self._live_hosts()
            except RedisError as exc:  # e.g. the primary holding the heartbeats is away: a Ray call then
                log.warning("hosts' heartbeats unreadable; waking by a call", extra={"error": repr(exc)})
                live = frozenset()
            for name in placement.ranked(conversation_id, host_names(self._settings)):
                if name in live:
                    await ring(self._redis, name, conversation_id)
                    return
        await self.deliver(conversation_id)

    async def _live_hosts(self) -> frozenset[str]:
        """The hosts whose heartbeat is fresh, read at most every ``LIVE_HOSTS_TTL_S`` (one read for
        all the callers that ask meanwhile)."""
        read_at, live = self._live
        if time.monotonic() - read_at < LIVE_HOSTS_TTL_S:
            return live
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read_live_hosts())
            self._reading.add_done_callback(lambda _: setattr(self, "_reading", None))
        return await asyncio.shield(self._reading)

    async def _read_live_hosts(self) -> frozenset[str]:
        beats = await self._redis.hgetall(keyspace.hosts())
        now = time.time()
        live = frozenset(
            replies.text(name) for name, raw in beats.items() if now - float(json.loads(raw).get("ts", 0)) < HOST_FRESH_S
        )
        self._live = (time.monotonic(), live)
        return live

    async def ring(self, owner: str, conversation_id: str) -> None:
        """Wake a conversation that is already active: one append to its host's doorbell stream,
        which the host reads with a blocking XREAD (no Ray call). If that host is gone, the
        conversation is recovered like any other of its conversations (see ``actors.host``)."""
        await ring(self._redis, host_of(owner), conversation_id)

    async def _deliver_dedicated(self, conversation_id: str) -> str:
        name = dedicated_name(conversation_id)
        for attempt in range(MAX_HOPS):
            handle = await asyncio.to_thread(dedicated_host, self._settings, conversation_id)
            try:
                await asyncio.wait_for(handle.deliver.remote(conversation_id), CALL_TIMEOUT_S)
                self._handles[name] = handle
                return name
            except (*_UNREACHABLE, RayTaskError):
                # It was just leaving (passivated, refusing new work): create it again.
                await asyncio.sleep(DEDICATED_RETRY_S * (attempt + 1))
        raise UnavailableError(f"the host of conversation {conversation_id} could not be started")

    async def cancel(self, conversation_id: str, run_id: str, run_owner: str | None = None) -> bool:
        """Cancel a running turn at its owner; False if no owner is running it. The lease names the
        owner; while it has lapsed (Redis was unreachable, and the owner has not taken it back
        yet: ``actors.directory``), ``run_owner``, the owner the run's record names, is asked."""
        owner = await self._directory.owner(conversation_id) or run_owner
        if owner is None:
            log.info("cancel: conversation has no owner", extra={"run_id": run_id})
            return False
        try:
            reached = bool(await self._call_current(host_of(owner), "cancel", conversation_id, run_id))
        except (*_UNREACHABLE, ValueError) as exc:
            log.warning("cancel: owner unreachable", extra={"run_id": run_id, "owner": owner, "error": repr(exc)})
            self._handles.pop(host_of(owner), None)  # the next call looks it up again
            return False
        if not reached:
            log.info("cancel: owner is not running it", extra={"run_id": run_id, "owner": owner})
        return reached

    async def hosts_alive(self, timeout_s: float = 2.0) -> int:
        """How many hosts answer a trivial call within ``timeout_s`` (for health checks)."""

        async def one(name: str) -> bool:
            try:
                await asyncio.wait_for(self._call_ready(name), timeout_s)
                return True
            except (*_UNREACHABLE, ValueError):
                self._handles.pop(name, None)
                return False

        results = await asyncio.gather(*(one(n) for n in host_names(self._settings)))
        return sum(results)

    async def _call_ready(self, name: str) -> None:
        await (await self._handle(name)).ready.remote()

    async def ray_alive(self, timeout_s: float = 2.0) -> bool:
        """Whether the Ray cluster answers (its GCS lists at least one live node)."""
        try:
            nodes = await asyncio.wait_for(asyncio.to_thread(ray.nodes), timeout_s)
        except Exception:  # noqa: BLE001 - any failure to answer means the cluster does not
            return False
        return any(node.get("Alive") for node in nodes)
