"""Where a conversation is activated when nobody owns it: rendezvous hashing over live hosts.

Each conversation prefers the same host for as long as the set of hosts is stable (so caches
stay warm and re-activations land where they were), and when a host disappears only its own
conversations move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _score(conversation_id: str, host: str) -> int:
    digest = hashlib.blake2b(f"{host}|{conversation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose(conversation_id: str, hosts: Sequence[str]) -> str:
    if not hosts:
        raise LookupError("no conversation host is alive")
    return max(hosts, key=lambda h: _score(conversation_id, h))


def ranked(conversation_id: str, hosts: Sequence[str]) -> list[str]:
    """Hosts in order of preference (for trying the next one when the first is gone)."""
    return sorted(hosts, key=lambda h: _score(conversation_id, h), reverse=True)
