"""API keys: creation, lookup, revocation, and the per-key limits, in Redis.

Guarantees:

- **Secrets are never stored.** A key is ``cvy-`` followed by 256 random bits; Redis keeps only
  its SHA-256 digest (a fast hash is enough for a secret with that much entropy; slow hashes exist
  to protect guessable passwords). The secret is shown once, when it is created.
- **Open mode ends for good with the first key.** ``auth:closed`` is set before any key can be
  used and never unset, so revoking every key later does not reopen the server; API processes read
  it on every unauthenticated request until they see it, so no restart is needed. (A key's record,
  the table of keys and that flag live in different hash slots: creating a key writes the flag,
  then the table, then the record, which is what makes the key usable; a creation cut short leaves
  the server closed and no usable key, never the reverse. Revoking deletes the record first.)
- **One round trip per request.** Looking up a key and charging its rate limit is one script.
  The limit is a token bucket in GCRA form: a key holds up to ``requests_per_minute`` requests
  and regains one every ``60/requests_per_minute`` s; a refused request is told when to retry.
- **Concurrent runs are counted, not guessed.** A run takes a slot when it is accepted and gives
  it back when it ends (``RunStore.finish``). A key at its limit has its holders checked before it
  is refused, so a run that has ended never holds a slot, even in the instant between its terminal
  status and the slot's release. A slot also expires after ``RUN_SLOT_TTL_MS``.

``Gate`` is what an API process asks, once per request, to turn a secret into a ``Principal``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from runtime.errors import AuthenticationError, NotFoundError, RateLimitedError
from runtime.schemas.auth import OPEN, ApiKeyRecord, Principal
from runtime.schemas.messages import utcnow
from runtime.store import keyspace, replies
from runtime.store.slots import mget

SECRET_PREFIX = "cvy-"
SHOWN_PREFIX_CHARS = 12
RUN_SLOT_TTL_MS = 3600 * 1000
SLOT_ACCEPT_GRACE_MS = 60_000  # longest a slot's run may take to be accepted before it counts as gone
MINUTE_MS = 60_000

# KEYS: record, rate. ARGV: now ms, default requests/minute.
# Returns nil (no such key), or {record JSON, retry-after ms (0: allowed)}.
_AUTHENTICATE = """
local record = redis.call('GET', KEYS[1])
if not record then return nil end
local rpm = cjson.decode(record)['requests_per_minute']
if rpm == nil or rpm == cjson.null then rpm = tonumber(ARGV[2]) end
if rpm <= 0 then return {record, 0} end
local now = tonumber(ARGV[1])
local interval = 60000 / rpm
local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or now), now)
local ahead = tat + interval - now
if ahead > 60000 then return {record, math.ceil(ahead - 60000)} end
redis.call('SET', KEYS[2], tostring(tat + interval), 'PX', math.ceil(ahead))
return {record, 0}
"""

# KEYS: the key's run slots. ARGV: run id, limit, now ms, slot ttl ms. 1 if taken, 0 if full.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Authenticated:
    record: ApiKeyRecord
    retry_after_ms: int  # 0: within its rate limit


class KeyStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._authenticate = redis.register_script(_AUTHENTICATE)
        self._take_slot = redis.register_script(_TAKE_SLOT)

    async def create(
        self,
        *,
        tenant: str,
        name: str = "",
        requests_per_minute: int | None = None,
        concurrent_runs: int | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """A new key for ``tenant``: its secret (shown only now) and its record."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=f"key-{secrets.token_hex(6)}",
            tenant=tenant,
            name=name,
            prefix=secret[:SHOWN_PREFIX_CHARS],
            created_at=utcnow(),
            requests_per_minute=requests_per_minute,
            concurrent_runs=concurrent_runs,
        )
        hashed = digest(secret)
        await self._redis.set(keyspace.auth_closed(), "1")  # in this order: see the module docstring
        await self._redis.hset(keyspace.api_keys(), record.id, hashed)
        await self._redis.set(keyspace.api_key(hashed), record.model_dump_json())
        return secret, record

    async def list(self) -> list[ApiKeyRecord]:
        digests = await self._redis.hgetall(keyspace.api_keys())
        if not digests:
            return []
        raws = await mget(self._redis, [keyspace.api_key(replies.text(d)) for d in digests.values()])
        records = [ApiKeyRecord.model_validate_json(raw) for raw in raws if raw is not None]
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Delete the key at once: the next request carrying it is refused."""
        hashed = await self._redis.hget(keyspace.api_keys(), key_id)
        if hashed is None:
            raise NotFoundError(f"no API key {key_id}")
        digest = replies.text(hashed)
        raw = await self._redis.get(keyspace.api_key(digest))
        # The record first (one slot, with its rate state): from then on the key is refused.
        await self._redis.delete(keyspace.api_key(digest), keyspace.api_key_rate(digest))
        await self._redis.delete(keyspace.api_key_runs(key_id))
        await self._redis.hdel(keyspace.api_keys(), key_id)
        if raw is None:
            raise NotFoundError(f"no API key {key_id}")
        return ApiKeyRecord.model_validate_json(raw)

    async def closed(self) -> bool:
        """Whether any key was ever created (then every request needs one)."""
        return bool(await self._redis.exists(keyspace.auth_closed()))

    async def authenticate(self, secret: str, *, now_ms: int, default_requests_per_minute: int) -> Authenticated | None:
        """The key ``secret`` names, charged one request; None if there is no such key."""
        hashed = digest(secret)
        reply = await self._authenticate(
            keys=[keyspace.api_key(hashed), keyspace.api_key_rate(hashed)], args=[now_ms, default_requests_per_minute]
        )
        if reply is None:
            return None
        raw, retry_after_ms = reply
        return Authenticated(ApiKeyRecord.model_validate_json(raw), int(retry_after_ms))

    async def take_run_slot(self, key_id: str, run_id: str, *, limit: int, now_ms: int) -> bool:
        """Count ``run_id`` against the key's concurrent runs; False if all ``limit`` slots are taken.

        A slot is free once its run has ended: a run's end gives its slot back just after it writes
        its terminal status (they live in different hash slots, so not in one step), so before
        refusing, the holders are checked and those already ended are let go. A client that sees
        its run end and sends at once is therefore never refused for it."""
        args: list[str | int] = [run_id, limit, now_ms, RUN_SLOT_TTL_MS]
        if await self._take_slot(keys=[keyspace.api_key_runs(key_id)], args=args):
            return True
        if not await self._release_ended(key_id, now_ms=now_ms):
            return False
        return bool(await self._take_slot(keys=[keyspace.api_key_runs(key_id)], args=args))

    async def _release_ended(self, key_id: str, *, now_ms: int) -> bool:
        """Give back the slots of the key's runs that have ended; whether any was. A slot whose run
        cannot be found is given back only once it is older than ``SLOT_ACCEPT_GRACE_MS``: the slot
        is taken before its run is accepted, which may still be on its way."""
        holders = replies.scored(await self._redis.zrange(keyspace.api_key_runs(key_id), 0, -1, withscores=True))
        run_ids = [h for h, _ in holders]
        conversations = await mget(self._redis, [keyspace.run_ref(r) for r in run_ids])
        ended: list[str] = []
        for (run_id, (_, expires_ms)), conversation in zip(zip(run_ids, holders, strict=True), conversations, strict=True):
            if conversation is None:
                if now_ms - (expires_ms - RUN_SLOT_TTL_MS) > SLOT_ACCEPT_GRACE_MS:
                    ended.append(run_id)
                continue
            status = await self._redis.hget(keyspace.run(replies.text(conversation), run_id), "status")
            if status is None or replies.text(status) in ("completed", "failed", "cancelled"):
                ended.append(run_id)
        if ended:
            await self._redis.zrem(keyspace.api_key_runs(key_id), *ended)
        return bool(ended)

    async def release_run_slot(self, key_id: str, run_id: str) -> None:
        await self._redis.zrem(keyspace.api_key_runs(key_id), run_id)


class Gate:
    """Turns a request's secret into a ``Principal`` (one per API process)."""

    def __init__(self, store: KeyStore, *, default_requests_per_minute: int, default_concurrent_runs: int) -> None:
        self._store = store
        self._default_rpm = default_requests_per_minute
        self._default_runs = default_concurrent_runs
        self._closed = False  # once true, for the life of the process (open mode never comes back)

    async def principal(self, secret: str | None) -> Principal:
        if secret:
            found = await self._store.authenticate(
                secret, now_ms=time.time_ns() // 1_000_000, default_requests_per_minute=self._default_rpm
            )
            if found is not None:
                self._closed = True
                record = found.record
                if found.retry_after_ms:
                    retry_s = max(1, math.ceil(found.retry_after_ms / 1000))
                    raise RateLimitedError(
                        f"API key {record.id} is over its request rate; retry in {retry_s} s", retry_after_s=retry_s
                    )
                runs = self._default_runs if record.concurrent_runs is None else record.concurrent_runs
                return Principal(tenant=record.tenant, key_id=record.id, concurrent_runs=runs)
        if not self._closed:
            self._closed = await self._store.closed()
        if not self._closed:
            return OPEN
        if secret:
            raise AuthenticationError("unknown or revoked API key")
        raise AuthenticationError(
            "this server needs an API key: send 'Authorization: Bearer <key>' (create one with `convoy keys create`)"
        )
