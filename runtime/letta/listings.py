"""Letta's listings: a conversation's messages (the two routes' orders) and one message by id; a
run's messages and steps; agents and conversations found by Letta's filters.

**The system message.** Letta stores a conversation's compiled system prompt as its first message
and lists it like any other. Convoy compiles the prompt afresh for every request from the agent
(``runtime.agent.context.render_system``), so the listed system message is that prompt as it
reads now, never stored: its id is derived from the conversation's (``conv-<uuid>`` ->
``message-<uuid>``; the default conversation's is the agent's uuid), so it can be a cursor and be
read back by ``GET /v1/messages/{id}``. It comes before every stored message.

**Order, as Letta's two routes order it** (both filter with ``after``/``before`` the same way):

- ``GET /v1/agents/{id}/messages`` (and a conversation route naming the agent's default
  conversation): ``desc`` (the default) picks the newest ``limit`` messages and returns them
  oldest first; ``asc`` the oldest ``limit``. A cursor that is not one of the conversation's
  messages is a 404.
- ``GET /v1/conversations/{id}/messages``: ``desc`` (the default) is newest first, the parts of one
  model response (reasoning, text, tool calls: one message id) kept in their own order; ``asc``
  oldest first. A cursor that is not one of its messages is ignored.

**Filtered listings** (agents by name and tags, conversations but the agents' own): the first
``limit`` records that pass, in the store's order, strictly between the cursors (``after``: an id
the listing does not hold gives nothing; ``before``: one it does not hold bounds nothing, as
Letta's), however many of the store's pages that takes.

**Orders no index keeps** (agents by ``updated_at`` or ``last_run_completion``, or filtered by
their ``last_stop_reason``; conversations by ``last_run_completion``): every record is read (at
most ``MAX_SCAN``; more is a 400 saying so), and, where runs decide, the last finished run of each
one that passes the other filters (at most ``RUN_SCAN``; more is a 400 naming the filters that
narrow it), then sorted. A last run is the newest run that ended, however it ended: the one
``GET /v1/agents/{id}`` shows as ``last_stop_reason`` and ``last_run_completion``. Those with none
(never run, or their runs expired ``stream_ttl_s`` after ending) come last, oldest first, in either
order, as conversations never messaged do by ``last_message_at``. A cursor keeps its place in
that order whether or not it passes the filters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

from runtime.agent.context import render_system
from runtime.errors import InvalidRequestError, NotFoundError
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import HistoryMessage, SystemMessage
from runtime.schemas.runs import RunQuery, RunStatus, RunView, StopReason
from runtime.store.agents import MAX_SCAN, AgentStore, ConversationStore, default_conversation_id
from runtime.store.history import HistoryStore, Order
from runtime.store.runs import RunStore

Route = Literal["agent", "conversation"]
Record = TypeVar("Record", AgentRecord, ConversationRecord)
AgentOrderBy = Literal["created_at", "updated_at", "last_run_completion"]
ConversationOrderBy = Literal["created_at", "last_message_at", "last_run_completion"]
AGENTS_PAGE = 100  # the store's page when filtering agents: at least this many a round trip
RUN_SCAN = 1_000  # agents or conversations whose last run one listing reads, at most
RUN_READS_AT_ONCE = 16  # of those reads, in flight together
FINISHED: list[RunStatus] = ["completed", "failed", "cancelled"]


def system_message_id(conversation_id: str) -> str:
    return "message-" + conversation_id.removeprefix("conv-")


def system_message(agent: AgentRecord, conversation_id: str, date: datetime) -> SystemMessage:
    return SystemMessage(id=system_message_id(conversation_id), date=date, content=render_system(agent))


async def messages(
    history: HistoryStore,
    agent: AgentRecord,
    conversation_id: str,
    *,
    route: Route,
    limit: int,
    after: str | None,
    before: str | None,
    order: Order,
    types: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One page of the conversation's messages as ``route`` lists them (module docstring)."""
    system_id = system_message_id(conversation_id)
    if route == "conversation":  # Letta's conversation route reads an unknown cursor as none
        after = await _known(history, conversation_id, after, system_id)
        before = await _known(history, conversation_id, before, system_id)
    if before == system_id:
        return []  # nothing comes before the system message
    with_system = after is None
    after = None if after == system_id else after
    room = limit - 1 if with_system and order == "asc" else limit
    stored: list[HistoryMessage] = []
    if room > 0:
        try:
            stored = await history.page(
                conversation_id,
                limit=room,
                after=after,
                before=before,
                order=order,
                unknown_cursors="refuse" if route == "agent" else "ignore",
            )
        except NotFoundError:
            cursor = after if after is not None else before
            raise NotFoundError(f"No message found with id '{cursor}' for agent '{agent.id}'.") from None
    page: list[HistoryMessage] = list(stored)
    if with_system and (order == "asc" or len(stored) < limit):
        system = system_message(agent, conversation_id, agent.created_at)
        page = [system, *page] if order == "asc" else [*page, system]
    if order == "desc":
        page = page[::-1] if route == "agent" else _parts_in_order(page)
    return [m.model_dump(mode="json", exclude_none=True) for m in page if types is None or m.message_type in types]


async def message(
    history: HistoryStore, agents: AgentStore, conversations: ConversationStore, message_id: str, *, tenant: str
) -> list[dict[str, Any]]:
    """``GET /v1/messages/{id}``: the parts of a stored message, or a system message; 404 if the
    caller's tenant has no message of that id."""
    found = await history.message(message_id)
    if found is not None:
        conversation_id, parts = found
        await conversations.get(conversation_id, tenant=tenant)
        return [m.model_dump(mode="json", exclude_none=True) for m in parts]
    uuid = message_id.removeprefix("message-")
    try:
        conversation = await conversations.get(f"conv-{uuid}", tenant=tenant)
        agent = await agents.get(conversation.agent_id, tenant=tenant)
    except NotFoundError:
        try:  # the default conversation's, before its first message
            agent = await agents.get(f"agent-{uuid}", tenant=tenant)
        except NotFoundError:
            raise NotFoundError(f"Message with id {message_id} not found.") from None
        conversation_id = default_conversation_id(agent.id)
    else:
        conversation_id = conversation.id
    return [system_message(agent, conversation_id, agent.created_at).model_dump(mode="json", exclude_none=True)]


async def _known(history: HistoryStore, conversation_id: str, cursor: str | None, system_id: str) -> str | None:
    """``cursor`` if it is the conversation's system message or one of its stored messages (a
    fork's copied ones included), else None."""
    if cursor is None or cursor == system_id:
        return cursor
    return cursor if await history.holds(conversation_id, cursor) else None


def _parts_in_order(newest_first: list[HistoryMessage]) -> list[HistoryMessage]:
    """Newest first by message, each message's parts in their own order."""
    out: list[HistoryMessage] = []
    start = 0
    while start < len(newest_first):
        end = start + 1
        while end < len(newest_first) and newest_first[end].id == newest_first[start].id:
            end += 1
        out.extend(reversed(newest_first[start:end]))
        start = end
    return out


async def run_messages(
    history: HistoryStore, run: RunView, *, limit: int, after: str | None, before: str | None, order: Order
) -> list[dict[str, Any]]:
    """The messages ``run`` wrote (its input among them), oldest first unless ``order="desc"``,
    each part of a model response its own item; ``after``/``before``: message ids, ``after``
    skipping every part of its message (an unknown ``after`` gives nothing, an unknown ``before``
    bounds nothing); only the message types the run's request asked for."""
    since_ms = int(run.created_at.timestamp() * 1000)
    found = await history.of_run(run.conversation_id, run.id, since_ms=since_ms)
    if after is not None:
        ids = [m.id for m in found]
        found = found[len(ids) - ids[::-1].index(after) :] if after in ids else []
    if before is not None:
        ids = [m.id for m in found]
        found = found[: ids.index(before)] if before in ids else found
    if order == "desc":
        found.reverse()
    page = found[:limit]
    while page and len(page) < len(found) and found[len(page)].id == page[-1].id:
        page.append(found[len(page)])  # never end a page inside a message: the next one skips its parts
    types = (run.request_config.include_return_message_types if run.request_config else None) or None
    return [m.model_dump(mode="json", exclude_none=True) for m in page if types is None or m.message_type in types]


async def steps(
    runs: RunStore, run: RunView, *, limit: int, after: str | None, before: str | None, order: Order | None
) -> list[dict[str, Any]]:
    """``run``'s step traces, oldest first unless ``order="desc"``; ``after``/``before``: step ids
    (an unknown ``after`` gives nothing, an unknown ``before`` bounds nothing)."""
    found = await runs.steps(run.conversation_id, run.id)
    if after is not None:
        ids = [s["id"] for s in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    if before is not None:
        ids = [s["id"] for s in found]
        found = found[: ids.index(before)] if before in ids else found
    if order == "desc":
        found.reverse()
    return found[:limit]


async def agents(
    store: AgentStore,
    *,
    tenant: str,
    limit: int,
    after: str | None,
    order: Order,
    name: str | None,
    tags: Sequence[str] | None,
    match_all_tags: bool,
    before: str | None = None,
    query_text: str | None = None,
) -> list[AgentRecord]:
    """The tenant's agents by creation (``order``) between the cursors; ``name``: only agents of
    that name; ``query_text``: only those whose name holds it (case-insensitive); ``tags``: only
    those with any of them (all of them with ``match_all_tags``)."""
    wanted = _agent_filter(name, query_text, tags, match_all_tags)

    def page(cursor: str | None, size: int) -> Awaitable[list[AgentRecord]]:
        return store.list(tenant=tenant, limit=size, after=cursor, order=order)

    return await _filtered(page, wanted, limit=limit, page_size=max(limit, AGENTS_PAGE), after=after, before=before)


async def find_agents(
    store: AgentStore,
    runs: RunStore,
    *,
    tenant: str,
    limit: int,
    after: str | None,
    before: str | None,
    order: Order,
    order_by: AgentOrderBy,
    name: str | None,
    query_text: str | None,
    tags: Sequence[str] | None,
    match_all_tags: bool,
    last_stop_reason: StopReason | None,
) -> tuple[list[AgentRecord], dict[str, RunView | None]]:
    """``GET /v1/agents/``: ``agents``, or, ordered by ``updated_at`` or ``last_run_completion`` or
    filtered by ``last_stop_reason``, every agent read and sorted (module docstring); with the last
    runs read for the agents found (none read: an empty map)."""
    if order_by == "created_at" and last_stop_reason is None:
        found = await agents(
            store, tenant=tenant, limit=limit, after=after, before=before, order=order, name=name, query_text=query_text,
            tags=tags, match_all_tags=match_all_tags,
        )  # fmt: skip
        return found, {}
    why = f"order_by={order_by}" if order_by != "created_at" else "last_stop_reason"
    total = await store.count(tenant=tenant)
    if total > MAX_SCAN:
        raise InvalidRequestError(
            f"{why} reads and sorts every agent, at most {MAX_SCAN}, and there are {total}: order by created_at "
            "(with name, query_text or tags to narrow it) instead"
        )
    everyone = await store.every(tenant=tenant)
    wanted = _agent_filter(name, query_text, tags, match_all_tags)
    candidates = [a for a in everyone if wanted(a)]
    cursors = _cursors(everyone, after, before)
    if cursors is None:
        return [], {}
    last: dict[str, RunView | None] = {}
    if order_by == "last_run_completion" or last_stop_reason is not None:
        _check_run_scan(len(candidates), why, "agents", "name, query_text or tags")
        last = await last_runs(runs, _ids([*candidates, *cursors]), of="agent", tenant=tenant)
    if last_stop_reason is not None:
        candidates = [a for a in candidates if (run := last[a.id]) is not None and run.stop_reason == last_stop_reason]
    ordered = _agents_in_order(_with(candidates, cursors), order_by, order, last)
    found = _window(ordered, set(_ids(candidates)), limit=limit, after=after, before=before)
    return found, {a.id: last[a.id] for a in found if a.id in last}


def _agents_in_order(
    records: Sequence[AgentRecord], order_by: AgentOrderBy, order: Order, last: Mapping[str, RunView | None]
) -> list[AgentRecord]:
    if order_by == "last_run_completion":
        return _by_last_run(records, last, order)
    if order_by == "updated_at":
        return sorted(records, key=lambda a: a.updated_at, reverse=order == "desc")
    return sorted(records, key=lambda a: a.created_at, reverse=order == "desc")


def _agent_filter(
    name: str | None, query_text: str | None, tags: Sequence[str] | None, match_all_tags: bool
) -> Callable[[AgentRecord], bool]:
    needle = query_text.casefold() if query_text else None

    def wanted(record: AgentRecord) -> bool:
        if name is not None and record.name != name:
            return False
        if needle is not None and needle not in record.name.casefold():
            return False
        if not tags:
            return True
        held = set(record.tags)
        return all(t in held for t in tags) if match_all_tags else any(t in held for t in tags)

    return wanted


async def conversations(
    store: ConversationStore,
    runs: RunStore,
    *,
    tenant: str,
    agent_id: str | None,
    limit: int,
    after: str | None,
    order: Order,
    order_by: ConversationOrderBy,
    archive_status: Literal["unarchived", "archived", "all"] = "unarchived",
    summary_search: str | None = None,
) -> list[ConversationRecord]:
    """The tenant's conversations (or ``agent_id``'s) by creation, by last message or by when their
    last run finished, but the agents' own histories (their default conversations), which Letta
    does not list: there they are no conversation at all, and the hidden ones. ``archive_status``:
    which of archived and not archived; ``summary_search``: only those whose summary holds it
    (case-insensitive)."""
    needle = summary_search.casefold() if summary_search else None

    def wanted(c: ConversationRecord) -> bool:
        if c.is_default or c.hidden:
            return False
        if archive_status != "all" and c.archived != (archive_status == "archived"):
            return False
        return needle is None or needle in (c.summary or "").casefold()

    if order_by == "last_run_completion":
        return await _conversations_by_last_run(store, runs, wanted, tenant=tenant, agent_id=agent_id, limit=limit, after=after, order=order)

    def page(cursor: str | None, size: int) -> Awaitable[list[ConversationRecord]]:
        return store.list(tenant=tenant, agent_id=agent_id, limit=size, after=cursor, order=order, order_by=order_by)

    return await _filtered(page, wanted, limit=limit, page_size=limit, after=after)


async def _conversations_by_last_run(
    store: ConversationStore,
    runs: RunStore,
    wanted: Callable[[ConversationRecord], bool],
    *,
    tenant: str,
    agent_id: str | None,
    limit: int,
    after: str | None,
    order: Order,
) -> list[ConversationRecord]:
    """``conversations`` by when their last run finished: every one read and sorted (module docstring)."""
    total = await store.count(tenant=tenant, agent_id=agent_id)
    if total > MAX_SCAN:
        raise InvalidRequestError(
            f"order_by=last_run_completion reads and sorts every conversation, at most {MAX_SCAN}, and there are "
            f"{total}: list one agent's (agent_id), or order by created_at or last_message_at"
        )
    everyone = await store.every(tenant=tenant, agent_id=agent_id)
    candidates = [c for c in everyone if wanted(c)]
    cursors = _cursors(everyone, after, None)
    if cursors is None:
        return []
    _check_run_scan(len(candidates), "order_by=last_run_completion", "conversations", "agent_id, archive_status or summary_search")
    last = await last_runs(runs, _ids([*candidates, *cursors]), of="conversation", tenant=tenant)
    ordered = _by_last_run(_with(candidates, cursors), last, order)
    return _window(ordered, set(_ids(candidates)), limit=limit, after=after, before=None)


async def last_runs(
    runs: RunStore, ids: Sequence[str], *, of: Literal["agent", "conversation"], tenant: str
) -> dict[str, RunView | None]:
    """The last finished run of each agent (``of="agent"``, all its conversations') or conversation
    in ``ids``: the newest run that ended, however it ended; None for one with none (never run, or
    its runs expired). ``RUN_READS_AT_ONCE`` read at a time."""
    gate = asyncio.Semaphore(RUN_READS_AT_ONCE)

    async def last(owner: str) -> RunView | None:
        if of == "agent":
            query = RunQuery(agent_id=owner, statuses=FINISHED, limit=1)
        else:
            query = RunQuery(conversation_id=owner, statuses=FINISHED, limit=1)
        async with gate:
            found = await runs.list(query, tenant=tenant)
        return found[0] if found else None

    return dict(zip(ids, await asyncio.gather(*(last(i) for i in ids)), strict=True))


def _check_run_scan(candidates: int, why: str, what: str, narrowing: str) -> None:
    """400 when a listing would read the last runs of more than ``RUN_SCAN`` ``what``."""
    if candidates > RUN_SCAN:
        raise InvalidRequestError(
            f"{why} reads the last run of each of the {what} listed, at most {RUN_SCAN}, and {candidates} match: "
            f"narrow them with {narrowing}"
        )


def _cursors(everyone: Sequence[Record], after: str | None, before: str | None) -> list[Record] | None:
    """The records the cursors name (an unknown ``before`` names none); None if ``after`` names
    none of ``everyone``."""
    by_id = {r.id: r for r in everyone}
    if after is not None and after not in by_id:
        return None
    return [by_id[c] for c in (after, before) if c is not None and c in by_id]


def _with(records: Sequence[Record], more: Sequence[Record]) -> list[Record]:
    """``records``, then those of ``more`` not among them."""
    held = {r.id for r in records}
    return list(records) + [r for r in more if r.id not in held]


def _ids(records: Sequence[Record]) -> list[str]:
    return list(dict.fromkeys(r.id for r in records))


def _by_last_run(records: Sequence[Record], last: Mapping[str, RunView | None], order: Order) -> list[Record]:
    """By when each one's last run finished, ``order``; those without one after them, oldest first."""
    finished = {r.id: run.completed_at for r in records if (run := last.get(r.id)) is not None and run.completed_at is not None}
    ran = sorted((r for r in records if r.id in finished), key=lambda r: finished[r.id], reverse=order == "desc")
    never = sorted((r for r in records if r.id not in finished), key=lambda r: r.created_at)
    return ran + never


def _window(ordered: Sequence[Record], kept: set[str], *, limit: int, after: str | None, before: str | None) -> list[Record]:
    """The first ``limit`` records of ``ordered`` in ``kept``, strictly between the records
    ``after`` and ``before`` (both in ``ordered`` when given, but an unknown ``before``)."""
    ids = [r.id for r in ordered]
    start = ids.index(after) + 1 if after is not None else 0
    end = ids.index(before) if before is not None and before in ids else len(ids)
    return [r for r in ordered[start:end] if r.id in kept][:limit]


async def _filtered(
    page: Callable[[str | None, int], Awaitable[list[Record]]],
    wanted: Callable[[Record], bool],
    *,
    limit: int,
    page_size: int,
    after: str | None,
    before: str | None = None,
) -> list[Record]:
    """The first ``limit`` records ``wanted`` in the store's order after ``after`` and before
    ``before``, read ``page_size`` at a time until a short page or ``before``."""
    found: list[Record] = []
    while len(found) < limit:
        batch = await page(after, page_size)
        ids = [r.id for r in batch]
        if before in ids:
            found += [r for r in batch[: ids.index(before)] if wanted(r)]
            break
        found += [r for r in batch if wanted(r)]
        if len(batch) < page_size:
            break
        after = batch[-1].id
    return found[:limit]
