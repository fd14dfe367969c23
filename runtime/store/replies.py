"""Redis replies as Convoy's clients receive them, typed.

Convoy's clients never decode replies (``decode_responses=False``, ``runtime.store.connection``)
and speak RESP2, so a string in a reply is ``bytes`` and ``XREAD`` answers a list of
``[stream, entries]``. redis-py annotates each command for every way a client can be built at
once (``bytes | str``; a scored and an unscored ``ZRANGE`` alike; ``XREAD``'s RESP3 map), so the
callers narrow a reply here to what their call returns. Each narrowing is a check, not an
assertion: a reply of another shape (a client built some other way) is a ``TypeError``, never a
value of the wrong type passed on.
"""

from __future__ import annotations

from typing import TypeGuard

from redis.typing import StreamRangeResponse, XReadResponse, ZSetRangeResponse

Entry = tuple[bytes, dict[bytes, bytes]]


def text(value: bytes | str) -> str:
    """A string reply (a value, a field, a member) as text."""
    return value.decode() if isinstance(value, bytes) else value


def previous(reply: bool | bytes | str | None) -> bytes | str | None:
    """A ``SET ... GET`` reply: the value the key held before (None: it held none)."""
    if isinstance(reply, bool):
        raise TypeError(f"SET ... GET answers the key's previous value, not {reply!r} (asked without GET?)")
    return reply


def fields(reply: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """An ``HGETALL`` reply as text."""
    return {text(name): text(value) for name, value in reply.items()}


def members(reply: ZSetRangeResponse) -> list[str]:
    """The members of a ``ZRANGE`` / ``ZREVRANGE`` reply read without scores."""
    found: list[str] = []
    for member in reply:
        if not isinstance(member, bytes | str):
            raise TypeError(f"a sorted set's member was expected, not {member!r} (a range read with scores?)")
        found.append(text(member))
    return found


def scored(reply: ZSetRangeResponse) -> list[tuple[str, float]]:
    """The (member, score) pairs of a ``ZRANGE ... WITHSCORES`` reply."""
    found: list[tuple[str, float]] = []
    for pair in reply:
        if isinstance(pair, bytes | str):
            raise TypeError(f"a (member, score) pair was expected, not {pair!r} (a range read without scores?)")
        member, score = pair
        found.append((text(member), float(score)))
    return found


def entries(reply: StreamRangeResponse | None) -> list[Entry]:
    """The entries of an ``XRANGE`` / ``XREVRANGE`` reply (none for a stream that does not exist)."""
    found: list[Entry] = []
    for entry_id, values in reply or ():
        if not isinstance(entry_id, bytes) or not _undecoded(values):
            raise TypeError(f"an undecoded stream entry was expected, not {entry_id!r}: {values!r}")
        found.append((entry_id, values))
    return found


def streams(reply: XReadResponse | None) -> list[tuple[bytes, list[Entry]]]:
    """Each stream of an ``XREAD`` reply with its new entries (none when the read's block ran out)."""
    if reply is None:
        return []
    if not isinstance(reply, list):
        raise TypeError("XREAD answered a map: the client speaks RESP3, Convoy's speak RESP2")
    found: list[tuple[bytes, list[Entry]]] = []
    for key, read in reply:
        if not isinstance(key, bytes):
            raise TypeError(f"an undecoded stream name was expected, not {key!r}")
        found.append((key, entries(read)))
    return found


def _undecoded(values: object) -> TypeGuard[dict[bytes, bytes]]:
    return isinstance(values, dict) and all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in values.items())
