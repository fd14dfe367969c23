"""Letta's agent and conversation listings, through the real ``letta-client``: every query parameter
``agents.list`` and ``conversations.list`` send is honoured or refused with a message, never
dropped (FastAPI ignores a parameter a route does not declare: a wrong answer with no error).

The session's server is shared: each test lists only the agents it tagged with a tag of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from letta_client import BadRequestError, Letta

from bench import upstream as fp
from tests.conftest import Convoy, KeyedConvoy


@pytest.fixture(scope="module")
def letta(convoy: Convoy) -> Letta:
    return Letta(base_url=convoy.url, api_key="unused-in-open-mode", max_retries=0)


@pytest.fixture
def http(convoy: Convoy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def tagged(letta: Letta, tag: str, count: int, **fields: Any) -> list[str]:
    """``count`` agents tagged ``tag``, oldest first: their ids."""
    return [letta.agents.create(name=f"{tag}-{i}", tags=[tag], **fields).id for i in range(count)]


def ids(page: Any) -> list[str]:
    return [item.id for item in page]


def say(letta: Letta, agent_id: str, text: str = "hello") -> None:
    letta.agents.messages.create(agent_id, messages=[{"role": "user", "content": text}])


def test_agents_are_listed_between_before_and_after_cursors(letta: Letta) -> None:
    tag = unique("cursors")
    a0, a1, a2, a3 = tagged(letta, tag, 4)
    assert ids(letta.agents.list(tags=[tag], order="asc")) == [a0, a1, a2, a3]
    assert ids(letta.agents.list(tags=[tag], order="asc", before=a2).items) == [a0, a1]
    assert ids(letta.agents.list(tags=[tag], order="asc", after=a0, before=a3).items) == [a1, a2]
    assert ids(letta.agents.list(tags=[tag], before=a1).items) == [a3, a2], "newest first: those created after a1"
    assert ids(letta.agents.list(tags=[tag], before=a0, limit=2).items) == [a3, a2], "the first `limit` in order"
    assert ids(letta.agents.list(tags=[tag], order_by="updated_at", order="asc", after=a0, before=a3).items) == [a1, a2]
    unknown = f"agent-{uuid.uuid4()}"
    assert ids(letta.agents.list(tags=[tag], order="asc", before=unknown).items) == [a0, a1, a2, a3], "bounds nothing"


def test_agents_are_found_by_part_of_their_name_in_any_case(letta: Letta) -> None:
    tag = unique("query")
    sky = letta.agents.create(name=f"{tag} Sky Rover", tags=[tag]).id
    ground = letta.agents.create(name=f"{tag} ground crew", tags=[tag]).id
    assert ids(letta.agents.list(query_text="sky ROVER", tags=[tag])) == [sky]
    assert ids(letta.agents.list(query_text=tag.upper())) == [ground, sky]
    assert ids(letta.agents.list(query_text=f"{tag} sky", name=f"{tag} ground crew")) == [], "filters narrow together"


def test_agents_are_ordered_by_their_last_update(letta: Letta) -> None:
    tag = unique("updated")
    a0, a1, a2 = tagged(letta, tag, 3)
    letta.agents.update(a0, description="touched last")
    listed = list(letta.agents.list(tags=[tag], order_by="updated_at"))
    assert ids(listed) == [a0, a2, a1]
    assert [a.updated_at for a in listed] == sorted((a.updated_at for a in listed), reverse=True)
    assert ids(letta.agents.list(tags=[tag], order_by="updated_at", order="asc")) == [a1, a2, a0]
    assert ids(letta.agents.list(tags=[tag], sort_by="updated_at", ascending=True)) == [a1, a2, a0], "the deprecated names"
    assert ids(letta.agents.list(tags=[tag], ascending=True)) == [a0, a1, a2]
    assert ids(letta.agents.list(tags=[tag], order_by="updated_at", limit=1)) == [a0, a2, a1], "page by page"


def test_agents_are_ordered_by_their_last_run_never_run_last(letta: Letta) -> None:
    tag = unique("last-run")
    a0, a1, a2, a3 = tagged(letta, tag, 4)
    say(letta, a2)
    say(letta, a0)
    listed = list(letta.agents.list(tags=[tag], order_by="last_run_completion"))
    assert ids(listed) == [a0, a2, a1, a3], "never run: last, oldest first"
    done = {a.id: a.last_run_completion for a in listed}
    assert done[a0] and done[a2] and done[a0] > done[a2] and done[a1] is None and done[a3] is None
    assert ids(letta.agents.list(tags=[tag], order_by="last_run_completion", order="asc")) == [a2, a0, a1, a3]
    assert ids(letta.agents.list(tags=[tag], sort_by="last_run_completion")) == [a0, a2, a1, a3]
    assert ids(letta.agents.list(tags=[tag], order_by="last_run_completion", limit=1)) == [a0, a2, a1, a3], "page by page"
    assert ids(letta.agents.list(tags=[tag], order_by="last_run_completion", after=a2).items) == [a1, a3]
    assert ids(letta.agents.list(tags=[tag], order_by="last_run_completion", before=a1).items) == [a0, a2]


def test_agents_are_filtered_by_their_last_stop_reason(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    tag = unique("stop")
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, [("t0", "transfer", '{"amount": 5, "to": "bob"}')])))
    gated = letta.agents.create(name=f"{tag}-gated", tags=[tag], model=f"openai/{model}", tools=["transfer"]).id
    echoed, idle = tagged(letta, tag, 2)
    say(letta, gated, "pay bob")
    say(letta, echoed)
    assert ids(letta.agents.list(tags=[tag], last_stop_reason="requires_approval")) == [gated]
    assert ids(letta.agents.list(tags=[tag], last_stop_reason="end_turn")) == [echoed]
    assert ids(letta.agents.list(tags=[tag], last_stop_reason="cancelled")) == []
    assert idle in ids(letta.agents.list(tags=[tag]))

    with_pending = {a.id: a.pending_approval for a in letta.agents.list(tags=[tag], include=["agent.pending_approval"])}
    assert with_pending[gated] is not None and with_pending[gated].tool_calls[0].tool_call_id == "t0"  # type: ignore[index]
    assert with_pending[echoed] is None and with_pending[idle] is None
    assert all(a.pending_approval is None for a in letta.agents.list(tags=[tag])), "only with include"


def test_agent_filters_convoy_cannot_honour_are_refused(letta: Letta, http: httpx.Client) -> None:
    tag = unique("refused")
    (agent,) = tagged(letta, tag, 1)
    refusals = {
        "identity_id": {"identity_id": "identity-1"},
        "identifier_keys": {"identifier_keys": ["user-42"]},
        "template_id": {"template_id": "template-1"},
        "base_template_id": {"base_template_id": "template-1"},
        "created_by_id": {"created_by_id": "user-1"},
    }
    for param, filters in refusals.items():
        with pytest.raises(BadRequestError, match=param) as refused:
            letta.agents.list(tags=[tag], **filters)
        assert "Convoy has no" in str(refused.value)
    with pytest.raises(BadRequestError, match="order=desc and ascending"):
        letta.agents.list(tags=[tag], order="desc", ascending=True)
    with pytest.raises(BadRequestError, match="order_by=created_at and sort_by"):
        letta.agents.list(tags=[tag], order_by="created_at", sort_by="updated_at")
    assert http.get("/v1/agents/", params={"sort_by": "name"}).status_code == 422
    assert http.get("/v1/agents/", params={"include": "agent.everything"}).status_code == 422

    assert ids(letta.agents.list(tags=[tag], project_id="project-anything")) == [agent], "one project: the tenant's"
    assert ids(letta.agents.list(tags=[tag], include_relationships=["tools"], include=["agent.tools"])) == [agent]


def test_conversations_are_ordered_by_their_last_run_never_run_last(letta: Letta) -> None:
    agent = letta.agents.create(name=unique("conversations")).id
    c0, c1, c2 = (letta.conversations.create(agent_id=agent).id for _ in range(3))
    list(letta.conversations.messages.create(c2, messages=[{"role": "user", "content": "first"}]))
    list(letta.conversations.messages.create(c0, messages=[{"role": "user", "content": "last"}]))
    assert ids(letta.conversations.list(agent_id=agent, order_by="last_run_completion")) == [c0, c2, c1]
    assert ids(letta.conversations.list(agent_id=agent, order_by="last_run_completion", order="asc")) == [c2, c0, c1]
    paged: list[str] = []
    while page := ids(letta.conversations.list(agent_id=agent, order_by="last_run_completion", limit=1, after=paged[-1] if paged else None)):
        paged += page
    assert paged == [c0, c2, c1], "page by page (this listing's SDK method does not page by itself)"


def test_listings_sorted_in_memory_hold_the_callers_tenant_only(keyed_convoy: KeyedConvoy) -> None:
    acme = Letta(base_url=keyed_convoy.url, api_key=keyed_convoy.acme, max_retries=0)
    globex = Letta(base_url=keyed_convoy.url, api_key=keyed_convoy.globex, max_retries=0)
    tag = unique("tenants")
    (theirs,) = tagged(acme, tag, 1)
    say(acme, theirs)
    conversation = acme.conversations.create(agent_id=theirs).id
    list(acme.conversations.messages.create(conversation, messages=[{"role": "user", "content": "hi"}]))
    for order_by in ("updated_at", "last_run_completion"):
        assert ids(acme.agents.list(tags=[tag], order_by=order_by)) == [theirs]
        assert ids(globex.agents.list(tags=[tag], order_by=order_by)) == []
        everything = ids(globex.agents.list(order_by=order_by, limit=1000).items)
        assert theirs not in everything
        assert ids(globex.agents.list(order_by=order_by, before=theirs, limit=1000).items) == everything, "another's cursor bounds nothing"
    assert ids(globex.agents.list(order_by="last_run_completion", after=theirs).items) == [], "nor starts anywhere"
    assert conversation in ids(acme.conversations.list(order_by="last_run_completion", limit=1000))
    assert conversation not in ids(globex.conversations.list(order_by="last_run_completion", limit=1000))
