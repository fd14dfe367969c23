"""Letta's list filters, through the real ``letta-client``: each one a Letta program sends is either
honoured or refused with a message, never dropped (FastAPI ignores a query parameter a route does
not declare, so a dropped filter reads as a wrong answer with no error)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from letta_client import BadRequestError, Letta, UnprocessableEntityError

from tests.conftest import Convoy

TOOLS = ["add", "explode", "note", "sleepy", "transfer"]  # tests.fakes.tools


@pytest.fixture(scope="module")
def letta(convoy: Convoy) -> Letta:
    return Letta(base_url=convoy.url, api_key="unused-in-open-mode", max_retries=0)


def names(tools: Iterable[Any]) -> list[str]:
    return sorted(t.name for t in tools)


def test_tool_list_filters_are_honoured(letta: Letta, convoy: Convoy) -> None:
    assert names(letta.tools.list()) == TOOLS
    assert names(letta.tools.list(search="ANS")) == ["transfer"], "part of a name, any case"
    assert names(letta.tools.list(search="nothing-like-it")) == []
    assert names(letta.tools.list(tool_ids=["tool-add", "tool-note"])) == ["add", "note"]
    assert names(letta.tools.list(tool_ids=["tool-add"], names=["add", "note"])) == ["add"], "filters narrow together"
    assert names(letta.tools.list(tool_types=["custom"], order_by="created_at")) == TOOLS, "every Convoy tool is custom"
    assert names(letta.tools.list(tool_types=["letta_core"])) == []
    assert names(letta.tools.list(exclude_tool_types=["custom"])) == []
    assert names(letta.tools.list(exclude_tool_types=["external_mcp"])) == TOOLS
    assert names(letta.tools.list(return_only_letta_tools=True)) == [], "Convoy has no Letta built-in tools"
    assert names(letta.tools.list(return_only_letta_tools=False)) == TOOLS

    # Letta takes comma-separated values as well as repeated ones.
    listed = httpx.get(f"{convoy.url}/v1/tools/", params={"tool_ids": "tool-add,tool-sleepy", "tool_types": "letta_core,custom"})
    assert listed.status_code == 200, listed.text
    assert sorted(t["name"] for t in listed.json()) == ["add", "sleepy"]


def test_tool_list_refuses_what_it_cannot_honour(letta: Letta) -> None:
    with pytest.raises(BadRequestError) as refused:
        letta.tools.list(tool_types=["python"])
    assert "tool_types: 'python' is not a tool type" in str(refused.value) and "'custom'" in str(refused.value)
    with pytest.raises(BadRequestError, match="exclude_tool_types"):
        letta.tools.list(exclude_tool_types=["custom,bogus"])
    with pytest.raises(UnprocessableEntityError, match="order_by"):
        letta.tools.list(extra_query={"order_by": "name"})


def test_model_list_refuses_unknown_provider_words(letta: Letta) -> None:
    assert [m.handle for m in letta.models.list(provider_type="letta")] == ["echo/echo"]
    assert "echo/echo" in [m.handle for m in letta.models.list(provider_category=["base", "byok"])]
    with pytest.raises(UnprocessableEntityError, match="provider_type"):
        letta.models.list(provider_type="gemini")  # type: ignore[arg-type]  # Convoy's API name, not Letta's word
    with pytest.raises(UnprocessableEntityError, match="provider_category"):
        letta.models.list(provider_category=["own"])  # type: ignore[list-item]


def test_order_by_is_created_at_or_refused(letta: Letta) -> None:
    agent = letta.agents.create(name="e2e-order-by", system="You repeat what you hear.", tools=["add"])
    letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "one two"}])
    (run,) = letta.runs.list(agent_id=agent.id, order_by="created_at")
    assert [m.message_type for m in letta.runs.messages.list(run.id, order_by="created_at")] == [
        "user_message",
        "assistant_message",
    ]
    assert len(letta.runs.steps.list(run.id, order_by="created_at").items) == 1
    assert names(letta.agents.tools.list(agent.id, order_by="created_at")) == ["add"]

    listings: dict[str, Callable[[dict[str, object]], object]] = {
        "runs.list": lambda q: letta.runs.list(agent_id=agent.id, extra_query=q),
        "runs.messages.list": lambda q: letta.runs.messages.list(run.id, extra_query=q),
        "runs.steps.list": lambda q: letta.runs.steps.list(run.id, extra_query=q),
        "agents.tools.list": lambda q: letta.agents.tools.list(agent.id, extra_query=q),
    }
    accepted = []
    for listing, call in listings.items():
        try:
            call({"order_by": "updated_at"})
        except UnprocessableEntityError as refused:
            assert "order_by" in str(refused) and "created_at" in str(refused), listing
        else:
            accepted.append(listing)
    assert accepted == [], "order_by other than created_at must be refused, not ignored"


def test_message_listings_refuse_a_group_and_take_letta_s_other_parameters(letta: Letta) -> None:
    """``group_id`` would narrow the listing to a Letta group's messages: refused, not ignored.
    ``include_err`` and the legacy assistant-message parameters are Letta's and list the same
    messages (no stored message is an error; the model's text is always an assistant message)."""
    agent = letta.agents.create(name="e2e-message-params", system="You repeat what you hear.")
    letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "one two"}])
    conversation = letta.conversations.create(agent_id=agent.id)
    letta.conversations.messages.create(conversation.id, messages=[{"role": "user", "content": "three"}], streaming=False)

    def kinds(messages: Iterable[Any]) -> list[str]:
        return [m.message_type for m in messages]

    mine = kinds(letta.agents.messages.list(agent.id))
    assert mine[-2:] == ["user_message", "assistant_message"]
    same = letta.agents.messages.list(
        agent.id,
        include_err=True,
        use_assistant_message=False,
        assistant_message_tool_name="send_message",
        assistant_message_tool_kwarg="message",
        order_by="created_at",
    )
    assert kinds(same) == mine
    theirs = kinds(letta.conversations.messages.list(conversation.id))
    assert kinds(letta.conversations.messages.list(conversation.id, include_err=False, order_by="created_at")) == theirs

    with pytest.raises(BadRequestError, match="group_id names a Letta multi-agent group"):
        letta.agents.messages.list(agent.id, group_id="group-1")
    with pytest.raises(BadRequestError, match="group_id"):
        letta.conversations.messages.list(conversation.id, group_id="group-1")
    with pytest.raises(UnprocessableEntityError, match="order_by"):
        letta.agents.messages.list(agent.id, extra_query={"order_by": "updated_at"})
    with pytest.raises(UnprocessableEntityError, match="order_by"):
        letta.conversations.messages.list(conversation.id, extra_query={"order_by": "updated_at"})
