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
``limit`` records that pass, in the store's order from the cursor, however many of the store's
pages that takes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

from runtime.agent.context import render_system
from runtime.errors import NotFoundError
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import HistoryMessage, SystemMessage
from runtime.schemas.runs import RunView
from runtime.store.agents import AgentStore, ConversationStore, default_conversation_id
from runtime.store.history import HistoryStore, Order
from runtime.store.runs import RunStore

Route = Literal["agent", "conversation"]
Record = TypeVar("Record", AgentRecord, ConversationRecord)
AGENTS_PAGE = 100  # the store's page when filtering agents: at least this many a round trip


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
) -> list[AgentRecord]:
    """The tenant's agents by creation (``order``); ``name``: only agents of that name; ``tags``:
    only those with any of them (all of them with ``match_all_tags``)."""

    def wanted(record: AgentRecord) -> bool:
        if name is not None and record.name != name:
            return False
        if not tags:
            return True
        held = set(record.tags)
        return all(t in held for t in tags) if match_all_tags else any(t in held for t in tags)

    def page(cursor: str | None, size: int) -> Awaitable[list[AgentRecord]]:
        return store.list(tenant=tenant, limit=size, after=cursor, order=order)

    return await _filtered(page, wanted, limit=limit, page_size=max(limit, AGENTS_PAGE), after=after)


async def conversations(
    store: ConversationStore,
    *,
    tenant: str,
    agent_id: str | None,
    limit: int,
    after: str | None,
    order: Order,
    order_by: Literal["created_at", "last_message_at"],
    archive_status: Literal["unarchived", "archived", "all"] = "unarchived",
    summary_search: str | None = None,
) -> list[ConversationRecord]:
    """The tenant's conversations (or ``agent_id``'s) by creation or by last message, but the
    agents' own histories (their default conversations), which Letta does not list: there they
    are no conversation at all, and the hidden ones. ``archive_status``: which of archived and not
    archived; ``summary_search``: only those whose summary holds it (case-insensitive)."""
    needle = summary_search.casefold() if summary_search else None

    def wanted(c: ConversationRecord) -> bool:
        if c.is_default or c.hidden:
            return False
        if archive_status != "all" and c.archived != (archive_status == "archived"):
            return False
        return needle is None or needle in (c.summary or "").casefold()

    def page(cursor: str | None, size: int) -> Awaitable[list[ConversationRecord]]:
        return store.list(tenant=tenant, agent_id=agent_id, limit=size, after=cursor, order=order, order_by=order_by)

    return await _filtered(page, wanted, limit=limit, page_size=limit, after=after)


async def _filtered(
    page: Callable[[str | None, int], Awaitable[list[Record]]],
    wanted: Callable[[Record], bool],
    *,
    limit: int,
    page_size: int,
    after: str | None,
) -> list[Record]:
    """The first ``limit`` records ``wanted`` in the store's order after ``after``, read
    ``page_size`` at a time until a short page."""
    found: list[Record] = []
    while len(found) < limit:
        batch = await page(after, page_size)
        found += [r for r in batch if wanted(r)]
        if len(batch) < page_size:
            break
        after = batch[-1].id
    return found[:limit]
