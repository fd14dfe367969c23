"""What spans hash slots, split per slot: the few reads and bulk writes that touch many
conversations, agents or keys at once.

On a Redis Cluster a command or a script may only touch keys of one slot (``CROSSSLOT`` otherwise;
redis-py refuses it before sending). Convoy keeps everything one step writes in one slot
(``runtime.store.keyspace``: the hash tags); what reads or renews many at once is split here:

- ``mget``: one ``MGET`` on a single Redis; on a cluster redis-py's ``mget_nonatomic`` (one
  ``MGET`` per slot, all in one pipeline, replies in the order of the keys). Neither is atomic across
  keys on a cluster, and no caller needs it to be.
- ``per_slot``: one script call per slot group, all in one cluster pipeline (each primary's calls in
  one write; redirections followed by redis-py), for bulk work such as renewing every lease a host
  holds (``actors.directory``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from redis.crc import key_slot
from redis.exceptions import NoScriptError

from runtime.store.connection import is_cluster

T = TypeVar("T")


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


def by_slot(items: Iterable[T], key: Callable[[T], str]) -> list[list[T]]:
    """``items`` grouped by the hash slot of ``key(item)``, groups in order of first appearance."""
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(slot_of(key(item)), []).append(item)
    return list(groups.values())


async def mget(redis: Any, keys: Sequence[str]) -> list[bytes | None]:
    """The values of ``keys`` (None where missing), on a single Redis or a cluster."""
    if not keys:
        return []
    if is_cluster(redis):
        return list(await redis.mget_nonatomic(list(keys)))
    return list(await redis.mget(list(keys)))


async def per_slot(redis: Any, script: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    """Run a registered ``script`` once per ``(keys, args)`` in ``calls`` (each call's keys in one
    slot) on a cluster client, in one pipeline; each call's reply, or its error reply (returned,
    not raised). A primary that cannot be reached raises its connection error, once every other
    primary's calls have run. A script a primary does not hold yet (restarted, new) is loaded and
    its calls sent again."""
    if not calls:
        return []
    replies = await _pipeline(redis, script, calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await redis.script_load(script.script)  # every primary
        for i, reply in zip(missing, await _pipeline(redis, script, [calls[i] for i in missing]), strict=True):
            replies[i] = reply
    return replies


async def _pipeline(redis: Any, script: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
