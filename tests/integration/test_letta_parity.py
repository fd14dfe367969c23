"""Letta programs run unchanged: the routes and behaviours beyond the happy path, each checked with
the real ``letta-client`` (or raw HTTP where the SDK has no method) as Letta's API reference and the
SDK's own types document them: agent-direct conversation ids, the history's shape and order, the
system message, one message by id, conversation delete and fork, an agent's state (message ids,
last stop reason, pending approval), its tools and their approval, the context window, async sends
with a callback, a run's messages, Letta's cancel and resume answers."""

from __future__ import annotations

import inspect
import itertools
import json
import queue
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import letta_client
import pytest
from letta_client import Letta

from bench import upstream as fp
from tests.conftest import Convoy, wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def letta(convoy: Convoy) -> Letta:
    return Letta(base_url=convoy.url, api_key="unused", max_retries=0)


@pytest.fixture
def http(convoy: Convoy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        yield client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# -- agent-direct conversation ids -----------------------------------------------------------------


def test_default_with_agent_id_and_the_agent_id_name_the_agents_own_history(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="direct", system="Echo.")
    streamed = list(letta.conversations.messages.create("default", agent_id=agent.id, messages=user("via default")))
    assert [e.content for e in streamed if e.message_type == "assistant_message"] == ["via default"]
    reply = http.post(f"/v1/conversations/{agent.id}/messages", json={"messages": user("via agent id"), "streaming": False})
    assert reply.status_code == 200 and reply.json()["messages"][-1]["content"] == "via agent id"
    letta.agents.messages.create(agent.id, messages=user("via agents route"))

    said = [m.content for m in letta.conversations.messages.list("default", agent_id=agent.id) if m.message_type == "user_message"]
    assert said == ["via default", "via agent id", "via agents route"], "one history, listed oldest first as the agent route lists it"
    runs = letta.runs.list(agent_ids=[agent.id])
    assert len(runs.items) == 3 and {r.conversation_id for r in runs.items} == {"conv-" + agent.id.removeprefix("agent-")}

    refused = http.post("/v1/conversations/default/messages", json={"messages": user("no agent")})
    assert refused.status_code == 400 and "agent_id" in refused.json()["detail"]
    unknown = http.get("/v1/conversations/default/messages", params={"agent_id": f"agent-{uuid.uuid4()}"})
    assert unknown.status_code == 404
    for route in ("messages", "stream", "recompile"):
        malformed = http.post(f"/v1/conversations/default/{route}", json={"messages": user("x"), "agent_id": "bob\u00e9"})
        assert malformed.status_code == 400 and "agent-<uuid4>" in malformed.json()["detail"], route


def test_agent_direct_cancel_and_resume_answer_as_letta(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="direct-cancel")
    with pytest.raises(letta_client.ConflictError, match="No active runs to cancel"):
        letta.conversations.cancel("default", agent_id=agent.id)
    with pytest.raises(letta_client.BadRequestError, match="No active runs found for this conversation"):
        list(letta.conversations.messages.stream("default", agent_id=agent.id))
    letta.agents.messages.create(agent.id, messages=user("done"))
    with pytest.raises(letta_client.BadRequestError, match="No active runs found for this conversation"):
        list(letta.conversations.messages.stream(agent.id))  # its only run has ended

    body = {"messages": user(" ".join(["slow"] * 400)), "background": True, "stream_tokens": True}
    with http.stream("POST", "/v1/conversations/default/messages", json={**body, "agent_id": agent.id}) as response:
        first = json.loads(next(line for line in response.iter_lines() if line.startswith("data: ")).removeprefix("data: "))
    resumed = letta.conversations.messages.stream("default", agent_id=agent.id, starting_after=0)
    assert next(iter(resumed)).run_id == first["run_id"]
    assert letta.conversations.cancel("default", agent_id=agent.id) == {first["run_id"]: "cancelled"}
    assert letta.runs.retrieve(first["run_id"]).status == "cancelled"


# -- the history's shape and order -----------------------------------------------------------------


def _reasoned_turn(fake_provider: fp.FakeProvider, letta: Letta, *, text: str) -> tuple[Any, Any]:
    """An agent on a model that thinks, then answers; one turn sent in a fresh conversation."""
    model = unique("claude")
    fake_provider.script(model, fp.Stream(fp.anthropic_thinking(model, ["Let me think."], [text])))
    agent = letta.agents.create(name="reasoner", model=f"anthropic/{model}", system="Think first.")
    conversation = letta.conversations.create(agent_id=agent.id)
    list(letta.conversations.messages.create(conversation.id, messages=user("why?")))
    return agent, conversation


def test_conversation_listing_is_newest_first_with_each_responses_parts_in_order(
    letta: Letta, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    _agent, conversation = _reasoned_turn(fake_provider, letta, text="Because.")
    newest = [m.message_type for m in letta.conversations.messages.list(conversation.id).items]
    assert newest == ["reasoning_message", "assistant_message", "user_message", "system_message"]
    oldest = letta.conversations.messages.list(conversation.id, order="asc").items
    assert [m.message_type for m in oldest] == ["system_message", "user_message", "reasoning_message", "assistant_message"]
    assert oldest[0].content == "Think first." and oldest[0].id == "message-" + conversation.id.removeprefix("conv-")
    assert oldest[2].id == oldest[3].id, "one model response: its parts share an id"

    after_user = letta.conversations.messages.list(conversation.id, order="asc", after=oldest[1].id).items
    assert [m.message_type for m in after_user] == ["reasoning_message", "assistant_message"]
    before_answer = letta.conversations.messages.list(conversation.id, order="asc", before=oldest[3].id).items
    assert [m.message_type for m in before_answer] == ["system_message", "user_message"], "a cursor skips every part of its message"
    after_system = letta.conversations.messages.list(conversation.id, order="asc", after=oldest[0].id).items
    assert [m.message_type for m in after_system] == ["user_message", "reasoning_message", "assistant_message"]
    ignored = http.get(f"/v1/conversations/{conversation.id}/messages", params={"after": f"message-{uuid.uuid4()}"})
    assert ignored.status_code == 200 and len(ignored.json()) == 4, "an unknown cursor is ignored on this route, as Letta's"
    page = letta.conversations.messages.list(conversation.id, order="asc", limit=2).items
    assert [m.message_type for m in page] == ["system_message", "user_message"]
    only = http.get(f"/v1/conversations/{conversation.id}/messages", params={"include_return_message_types": "user_message"})
    assert [m["message_type"] for m in only.json()] == ["user_message"], "a filter letta-client 1.7 cannot send"


def test_pages_of_two_list_every_part_once_in_a_conversation_and_in_its_fork(
    letta: Letta, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    """A page edge among one response's parts (reasoning, then text) loses none of them, and a
    fork's copied messages are cursors of the fork's own listing."""
    if not hasattr(letta.conversations, "fork"):
        pytest.skip(f"letta-client {letta_client.__version__} has no conversations.fork")
    model = unique("claude")
    fake_provider.script(model, fp.Stream(fp.anthropic_thinking(model, ["Hmm."], ["Yes."])), repeat=True)
    agent = letta.agents.create(name="pager", model=f"anthropic/{model}", system="Think first.")
    source = letta.conversations.create(agent_id=agent.id)
    for text in ("one", "two", "three"):
        list(letta.conversations.messages.create(source.id, messages=user(text)))
    fork = letta.conversations.fork(source.id)
    for conversation in (source, fork):
        whole = [(m.id, m.message_type) for m in letta.conversations.messages.list(conversation.id, order="asc").items]
        assert len(whole) == 1 + 3 * 3, "the system message, then each turn's question, reasoning and answer"
        forwards = letta.conversations.messages.list(conversation.id, order="asc", limit=2)  # the SDK pages on with after=
        assert [(m.id, m.message_type) for m in itertools.islice(forwards, 2 * len(whole))] == whole
        backwards: list[tuple[str, str]] = []
        before: str | None = None
        for _ in range(len(whole)):
            params = {"limit": 2, **({"before": before} if before else {})}
            page = http.get(f"/v1/conversations/{conversation.id}/messages", params=params).json()
            if not page:
                break
            backwards += [(m["id"], m["message_type"]) for m in page]
            before = page[-1]["id"]
        assert sorted(backwards) == sorted(whole) and len(backwards) == len(whole), "newest first, every part once"


def test_a_runs_messages_page_by_whole_messages_between_its_cursors(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("c1", "add", '{"a": 2, "b": 3}')], content=["Adding."])),
        fp.Stream(fp.chat_text(model, ["5."])),
    )
    agent = letta.agents.create(name="runpager", model=f"openai/{model}", tools=["add"])
    run_id = letta.agents.messages.create(agent.id, messages=user("2 + 3?")).messages[0].run_id
    assert run_id is not None
    whole = letta.runs.messages.list(run_id).items
    kinds = ["user_message", "assistant_message", "tool_call_message", "tool_return_message", "assistant_message"]
    assert [m.message_type for m in whole] == kinds and whole[1].id == whole[2].id, "text and call: one response"
    paged = [m.message_type for m in itertools.islice(letta.runs.messages.list(run_id, limit=2), 2 * len(whole))]
    assert paged == kinds, "a page does not end inside a response, so the next one, after it, loses nothing"
    between = letta.runs.messages.list(run_id, after=whole[0].id, before=whole[4].id).items
    assert [m.message_type for m in between] == kinds[1:4]


def test_one_message_by_id_is_a_list_of_its_parts(letta: Letta, http: httpx.Client, fake_provider: fp.FakeProvider) -> None:
    agent, conversation = _reasoned_turn(fake_provider, letta, text="Indeed.")
    answer = letta.conversations.messages.list(conversation.id).items[0]
    parts = letta.messages.retrieve(answer.id)
    assert [p.message_type for p in parts] == ["reasoning_message", "assistant_message"] and parts[1].content == "Indeed."

    (system,) = letta.messages.retrieve(letta.agents.retrieve(agent.id).message_ids[0])
    assert system.message_type == "system_message" and system.content == "Think first."
    (conversation_system,) = letta.messages.retrieve(letta.conversations.retrieve(conversation.id).in_context_message_ids[0])
    assert conversation_system.message_type == "system_message"

    missing = f"message-{uuid.uuid4()}"
    with pytest.raises(letta_client.NotFoundError, match=f"Message with id {missing} not found"):
        letta.messages.retrieve(missing)
    assert http.get("/v1/messages/not-an-id").status_code == 422


# -- conversations: in-context ids, last message, order, delete, fork, recompile -------------------


def test_conversations_list_by_last_message_and_retrieve_their_in_context_ids(letta: Letta) -> None:
    agent = letta.agents.create(name="lister")
    first, second = (letta.conversations.create(agent_id=agent.id) for _ in range(2))
    list(letta.conversations.messages.create(second.id, messages=user("second first")))
    list(letta.conversations.messages.create(first.id, messages=user("first last")))
    by_message = [c.id for c in letta.conversations.list(agent_id=agent.id, order_by="last_message_at", order="desc")]
    assert by_message == [first.id, second.id]
    assert [c.id for c in letta.conversations.list(agent_id=agent.id)] == [second.id, first.id], "newest created first"
    assert [c.id for c in letta.conversations.list(agent_id=agent.id, order="asc")] == [first.id, second.id]

    retrieved = letta.conversations.retrieve(first.id)
    assert retrieved.last_message_at is not None
    ids = retrieved.in_context_message_ids
    listed = letta.conversations.messages.list(first.id, order="asc").items
    assert ids == list(dict.fromkeys(m.id for m in listed)), "the system message's id, then each message's once"


def test_delete_removes_a_conversation_and_its_history(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="deleter")
    conversation = letta.conversations.create(agent_id=agent.id)
    list(letta.conversations.messages.create(conversation.id, messages=user("forget me")))
    message_id = letta.conversations.messages.list(conversation.id).items[0].id
    letta.conversations.delete(conversation.id)

    with pytest.raises(letta_client.NotFoundError):
        letta.conversations.retrieve(conversation.id)
    with pytest.raises(letta_client.NotFoundError):
        letta.conversations.delete(conversation.id)
    with pytest.raises(letta_client.NotFoundError):
        letta.conversations.update(conversation.id, summary="too late")
    with pytest.raises(letta_client.NotFoundError):
        letta.messages.retrieve(message_id)
    assert conversation.id not in [c.id for c in letta.conversations.list(agent_id=agent.id)]
    assert http.post(f"/v1/conversations/{conversation.id}/messages", json={"input": "hello?"}).status_code == 404


def test_fork_starts_a_new_conversation_from_the_sources_messages(letta: Letta) -> None:
    if not hasattr(letta.conversations, "fork"):
        pytest.skip(f"letta-client {letta_client.__version__} has no conversations.fork")
    agent = letta.agents.create(name="forker")
    source = letta.conversations.create(agent_id=agent.id)
    for text in ("one", "two"):
        list(letta.conversations.messages.create(source.id, messages=user(text)))
    history = letta.conversations.messages.list(source.id, order="asc").items
    fork = letta.conversations.fork(source.id)
    assert fork.id != source.id and fork.agent_id == agent.id
    copied = letta.conversations.messages.list(fork.id, order="asc").items
    assert [(m.message_type, getattr(m, "content", None)) for m in copied[1:]] == [
        (m.message_type, getattr(m, "content", None)) for m in history[1:]
    ]
    list(letta.conversations.messages.create(fork.id, messages=user("three, in the fork only")))
    assert len(letta.conversations.messages.list(source.id).items) == len(history), "the source is unchanged"

    first_answer = history[2]
    early = letta.conversations.fork(source.id, message_id=first_answer.id)
    assert [m.content for m in letta.conversations.messages.list(early.id, order="asc").items[1:]] == ["one", "one"]
    direct = letta.conversations.fork("default", agent_id=agent.id)
    assert [m.message_type for m in letta.conversations.messages.list(direct.id).items] == ["system_message"]


def test_a_conversations_own_fields_are_kept_and_its_listing_filters_as_letta_documents(letta: Letta, http: httpx.Client) -> None:
    """Letta's ``ConversationCreate``/``ConversationUpdate`` fields and ``conversations.list``'s
    filters: a description, its own context window (the turns and the context overview use it),
    hidden from listings, archived out of the default listing, found by its summary."""
    if not {"context_window_limit", "hidden"} <= set(inspect.signature(letta.conversations.create).parameters):
        pytest.skip(f"letta-client {letta_client.__version__} sends no context_window_limit or hidden on conversations.create")
    agent = letta.agents.create(name="fielded", context_window_limit=8000)
    plain = letta.conversations.create(agent_id=agent.id)
    small = letta.conversations.create(agent_id=agent.id, description="about cats", summary="Cats and naps", context_window_limit=1000)
    hidden = letta.conversations.create(agent_id=agent.id, hidden=True)
    assert (small.description, small.context_window_limit, plain.context_window_limit) == ("about cats", 1000, None)
    assert letta.conversations.retrieve(small.id).context_window_limit == 1000

    def window(conversation_id: str) -> int:
        return int(http.get(f"/v1/agents/{agent.id}/context", params={"conversation_id": conversation_id}).json()["context_window_size_max"])

    assert (window(small.id), window(plain.id)) == (1000, 8000)
    long_input = {"input": "word " * 1200, "streaming": False}  # about 1,500 tokens: over 1,000, well under 8,000
    overflow = http.post(f"/v1/conversations/{small.id}/messages", json=long_input)
    assert overflow.status_code == 400 and overflow.json()["error"]["error_type"] == "context_window_overflow_in_input"
    assert http.post(f"/v1/conversations/{plain.id}/messages", json=long_input).status_code == 200

    def listed(**filters: Any) -> set[str]:
        return {c.id for c in letta.conversations.list(agent_id=agent.id, **filters)}

    assert listed() == {plain.id, small.id}, "a hidden conversation is not listed"
    archived = letta.conversations.update(plain.id, archived=True)
    assert archived.archived and archived.archived_at is not None
    assert (listed(), listed(archive_status="archived"), listed(archive_status="all")) == ({small.id}, {plain.id}, {plain.id, small.id})
    assert listed(summary_search="CATS") == {small.id}
    brought_back = letta.conversations.update(plain.id, archived=False)
    assert not brought_back.archived and brought_back.archived_at is None and listed() == {plain.id, small.id}

    if hasattr(letta.conversations, "fork"):
        fork = letta.conversations.fork(small.id, hidden=True)
        assert fork.context_window_limit == 1000 and fork.id not in listed(archive_status="all")
    refused = http.patch(f"/v1/conversations/{small.id}", json={"last_message_at": "2026-01-01T00:00:00Z"})
    assert refused.status_code == 422 and "cannot be set" in refused.text
    cramped = http.post("/v1/conversations", params={"agent_id": agent.id}, json={"context_window_limit": 1000, "model_settings": {"max_output_tokens": 1000}})
    assert cramped.status_code == 400 and "must be larger than the answer's limit" in cramped.text
    assert hidden.id not in listed(archive_status="all")


def test_a_message_is_found_by_id_whichever_of_a_source_and_its_fork_is_deleted(letta: Letta) -> None:
    """A fork's copies keep their ids: deleting the fork must not lose the source's messages by id,
    nor deleting the source the fork's."""
    if not hasattr(letta.conversations, "fork"):
        pytest.skip(f"letta-client {letta_client.__version__} has no conversations.fork")
    agent = letta.agents.create(name="forked-ids")
    source = letta.conversations.create(agent_id=agent.id)
    list(letta.conversations.messages.create(source.id, messages=user("kept")))
    message_id = letta.conversations.messages.list(source.id, order="asc").items[1].id

    def content() -> Any:
        (part,) = letta.messages.retrieve(message_id)
        return getattr(part, "content", None)

    letta.conversations.delete(letta.conversations.fork(source.id).id)
    assert content() == "kept", "the source's message outlives a deleted fork"
    fork = letta.conversations.fork(source.id)
    letta.conversations.delete(source.id)
    assert content() == "kept", "the fork's copy outlives its deleted source"
    assert [m.id for m in letta.conversations.messages.list(fork.id, order="asc").items][1] == message_id
    letta.conversations.delete(fork.id)
    with pytest.raises(letta_client.NotFoundError):
        letta.messages.retrieve(message_id)


def test_recompile_returns_the_system_prompt_the_next_request_sends(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="compiled", system="Be kind.", memory_blocks=[{"label": "human", "value": "Ada"}])
    conversation = letta.conversations.create(agent_id=agent.id)
    body = letta.conversations.recompile(conversation.id)  # the SDK hands back the body: a JSON string, as Letta's
    compiled = json.loads(body)
    assert compiled.startswith("Be kind.") and "<value>Ada</value>" in compiled
    direct = http.post("/v1/conversations/default/recompile", json={"agent_id": agent.id})
    assert direct.status_code == 200 and direct.json() == compiled


# -- an agent's state, tools and approvals ---------------------------------------------------------


def _gated_agent(letta: Letta, fake_provider: fp.FakeProvider, *, calls: int = 1) -> tuple[Any, str]:
    model = unique("gpt")
    for i in range(calls):
        fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, [(f"t{i}", "transfer", '{"amount": 5, "to": "bob"}')])))
    agent = letta.agents.create(name="gated", model=f"openai/{model}", tools=["transfer", "add"])
    return agent, model


def test_agent_state_tells_its_last_stop_reason_and_pending_approval(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    agent, model = _gated_agent(letta, fake_provider)
    response = letta.agents.messages.create(agent.id, messages=user("pay bob"))
    assert response.messages[-1].message_type == "approval_request_message"
    state = letta.agents.retrieve(agent.id, include=["agent.pending_approval"])
    assert state.last_stop_reason == "requires_approval"
    assert state.pending_approval is not None and state.pending_approval.tool_calls[0].tool_call_id == "t0"
    assert letta.agents.retrieve(agent.id).pending_approval is None, "only with include"
    assert len(state.message_ids) >= 3 and state.message_ids[0] == "message-" + agent.id.removeprefix("agent-")

    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Paid."])))
    letta.agents.messages.create(agent.id, messages=[{"type": "approval", "approvals": [{"type": "approval", "tool_call_id": "t0", "approve": True}]}])
    after = letta.agents.retrieve(agent.id, include=["agent.pending_approval"])
    assert after.pending_approval is None and after.last_stop_reason == "end_turn" and after.last_run_completion is not None


def test_tools_are_listed_attached_detached_and_their_approval_set_per_agent(
    letta: Letta, http: httpx.Client, fake_provider: fp.FakeProvider
) -> None:
    agent, model = _gated_agent(letta, fake_provider, calls=0)
    tools = {t.name: t for t in letta.tools.list()}
    assert tools["transfer"].default_requires_approval and letta.tools.retrieve(tools["add"].id).name == "add"
    with pytest.raises(letta_client.NotFoundError, match="Tool with id tool-nope not found"):
        letta.tools.retrieve("tool-nope")
    with pytest.raises(letta_client.BadRequestError, match="CONVOY_TOOL_MODULES"):
        letta.tools.create(source_code="def f() -> str:\n    return 'x'\n")

    assert [t.name for t in letta.agents.tools.list(agent.id)] == ["add", "transfer"], "newest attached first"
    letta.agents.tools.detach(tools["add"].id, agent_id=agent.id)
    assert [t.name for t in letta.agents.tools.list(agent.id)] == ["transfer"]
    letta.agents.tools.attach(tools["add"].id, agent_id=agent.id)
    assert [t.name for t in letta.agents.tools.list(agent.id, order="asc")] == ["transfer", "add"]

    letta.agents.tools.update_approval("transfer", agent_id=agent.id, body_requires_approval=False)
    state = letta.agents.retrieve(agent.id)
    assert state.tool_rules == [] and not {t.name: t for t in state.tools}["transfer"].default_requires_approval
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, [("r1", "transfer", '{"amount": 1, "to": "al"}')])))
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Done."])))
    ran = letta.agents.messages.create(agent.id, messages=user("pay al"))
    assert [m.message_type for m in ran.messages] == ["tool_call_message", "tool_return_message", "assistant_message"]

    letta.agents.tools.update_approval("transfer", agent_id=agent.id, body_requires_approval=True)
    assert [(r.type, r.tool_name) for r in letta.agents.retrieve(agent.id).tool_rules] == [("requires_approval", "transfer")]
    missing = http.patch(f"/v1/agents/{agent.id}/tools/approval/sleepy", json={"requires_approval": True})
    assert missing.status_code == 404 and "not found or not attached" in missing.json()["detail"]
    no_value = http.patch(f"/v1/agents/{agent.id}/tools/approval/transfer", json={})
    assert no_value.status_code == 422


def test_agents_are_listed_by_name_and_tags(letta: Letta) -> None:
    name = unique("named")
    red = letta.agents.create(name=name, tags=["red", "round"])
    blue = letta.agents.create(name=name, tags=["blue", "round"])
    letta.agents.create(name=unique("other"), tags=["red"])
    assert [a.id for a in letta.agents.list(name=name)] == [blue.id, red.id], "newest first"
    assert {a.id for a in letta.agents.list(name=name, tags=["red", "blue"])} == {red.id, blue.id}
    assert [a.id for a in letta.agents.list(name=name, tags=["red", "round"], match_all_tags=True)] == [red.id]
    assert list(letta.agents.list(name=unique("nobody"))) == []


def test_tool_rules_and_tool_ids_at_creation(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="ruled", tool_ids=["tool-add"], tool_rules=[{"type": "requires_approval", "tool_name": "add"}])
    assert [t.name for t in agent.tools] == ["add"] and [r.tool_name for r in agent.tool_rules] == ["add"]
    refused = http.post("/v1/agents", json={"name": "x", "tools": ["add"], "tool_rules": [{"type": "exit_loop", "tool_name": "add"}]})
    assert refused.status_code == 422 and "exit_loop" in refused.text
    stray = http.post("/v1/agents", json={"name": "x", "tools": ["add"], "tool_rules": [{"type": "requires_approval", "tool_name": "transfer"}]})
    assert stray.status_code == 400 and "transfer" in stray.json()["detail"]


def test_context_window_overview(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="context", system="Short prompt.", tools=["add"], context_window_limit=8000)
    letta.agents.messages.create(agent.id, messages=user("count me"))
    overview = http.get(f"/v1/agents/{agent.id}/context").json()
    assert overview["context_window_size_max"] == 8000 and overview["system_prompt"] == "Short prompt."
    assert overview["num_messages"] == 2 and [m["message_type"] for m in overview["messages"]] == ["user_message", "assistant_message"]
    assert overview["functions_definitions"][0]["function"]["name"] == "add"
    parts = ("num_tokens_system", "num_tokens_core_memory", "num_tokens_functions_definitions", "num_tokens_messages")
    assert overview["context_window_size_current"] == sum(overview[p] for p in parts) > 0


# -- async sends, a run's messages -----------------------------------------------------------------


@pytest.fixture
def callback_server() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/done", received
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_async_send_returns_its_run_at_once_and_calls_back_with_the_result(
    letta: Letta, callback_server: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    url, received = callback_server
    agent = letta.agents.create(name="async")
    run = letta.agents.messages.create_async(agent.id, messages=user("later please"), callback_url=url)
    assert run.status in ("created", "running") and run.metadata["run_type"] == "send_message_async"

    called = received.get(timeout=30)
    assert called["run_id"] == run.id and called["status"] == "completed" and called["completed_at"]
    assert [m["content"] for m in called["metadata"]["result"]["messages"]] == ["later please"]
    wait_until(lambda: letta.runs.retrieve(run.id).callback_status_code == 204, 10, message="the callback to be recorded")
    done = letta.runs.retrieve(run.id)
    assert done.status == "completed" and done.callback_sent_at is not None and done.callback_url == url

    messages = letta.runs.messages.list(run.id).items
    assert [(m.message_type, m.content) for m in messages] == [("user_message", "later please"), ("assistant_message", "later please")]
    assert [m.message_type for m in letta.runs.messages.list(run.id, order="desc").items] == ["assistant_message", "user_message"]


def test_an_async_send_sent_again_with_its_key_joins_its_run_and_is_called_back_once(
    letta: Letta, callback_server: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    url, received = callback_server
    agent = letta.agents.create(name="async-retry")
    key = {"Idempotency-Key": unique("key")}
    first = letta.agents.messages.create_async(agent.id, messages=user("once"), callback_url=url, extra_headers=key)
    again = letta.agents.messages.create_async(agent.id, messages=user("once"), callback_url=url, extra_headers=key)
    assert again.id == first.id, "a retry joins the run it repeats"
    assert received.get(timeout=30)["run_id"] == first.id
    with pytest.raises(queue.Empty):
        received.get(timeout=2)  # the retry's own callback, had it been scheduled, leaves with the first


def test_streaming_options_without_streaming_are_refused_on_the_agents_route(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="options")
    refused = http.post(f"/v1/agents/{agent.id}/messages", json={"messages": user("x"), "stream_tokens": True})
    assert refused.status_code == 422 and "Streaming options set without streaming enabled" in refused.text
