"""Letta's listing rules, on stores held in memory: the system message's id, the parts of a model
response kept in their own order in a newest-first listing, agents found by Letta's filters."""

from __future__ import annotations

from datetime import UTC, datetime

from runtime.letta import listings
from runtime.letta.listings import _parts_in_order, system_message_id
from runtime.schemas.agents import AgentRecord
from runtime.schemas.messages import AssistantMessage, HistoryMessage, ReasoningMessage, UserMessage

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_the_system_message_id_is_the_conversations_uuid() -> None:
    assert system_message_id("conv-00000000-0000-4000-8000-000000000001") == "message-00000000-0000-4000-8000-000000000001"


def test_newest_first_keeps_each_messages_parts_in_their_own_order() -> None:
    question = UserMessage(id="message-1", date=NOW, content="hi")
    thought = ReasoningMessage(id="message-2", date=NOW, reasoning="think")
    answer = AssistantMessage(id="message-2", date=NOW, content="hello")
    oldest_first: list[HistoryMessage] = [question, thought, answer]
    assert _parts_in_order(oldest_first[::-1]) == [thought, answer, question]


class _Agents:
    """An ``AgentStore`` holding its agents in memory, oldest first; counts its pages."""

    def __init__(self, records: list[AgentRecord]) -> None:
        self.records = records
        self.pages = 0

    async def list(self, *, tenant: str, limit: int = 50, after: str | None = None, order: str = "asc") -> list[AgentRecord]:
        self.pages += 1
        ordered = self.records if order == "asc" else self.records[::-1]
        ids = [r.id for r in ordered]
        start = ids.index(after) + 1 if after is not None else 0
        return ordered[start : start + limit]


def _agent(i: int, tags: list[str]) -> AgentRecord:
    return AgentRecord(id=f"agent-{i:04d}", name=f"a{i % 2}", model="echo/echo", tags=tags, created_at=NOW, updated_at=NOW)


async def test_a_filtered_listing_reads_as_many_pages_as_it_takes_to_fill_its_limit() -> None:
    store = _Agents([_agent(i, ["x"] if i % 5 == 0 else ["y"]) for i in range(450)])
    found = await listings.agents(
        store, tenant="t", limit=30, after=None, order="asc", name=None, tags=["x"], match_all_tags=False
    )
    assert [a.id for a in found] == [f"agent-{i:04d}" for i in range(0, 150, 5)]
    assert store.pages == 2  # 100 a page: 20 matches in the first, the other 10 in the second


async def test_agents_are_filtered_by_name_and_by_any_or_all_of_their_tags() -> None:
    store = _Agents([_agent(0, ["x"]), _agent(1, ["x", "y"]), _agent(2, ["y"]), _agent(3, [])])

    async def ids(**filters: object) -> list[str]:
        query: dict[str, object] = {"name": None, "tags": None, "match_all_tags": False, **filters}
        found = await listings.agents(store, tenant="t", limit=10, after=None, order="desc", **query)
        return [a.id for a in found]

    assert await ids() == ["agent-0003", "agent-0002", "agent-0001", "agent-0000"]
    assert await ids(name="a1") == ["agent-0003", "agent-0001"]
    assert await ids(tags=["x", "y"]) == ["agent-0002", "agent-0001", "agent-0000"]
    assert await ids(tags=["x", "y"], match_all_tags=True) == ["agent-0001"]
