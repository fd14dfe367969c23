"""The conversation directory: who owns a conversation, and the fencing epoch that proves it.

Guarantees:

- **Single owner.** A conversation's lease key holds the id of at most one activation. It is
  taken atomically (one script) and expires unless its owner renews it, so a dead owner frees
  the conversation after at most ``lease_ttl_ms``.
- **Fencing.** Every acquisition bumps the conversation's epoch. The owner stamps every write with
  the epoch it got (run stream items, run status, history, mailbox acks); the scripts that write
  refuse a stale epoch. A paused or partitioned ex-owner therefore cannot write after a new owner
  took over, even if it does not know it lost the lease yet.
- **A lapse is not a change of owner.** A lease can lapse with nobody else taking it: while Redis
  was unreachable (frozen, restarting) no renewal got through. Since every acquisition bumps the
  epoch, a missing lease whose epoch is still the one its owner acquired was taken by nobody, and
  renewing sets it again; only a lease held by another activation, or an epoch that moved, is
  lost. Whoever acquires first once Redis is back wins: the owner's renewal retries within a
  fraction of a second (``actors.host``), and an owner's own host never re-acquires a
  conversation it holds (a delivery there finds the activation).
- **Fast takeover after a crash.** Owner ids are ``<host name>/<incarnation>/<activation>``: one per
  activation, so even two successive activations in one process never share a lease. When Ray
  restarts a host under the same name, the new incarnation may take over the leases of earlier
  incarnations at once instead of waiting for them to expire.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.store import keyspace, replies
from runtime.store.connection import is_cluster
from runtime.store.slots import by_slot, per_slot

log = logging.getLogger(__name__)

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('GET', KEYS[2]) or '0'}
end
if cur then
  local same_host = string.sub(cur, 1, string.len(ARGV[3])) == ARGV[3]
  local same_process = string.sub(cur, 1, string.len(ARGV[4])) == ARGV[4]
  if not same_host or same_process then return {0, cur} end
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, tostring(epoch)}
"""

# Renews many leases in one call. KEYS: (lease, epoch) key pairs. ARGV: ttl_ms, then an (owner,
# epoch) pair per lease. A lease that lapsed while its epoch stayed the owner's was taken by nobody:
# it is set again. Returns {the 1-based positions of the leases no longer held by their owner, the
# positions of those set again}.
_RENEW = """
local lost, retaken = {}, {}
for i = 1, #KEYS / 2 do
  local lease, held_by = KEYS[2 * i - 1], redis.call('GET', KEYS[2 * i - 1])
  if held_by == ARGV[2 * i] then
    redis.call('PEXPIRE', lease, ARGV[1])
  elseif not held_by and redis.call('GET', KEYS[2 * i]) == ARGV[2 * i + 1] then
    redis.call('SET', lease, ARGV[2 * i], 'PX', ARGV[1])
    retaken[#retaken + 1] = i
  else
    lost[#lost + 1] = i
  end
end
return {lost, retaken}
"""
RENEW_CHUNK = 500

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    conversation_id: str
    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Held:
    """Acquisition failed: someone else owns the conversation."""

    owner: str


def owner_id(host_name: str, incarnation: str, activation: int = 0) -> str:
    return f"{host_name}/{incarnation}/{activation}"


def host_of(owner: str) -> str:
    return owner.split("/", 1)[0]


class Directory:
    def __init__(self, redis: aioredis.Redis, *, lease_ttl_ms: int) -> None:
        self._redis = redis
        self._ttl_ms = lease_ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, conversation_id: str, owner: str) -> Lease | Held:
        """Take the conversation for ``owner`` (or keep it, if already ours)."""
        host, incarnation, _ = owner.split("/", 2)
        reply = await self._acquire(
            keys=[keyspace.lease(conversation_id), keyspace.epoch(conversation_id)],
            args=[owner, self._ttl_ms, f"{host}/", f"{host}/{incarnation}/"],
        )
        ok, value = int(reply[0]), reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if ok:
            return Lease(conversation_id, owner, int(value))
        return Held(value)

    async def renew(self, leases: list[Lease]) -> list[Lease]:
        """Extend many leases, ``RENEW_CHUNK`` per script call on a single Redis (yielding to the
        event loop between chunks, so a host with thousands of leases never stalls its
        conversations); on a Redis Cluster one call per hash slot (a script's keys must share one),
        ``RENEW_CHUNK`` calls per pipeline, and a primary that cannot be reached fails only the
        renewal of its own leases (raised once the others are done, so the caller tries again
        soon). A lease that lapsed while nobody took it is set again (see the module docstring).
        Returns the leases that were lost."""
        lost: list[Lease] = []
        retaken: list[Lease] = []
        if is_cluster(self._redis):
            groups = by_slot(leases, lambda lease: keyspace.lease(lease.conversation_id))
            unreached: Exception | None = None
            for start in range(0, len(groups), RENEW_CHUNK):
                batch = groups[start : start + RENEW_CHUNK]
                try:
                    answers = await per_slot(self._redis, self._renew, [self._renew_call(group) for group in batch])
                except (RedisConnectionError, RedisTimeoutError) as exc:  # sent to every primary; one did not answer
                    unreached = unreached or exc
                    continue
                for group, reply in zip(batch, answers, strict=True):
                    if isinstance(reply, Exception):
                        unreached = unreached or reply
                    else:
                        _sort(group, reply, lost, retaken)
            if unreached is not None:  # the leases the other primaries serve are renewed; try these again soon
                raise unreached
        else:
            for start in range(0, len(leases), RENEW_CHUNK):
                chunk = leases[start : start + RENEW_CHUNK]
                keys, args = self._renew_call(chunk)
                _sort(chunk, await self._renew(keys=keys, args=args), lost, retaken)
        if retaken:
            log.warning(
                "leases that lapsed while nobody took them are held again",
                extra={"conversations": [lease.conversation_id for lease in retaken[:10]], "count": len(retaken)},
            )
        return lost

    def _renew_call(self, chunk: list[Lease]) -> tuple[list[str], list[str | int]]:
        keys = [k for lease in chunk for k in (keyspace.lease(lease.conversation_id), keyspace.epoch(lease.conversation_id))]
        return keys, [self._ttl_ms, *(v for lease in chunk for v in (lease.owner, lease.epoch))]

    async def release(self, lease: Lease) -> None:
        await self.disown(lease.conversation_id, lease.owner)

    async def disown(self, conversation_id: str, owner: str) -> None:
        """Delete the conversation's lease if ``owner`` holds it, and nothing else: safe for an
        owner that does not know whether its acquisition landed (its reply was lost)."""
        await self._release(keys=[keyspace.lease(conversation_id)], args=[owner])

    async def owner(self, conversation_id: str) -> str | None:
        value = await self._redis.get(keyspace.lease(conversation_id))
        return replies.text(value) if value else None


def _sort(chunk: list[Lease], reply: list[list[int]], lost: list[Lease], retaken: list[Lease]) -> None:
    """Add what ``_RENEW``'s reply for ``chunk`` (two lists of 1-based positions in it) says to
    ``lost`` and ``retaken``."""
    gone, again = reply
    lost.extend(chunk[int(i) - 1] for i in gone)
    retaken.extend(chunk[int(i) - 1] for i in again)
