"""Stream tokens: short-lived credentials that let a browser's ``EventSource`` read a stream with keys on.

An ``EventSource`` cannot send an ``Authorization`` header, so a page holding an API key mints a
token with an authenticated call and opens ``GET /v1/runs/{id}/stream?token=...``; when the
connection drops, the browser reconnects to the same URL with ``Last-Event-ID`` by itself.

Guarantees:

- **Scoped.** A token names one run, or one conversation (then it opens that conversation's runs),
  and the tenant of the key that minted it. It opens nothing else: only the GET stream route takes
  a token (``api.auth``), and that route checks the run against the token's scope and tenant.
- **Short-lived.** It expires ``stream_token_ttl_s`` after it was minted; a stream already open
  goes on, a reconnection after the expiry is refused (401) and the page mints a new one.
- **Stateless.** A token is its claims and an HMAC-SHA256 of them, keyed by a secret every replica
  shares: any replica checks any token with no per-token state and no Redis round trip (once it
  holds the secret). The secret, 256 random bits, is made by the first mint (``SET NX``, so racing
  replicas agree on one) and kept in Redis for good; checking a token never writes.
- **No revocation per token.** A revoked key's tokens live out their few minutes. Deleting the
  secret's key (``keyspace.stream_token_secret``) and restarting the API replicas voids them all.

A token is ``cvst-<claims>.<signature>``, both base64url; the claims are JSON and not secret (ids
and a tenant name), only unforgeable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis

from runtime.errors import StreamTokenError, UnavailableError
from runtime.store import keyspace

TOKEN_PREFIX = "cvst-"
SECRET_BYTES = 32
MAX_TOKEN_CHARS = 1024
Scope = Literal["run", "conversation"]
_SCOPES: tuple[Scope, ...] = ("run", "conversation")
MINT_HINT = "mint a new one with POST /v1/runs/{id}/stream-token or POST /v1/conversations/{id}/stream-token"


@dataclass(frozen=True, slots=True)
class StreamGrant:
    """What a valid token allows: reading the streams of ``scope`` ``id``, as ``tenant``, until ``expires_at_s``."""

    scope: Scope
    id: str
    tenant: str
    expires_at_s: int

    def covers(self, run_id: str, conversation_id: str) -> bool:
        return self.id == (run_id if self.scope == "run" else conversation_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def looks_like_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX)


class StreamTokens:
    """Mints and checks stream tokens (one per API process; module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._secret: bytes | None = None

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    async def mint(self, scope: Scope, id: str, tenant: str, *, now_s: float | None = None) -> tuple[str, StreamGrant]:
        """A token for ``scope`` ``id`` of ``tenant``; the caller has checked that the tenant owns it."""
        issued = int(time.time() if now_s is None else now_s)
        grant = StreamGrant(scope, id, tenant, issued + self._ttl_s)
        claims = _b64(json.dumps({"scope": scope, "id": id, "tenant": tenant, "exp": grant.expires_at_s}).encode())
        return f"{TOKEN_PREFIX}{claims}.{_b64(self._sign(await self._minting_key(), claims))}", grant

    async def verify(self, token: str, *, now_s: float | None = None) -> StreamGrant:
        """The grant ``token`` carries; ``StreamTokenError`` (401) if it is malformed, forged or expired."""
        if not looks_like_token(token) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise StreamTokenError(f"the stream token is malformed (expected {TOKEN_PREFIX}<claims>.<signature>); {MINT_HINT}")
        claims, signature = token[len(TOKEN_PREFIX) :].split(".")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            given = b""
        key = await self._key(create=False)
        if key is None:
            raise StreamTokenError("the stream token is not valid: this Convoy has never minted one")
        if not hmac.compare_digest(given, self._sign(key, claims)):
            raise StreamTokenError(
                "the stream token is not valid: its signature does not match (altered, or minted by another Convoy)"
            )
        grant = _grant(claims)
        left_s = grant.expires_at_s - (time.time() if now_s is None else now_s)
        if left_s <= 0:
            raise StreamTokenError(f"the stream token expired {int(-left_s) + 1} s ago; {MINT_HINT}")
        return grant

    @staticmethod
    def _sign(key: bytes, claims: str) -> bytes:
        return hmac.new(key, claims.encode(), hashlib.sha256).digest()

    async def _key(self, *, create: bool) -> bytes | None:
        """The shared secret, read once per process. Only minting makes it (so a refused token
        writes nothing); None if no token was ever minted."""
        if self._secret is None:
            name = keyspace.stream_token_secret()
            if create:
                await self._redis.set(name, secrets.token_bytes(SECRET_BYTES), nx=True)
            secret = await self._redis.get(name)
            if not secret:
                return None
            self._secret = secret if isinstance(secret, bytes) else secret.encode()
        return self._secret

    async def _minting_key(self) -> bytes:
        secret = await self._key(create=True)
        if secret is None:
            raise UnavailableError("the stream-token secret could not be read from Redis; try again")
        return secret


def _grant(claims: str) -> StreamGrant:
    """The claims of a token whose signature matched (so they were written by ``mint``)."""
    try:
        data = json.loads(_unb64(claims))
        scope, id, tenant, expires = data["scope"], data["id"], data["tenant"], data["exp"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StreamTokenError(f"the stream token's claims cannot be read; {MINT_HINT}") from exc
    if scope not in _SCOPES or not isinstance(id, str) or not isinstance(tenant, str) or not isinstance(expires, int):
        raise StreamTokenError(f"the stream token's claims cannot be read; {MINT_HINT}")
    return StreamGrant(scope, id, tenant, expires)
