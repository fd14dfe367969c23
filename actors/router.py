"""How an API replica reaches a conversation's activation: the directory first, placement second.

``deliver`` only tells a host to look at the conversation's mailbox; the message itself is
already durable in Redis. So a host that is down (Ray is restarting it) never loses a message:
when it comes back it takes over its conversations and processes their mailboxes. Delivery
therefore succeeds as soon as one live host has either activated the conversation or named a
current owner, and fails (``UnavailableError``) only when no host answers at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
import redis.asyncio as aioredis
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from actors import placement
from actors.directory import Directory, host_of
from actors.supervisor import dedicated_host, dedicated_name, host_names
from runtime.errors import UnavailableError
from runtime.settings import Settings
from runtime.store import keyspace

log = logging.getLogger(__name__)

MAX_HOPS = 4
DEDICATED_RETRY_S = 0.05
BELL_MAXLEN = 10_000
CALL_TIMEOUT_S = 10.0
_UNREACHABLE = (ActorDiedError, ActorUnavailableError, RayActorError, TimeoutError)


class ConversationRouter:
    def __init__(self, settings: Settings, directory: Directory, redis: aioredis.Redis) -> None:
        self._settings = settings
        self._directory = directory
        self._redis = redis
        self._handles: dict[str, ActorHandle[Any]] = {}  # hosts, called by method name

    async def _handle(self, name: str) -> ActorHandle[Any]:
        handle = self._handles.get(name)
        if handle is None:
            # ray.get_actor is a blocking GCS lookup: keep it off the event loop.
            handle = await asyncio.to_thread(ray.get_actor, name, namespace=self._settings.ray_namespace)
            self._handles[name] = handle
        return handle

    async def _call(self, name: str, method: str, *args: object) -> object:
        ref = getattr(await self._handle(name), method).remote(*args)
        return await asyncio.wait_for(ref, CALL_TIMEOUT_S)

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

    async def ring(self, owner: str, conversation_id: str) -> None:
        """Wake a conversation that is already active: one append to its host's doorbell stream,
        which the host reads with a blocking XREAD (no Ray call). If that host is gone, the
        conversation is recovered like any other of its conversations (see ``actors.host``)."""
        await self._redis.xadd(keyspace.host_bell(host_of(owner)), {"c": conversation_id}, maxlen=BELL_MAXLEN)

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
            reached = bool(await self._call(host_of(owner), "cancel", conversation_id, run_id))
        except (*_UNREACHABLE, ValueError) as exc:
            log.warning("cancel: owner unreachable", extra={"run_id": run_id, "owner": owner, "error": repr(exc)})
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
