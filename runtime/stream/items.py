"""A run's stream as Redis holds it: one entry per item, its seq id as the entry id (``0-<seq>``).

So seq ids are per run, start at 1, and can never be reused: Redis refuses an id that is not
greater than the last one, which also stops a stale owner from writing into a run a newer owner
already continued; and a resume cursor *is* a stream id, so ``XREAD`` after it yields exactly the
later items. Each entry holds the item's kind (``data``, ``error``, ``done``: the terminal
``[DONE]``) and its payload (the item's JSON). Writing is ``runtime.stream.writer``'s and, for a
run's last items, ``RunStore.end``'s; reading for clients is ``runtime.stream.tailer``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import redis.asyncio as aioredis

from runtime.store import replies

ItemKind = Literal["data", "error", "done"]
_KINDS: dict[bytes, ItemKind] = {kind.encode(): kind for kind in get_args(ItemKind)}


@dataclass(frozen=True, slots=True)
class StoredItem:
    seq: int
    kind: ItemKind
    payload: bytes

    @property
    def terminal(self) -> bool:
        return self.kind == "done"


def seq_of(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[1])


def kind_of(raw: bytes) -> ItemKind:
    """An item's kind as stored; ``ValueError`` for anything else (nothing writes another)."""
    kind = _KINDS.get(raw)
    if kind is None:
        raise ValueError(f"not a stream item's kind: {raw!r}")
    return kind


def entry_item(entry_id: bytes, fields: dict[bytes, bytes]) -> StoredItem:
    return StoredItem(seq=seq_of(entry_id), kind=kind_of(fields.get(b"k", b"data")), payload=fields.get(b"p", b""))


def raw_item(entry_id: bytes, fields: list[bytes] | dict[bytes, bytes]) -> StoredItem:
    """An entry of an XREAD reply: its fields as the flat list Redis sends, or as the dict
    redis-py makes of them when its cluster client answered instead (a read sent again after a
    ``MOVED`` or ``ASK`` redirection, ``runtime.store.direct``): during a slot's migration every
    read of its streams is answered that way, so both shapes must deliver their items."""
    if isinstance(fields, dict):
        return entry_item(entry_id, fields)
    return entry_item(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))


async def last_seq(redis: aioredis.Redis, key: str) -> int:
    """The highest seq written to ``key`` (0 if the stream does not exist)."""
    last = await last_item(redis, key)
    return last.seq if last is not None else 0


async def last_item(redis: aioredis.Redis, key: str) -> StoredItem | None:
    """The last item written to ``key`` (None if the stream does not exist)."""
    entries = replies.entries(await redis.xrevrange(key, count=1))
    return entry_item(*entries[0]) if entries else None


async def first_seq(redis: aioredis.Redis, key: str) -> int | None:
    """The lowest seq still held (None if the stream does not exist or is empty)."""
    entries = replies.entries(await redis.xrange(key, count=1))
    return seq_of(entries[0][0]) if entries else None


async def read_after(redis: aioredis.Redis, key: str, after: int, count: int = 1000) -> list[StoredItem]:
    entries = replies.entries(await redis.xrange(key, min=f"(0-{after}", count=count))
    return [entry_item(eid, fields) for eid, fields in entries]


