"""Connections of their own for the hottest paths (the chunk writer, the tailers' reads): several
commands in one write, their replies read back in order, without redis-py's per-call machinery
(pool checkout, retry wrappers, pipeline objects). Measured for the chunk writer on the project's
machine: about 0.9 ms of CPU per one-command pipeline through redis-py, against ~0.25 ms here, most
of it the two system calls.

- ``DirectConnection``: one connection to one server. Commands are packed by hiredis.
- ``NodeConnections``: its counterpart for a Redis Cluster, one ``DirectConnection`` per primary.
  Each command goes to the primary that serves its key's slot, as redis-py's cluster client knows
  it; the commands bound for one primary leave in one write, every primary's at once. A command
  answered ``MOVED`` or ``ASK`` (a resharding or a failover moved its slot; it did not run) is sent
  again through redis-py's cluster client, which follows the redirection and corrects its map (its
  reply is then parsed by redis-py's response callbacks: an ``XREAD``'s entries carry their fields
  as a dict, not the flat list, which ``runtime.stream.items.raw_item`` reads too); after
  a connection failure the map is refreshed before the next call. Slot routing stays redis-py's. A
  slot that cannot be served for the moment (``CLUSTERDOWN``, ``TRYAGAIN``) is raised as a
  connection error, as the cluster client reports it (``runtime.store.connection``).

Nothing is ever sent twice by these classes: after a connection error the connection is dropped,
the error raised (once every primary's share has come back), and the next call connects again. The
caller decides (the writer's appends are idempotent and sent again; a tailer reads again). Not for
concurrent callers: one ``execute`` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, ResponseError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.store.connection import RECONNECT_PATIENCE_S, SLOT_UNAVAILABLE, is_cluster
from runtime.store.mux import own_connection

log = logging.getLogger(__name__)

Command = Sequence[bytes | str | int | float]


class DirectConnection:
    """One connection of its own (see the module docstring); ``connect`` makes it when needed, with
    no socket timeout of its own: ``timeout_s`` (the client's socket timeout) bounds each call as a
    whole instead. redis-py bounds a write with ``asyncio.wait_for``, a task per write on Python
    3.11; one deadline per call costs a timer (measured: 15-25 us less CPU per round trip)."""

    def __init__(self, connect: Callable[[], AbstractConnection], timeout_s: float | None) -> None:
        self._connect = connect
        self._timeout_s = timeout_s
        self._conn: AbstractConnection | None = None

    async def execute(self, commands: Sequence[Command]) -> list[object]:
        """Send ``commands`` in one write; their replies in order, an error reply as its
        ``ResponseError`` (returned, not raised)."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            conn = self._conn = self._connect()
        reaching: asyncio.Timeout | None = None
        deadline = asyncio.timeout(self._timeout_s)
        try:
            if not conn.is_connected:
                reaching = asyncio.timeout(RECONNECT_PATIENCE_S)  # a cluster node's connection is not patient
                async with reaching:
                    await conn.connect()
            async with deadline:
                await conn.send_packed_command(b"".join([pack_command(tuple(c)) for c in commands]), check_health=False)  # type: ignore[arg-type]  # hiredis's stub types a command as a 1-tuple
                replies: list[object] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(disable_decoding=True))
                    except ResponseError as exc:
                        replies.append(exc)
            return replies
        except BaseException as exc:
            await self._drop(conn)
            if isinstance(exc, TimeoutError) and reaching is not None and reaching.expired():
                raise RedisConnectionError(f"Redis not reachable within {RECONNECT_PATIENCE_S:g} s") from exc
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise RedisTimeoutError(f"no reply from Redis within {self._timeout_s} s") from exc
            raise

    async def _drop(self, conn: AbstractConnection) -> None:
        """A reply may still be on its way: this connection cannot be trusted for the next call."""
        self._conn = None
        with contextlib.suppress(Exception):
            await conn.disconnect()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()


class NodeConnections:
    """A ``DirectConnection`` per cluster primary, each command sent to its key's (see the module
    docstring)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._nodes: dict[str, DirectConnection] = {}
        self._stale = False  # a connection failed: refresh the map of the slots first

    async def execute(self, commands: Sequence[Command], keys: Sequence[str], *, partial: bool = False) -> list[object]:
        """``DirectConnection.execute``, each command routed by its key in ``keys``. ``partial``:
        a primary that cannot be reached fails only its own commands (their reply is the
        connection error) instead of the whole call."""
        cluster = self._cluster
        if not cluster.nodes_manager.slots_cache:
            await cluster.initialize()
        elif self._stale:
            self._stale = False
            await self._refresh()
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, key in enumerate(keys):
            node = primary_of(cluster, key)
            groups.setdefault(node.name, (node, []))[1].append(i)
        replies: list[object] = [None] * len(commands)

        async def send(node: ClusterNode, positions: list[int]) -> None:
            conn = self._nodes.get(node.name)
            if conn is None:
                conn = self._nodes[node.name] = DirectConnection(
                    lambda: own_connection_of(node, socket_timeout=None), node.connection_kwargs.get("socket_timeout")
                )
            for i, reply in zip(positions, await conn.execute([commands[i] for i in positions]), strict=True):
                replies[i] = reply

        outcomes = await asyncio.gather(*(send(node, positions) for node, positions in groups.values()), return_exceptions=True)
        for (_, positions), outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._stale = True
                if not partial or not isinstance(outcome, Exception):
                    raise outcome
                for i in positions:
                    replies[i] = outcome
        moved = [i for i, reply in enumerate(replies) if isinstance(reply, AskError)]  # MovedError is an AskError
        if moved:
            again = await asyncio.gather(*(cluster.execute_command(*commands[i]) for i in moved), return_exceptions=True)
            for i, reply in zip(moved, again, strict=True):
                replies[i] = reply
        for i, reply in enumerate(replies):
            if isinstance(reply, SLOT_UNAVAILABLE):  # did not run: for the caller, Redis is away
                replies[i] = reply = RedisConnectionError(f"Redis Cluster cannot serve this slot now: {reply}")
            if not partial and isinstance(reply, Exception) and not isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _refresh(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - the current map keeps serving; the next failure asks again
            log.warning("could not refresh the cluster's map of slots", extra={"error": repr(exc)})

    async def close(self) -> None:
        nodes, self._nodes = self._nodes, {}
        for conn in nodes.values():
            await conn.close()


def primary_of(cluster: RedisCluster, key: str) -> ClusterNode:
    """The primary serving ``key``'s slot, as redis-py's cluster client knows it;
    ``SlotNotCoveredError`` when no primary does."""
    node = cluster.get_node_from_key(key)  # None is its answer for a replica only
    if node is None:
        raise SlotNotCoveredError(f"no primary serves the slot of {key}")
    return node


def own_connection_of(node: ClusterNode, **overrides: Any) -> AbstractConnection:
    """A connection of its own to a cluster node, configured as redis-py's own to it are."""
    return node.connection_class(**{**node.connection_kwargs, **overrides})


class Direct:
    """What a hot path holds: a ``DirectConnection`` on one server, ``NodeConnections`` on a cluster;
    ``execute`` takes each command's routing key (unused on one server)."""

    def __init__(self, redis: Any) -> None:
        self._nodes = NodeConnections(redis) if is_cluster(redis) else None
        self._one: DirectConnection | None = None
        if self._nodes is None:
            pool = redis.connection_pool
            self._one = DirectConnection(lambda: own_connection(pool, socket_timeout=None), pool.connection_kwargs.get("socket_timeout"))

    async def execute(self, commands: Sequence[Command], keys: Sequence[str], *, partial: bool = False) -> list[object]:
        if self._nodes is not None:
            return await self._nodes.execute(commands, keys, partial=partial)
        assert self._one is not None
        return await self._one.execute(commands)

    async def close(self) -> None:
        if self._nodes is not None:
            await self._nodes.close()
        elif self._one is not None:
            await self._one.close()
