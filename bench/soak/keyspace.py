"""The Redis invariants: idle conversations passivated, and no leaked keys.

Key names come from ``runtime.store.keyspace`` (the one module that spells them), derived from the ids the
soak knows: its agents, conversations and runs, and the live hosts. After the settle wait:

- **passivated**: within a bounded wait, no conversation of the soak holds a lease and every
  live host's set of held conversations is empty;
- **no leaked keys**: a scan of ``convoy:*`` finds every key either with a TTL, or owned by a live
  record (an agent's or conversation's keys while it exists, a host's while it is live, a message's
  reference while the history it points into exists), or one of
  the global keys that were already there before the workload (the indexes). Beyond that: every
  mailbox is empty (processed entries are removed), no approval is left pending, and the keys of
  ended runs expire within ``stream_ttl_s`` (not the week an unfinished run is given).

Run-index entries that point at no run (a refused or deduplicated send leaves one) are counted and
shown, not judged: they live as long as the index, a known limit of the run indexes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bench.soak.ledger import KEYS, PASSIVATED, Ledger, RunRecord, near_kill
from runtime.store import keyspace

SCAN_COUNT = 1000
PIPELINE = 500
LEAKED = "no TTL, no live owner"


@dataclass
class KeyFigures:
    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    dangling_index_entries: int = 0


async def scan(redis: aioredis.Redis) -> set[str]:
    return {k.decode() async for k in redis.scan_iter(match=f"{keyspace.PREFIX}:*", count=SCAN_COUNT)}


async def host_names(redis: aioredis.Redis) -> dict[str, int]:
    """Live hosts: name -> pid (from their heartbeats)."""
    beats = await redis.hgetall(keyspace.hosts())
    return {name.decode(): int(json.loads(beat)["pid"]) for name, beat in beats.items()}


async def wait_passivated(redis: aioredis.Redis, ledger: Ledger, timeout_s: float, period_s: float) -> float:
    """Poll (bounded) until nothing is active; returns the seconds it took (violations recorded)."""
    started = time.monotonic()
    while True:
        leases, held = await _active(redis, ledger)
        if not leases and not held:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            ledger.violate(PASSIVATED, f"after {timeout_s:g} s: {len(leases)} lease(s) left, e.g. {leases[:2]}")
            for host, members in held.items():
                ledger.violate(PASSIVATED, f"host {host} still lists {len(members)} conversation(s)")
            return time.monotonic() - started
        await asyncio.sleep(period_s)


async def _active(redis: aioredis.Redis, ledger: Ledger) -> tuple[list[str], dict[str, set[bytes]]]:
    ids = list(ledger.conversations)
    async with redis.pipeline(transaction=False) as pipe:
        for conv in ids:
            pipe.exists(keyspace.lease(conv))
        leased = await pipe.execute()
    held: dict[str, set[bytes]] = {}
    for host in await host_names(redis):
        members = await redis.smembers(keyspace.host_conversations(host))
        if members:
            held[host] = members
    return [c for c, found in zip(ids, leased, strict=True) if found], held


async def check_keys(
    redis: aioredis.Redis, ledger: Ledger, agents: Iterable[str], baseline: set[str], stream_ttl_s: int
) -> KeyFigures:
    found = await scan(redis)
    ttls = await _ttls(redis, sorted(found))
    owned = await _owned(redis, ledger, agents)
    ended_runs = _run_keys(ledger)
    figures = KeyFigures(total=len(found))
    for key, ttl in ttls.items():
        kind = _kind(key, ttl, owned, ended_runs, baseline)
        figures.kinds[kind] += 1
        if kind == LEAKED:
            ledger.violate(KEYS, f"{key}: {LEAKED}")
        elif key in ended_runs and ttl > stream_ttl_s:
            ended = await _ended_near_kill(redis, ledger, ended_runs[key])
            ledger.violate(KEYS, f"{key}: an ended run's key expires in {ttl} s (> stream_ttl_s {stream_ttl_s}){ended}")
    await _check_conversations(redis, ledger)
    figures.dangling_index_entries = await _dangling(redis, ledger)
    return figures


def _kind(key: str, ttl: int, owned: dict[str, bool], ended_runs: dict[str, RunRecord], baseline: set[str]) -> str:
    if key in ended_runs:
        return "ended runs' keys (TTL)" if ttl > 0 else LEAKED
    if ttl > 0:
        return "other keys with a TTL"
    if owned.get(key):
        return "owned by a live agent, conversation or host"
    if key in baseline:
        return "global (there before the workload)"
    return LEAKED


async def _ttls(redis: aioredis.Redis, names: list[str]) -> dict[str, int]:
    """key -> TTL in seconds (-1: none); keys gone meanwhile are left out."""
    ttls: dict[str, int] = {}
    for start in range(0, len(names), PIPELINE):
        chunk = names[start : start + PIPELINE]
        async with redis.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.ttl(name)
            replies = await pipe.execute()
        ttls.update({n: int(t) for n, t in zip(chunk, replies, strict=True) if int(t) != -2})
    return ttls


async def _owned(redis: aioredis.Redis, ledger: Ledger, agents: Iterable[str]) -> dict[str, bool]:
    """Keys with an owner: key -> whether that owner is alive."""
    owners: dict[str, list[str]] = {}
    for agent in agents:
        owners[keyspace.agent(agent)] = [keyspace.agent(agent), keyspace.agent_conversations(agent), keyspace.agent_runs(agent)]
    for conv in ledger.conversations:
        owners[keyspace.conversation(conv)] = [
            keyspace.conversation(conv),
            keyspace.mailbox(conv),
            keyspace.mailbox_cursor(conv),
            keyspace.epoch(conv),
            keyspace.history(conv),
            keyspace.history_index(conv),
            keyspace.conversation_runs(conv),
            keyspace.pending_approval(conv),
        ]
    records = list(owners)
    async with redis.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.exists(record)
        alive = await pipe.execute()
    live = {record for record, present in zip(records, alive, strict=True) if present}
    owned = {key: record in live for record, owned_keys in owners.items() for key in owned_keys}
    owned.update(await _message_refs(redis))
    hosts = await host_names(redis)
    owned[keyspace.hosts()] = bool(hosts)
    for host in hosts:
        owned[keyspace.host_conversations(host)] = owned[keyspace.host_bell(host)] = True
    return owned


async def _message_refs(redis: aioredis.Redis) -> dict[str, bool]:
    """A message's reference is owned by the history it points into: alive while that exists."""
    refs = [k.decode() async for k in redis.scan_iter(match=keyspace.message_ref("*"), count=SCAN_COUNT)]
    owned: dict[str, bool] = {}
    for start in range(0, len(refs), PIPELINE):
        chunk = refs[start : start + PIPELINE]
        conversations = await redis.mget(chunk)
        async with redis.pipeline(transaction=False) as pipe:
            for conv in conversations:
                pipe.exists(keyspace.history(conv.decode() if conv else ""))
            alive = await pipe.execute()
        owned.update({ref: bool(conv) and bool(a) for ref, conv, a in zip(chunk, conversations, alive, strict=True)})
    return owned


def _run_keys(ledger: Ledger) -> dict[str, RunRecord]:
    """Every key of the runs the clients saw accepted (all ended by now): key -> its run."""
    found: dict[str, RunRecord] = {}
    for run in ledger.runs.values():
        conv = run.conversation_id
        for key in (keyspace.run(conv, run.run_id), keyspace.run_stream(conv, run.run_id), keyspace.run_steps(conv, run.run_id)):
            found[key] = run
        found[keyspace.run_ref(run.run_id)] = run
    return found


async def _ended_near_kill(redis: aioredis.Redis, ledger: Ledger, run: RunRecord) -> str:
    """For a violation's text: when the run ended, next to the nearest fault's kill (if any)."""
    ended_ms = await redis.hget(keyspace.run(run.conversation_id, run.run_id), "completed_at_ms")
    return "" if ended_ms is None else near_kill(ledger.faults, int(ended_ms) / 1000, f"{run.op} run ended")


async def _check_conversations(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Nothing left behind in a conversation: no mailbox entry, no pending approval."""
    ids = list(ledger.conversations)
    async with redis.pipeline(transaction=False) as pipe:
        for conv in ids:
            pipe.xlen(keyspace.mailbox(conv))
            pipe.exists(keyspace.pending_approval(conv))
        replies = await pipe.execute()
    for i, conv in enumerate(ids):
        depth, pending = replies[2 * i], replies[2 * i + 1]
        if depth:
            ledger.violate(KEYS, f"conversation {conv}: {depth} entries left in its mailbox")
        if pending:
            ledger.violate(KEYS, f"conversation {conv}: an approval is still pending")


async def _dangling(redis: aioredis.Redis, ledger: Ledger) -> int:
    """Entries of the soak's conversations' run indexes whose run does not exist."""
    count = 0
    for conv in ledger.conversations:
        members = [m.decode() for m in await redis.zrange(keyspace.conversation_runs(conv), 0, -1)]
        async with redis.pipeline(transaction=False) as pipe:
            for run_id in members:
                pipe.exists(keyspace.run(conv, run_id))
            found = await pipe.execute()
        count += sum(1 for present in found if not present)
    return count
