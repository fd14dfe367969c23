"""Letta's agent routes with the real ``letta-client``, unchanged, against a real ``convoy serve``:
messages to the agent's default conversation (streaming and not), update, delete."""

from __future__ import annotations

import asyncio
import json
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import letta_client
import pytest
import redis
from httpx_sse import aconnect_sse
from letta_client import Letta

from bench import upstream as fp
from runtime.schemas.auth import DEFAULT_TENANT
from runtime.store import keyspace
from tests.conftest import Convoy


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def default_conversation(agent_id: str) -> str:
    return "conv-" + agent_id.removeprefix("agent-")


@pytest.fixture
def letta(convoy: Convoy) -> Letta:
    return Letta(base_url=convoy.url, api_key="unused")


@pytest.fixture
def http(convoy: Convoy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        yield client


def test_messages_create_answers_json_from_the_default_conversation(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="direct", system="Echo.")
    response = letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hello agent"}])
    texts = [m.content for m in response.messages if m.message_type == "assistant_message"]
    assert texts == ["hello agent"]
    assert response.stop_reason.stop_reason == "end_turn" and response.usage.completion_tokens == 2
    run = http.get("/v1/runs", params={"agent_id": agent.id}).json()[0]
    assert run["conversation_id"] == default_conversation(agent.id) and run["status"] == "completed"
    listed = letta.conversations.list(agent_id=agent.id)
    assert [c.id for c in listed] == [default_conversation(agent.id)]


def test_agent_messages_list_reads_the_default_conversation_newest_first(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="history")
    assert list(letta.agents.messages.list(agent.id)) == []  # nothing sent yet, nothing created
    for text in ("first words", "second words"):
        letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": text}])
    newest = letta.agents.messages.list(agent.id, limit=2).items  # one page (iterating pages on)
    assert [(m.message_type, m.content) for m in newest] == [("assistant_message", "second words"), ("user_message", "second words")]
    oldest = letta.agents.messages.list(agent.id, order="asc", limit=1).items
    assert [(m.message_type, m.content) for m in oldest] == [("user_message", "first words")]
    other = letta.conversations.create(agent_id=agent.id)
    assert list(letta.agents.messages.list(agent.id, conversation_id=other.id)) == []
    stranger = letta.agents.create(name="stranger")
    missing = http.get(f"/v1/agents/{stranger.id}/messages", params={"conversation_id": other.id})
    assert missing.status_code == 404


def test_messages_stream_and_create_streaming(letta: Letta) -> None:
    agent = letta.agents.create(name="direct-stream")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks .stream deprecated; it must still work
        streamed = list(letta.agents.messages.stream(agent.id, messages=[{"role": "user", "content": "one two three"}]))
    for events in (
        streamed,
        list(letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "one two three"}], streaming=True)),
    ):
        kinds = [e.message_type for e in events]
        assert kinds[0] == "ping" and kinds[-2:] == ["stop_reason", "usage_statistics"]
        assert "".join(e.content for e in events if e.message_type == "assistant_message") == "one two three"
    runs = list(letta.runs.list(agent_id=agent.id))
    assert {r.conversation_id for r in runs} == {default_conversation(agent.id)} and len(runs) == 2


def test_a_failed_blocking_turn_is_an_error_the_sdk_does_not_resend(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.openai_error(500, "boom", "server_error", headers={"retry-after-ms": "10"}), repeat=True)
    agent = letta.agents.create(name="failing", model=f"openai/{model}")
    with pytest.raises(letta_client.InternalServerError) as raised:
        letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 503 and raised.value.response.headers["x-should-retry"] == "false"
    (run,) = letta.runs.list(agent_id=agent.id)
    assert run.status == "failed"


async def test_concurrent_first_sends_share_one_default_conversation(convoy: Convoy) -> None:
    async with httpx.AsyncClient(base_url=convoy.url, timeout=30) as client:
        agent = (await client.post("/v1/agents", json={"name": "race"})).json()["id"]
        replies = await asyncio.gather(
            *(
                client.post(f"/v1/agents/{agent}/messages", json={"messages": [{"role": "user", "content": f"m{i}"}]})
                for i in range(8)
            )
        )
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        conversations = (await client.get("/v1/conversations", params={"agent_id": agent})).json()
        assert [c["id"] for c in conversations] == [default_conversation(agent)]
        runs = (await client.get("/v1/runs", params={"agent_id": agent})).json()
        assert len(runs) == 8 and {r["conversation_id"] for r in runs} == {default_conversation(agent)}


def test_update_changes_fields_moves_updated_at_and_the_next_turn_uses_them(
    letta: Letta, fake_provider: fp.FakeProvider
) -> None:
    agent = letta.agents.create(name="before", system="Old prompt.", tags=["a"])
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["updated"])))

    updated = letta.agents.update(
        agent.id,
        name="after",
        system="New prompt.",
        model=f"openai/{model}",
        description="described",
        tags=["b", "c"],
        metadata={"k": 1},
    )

    assert (updated.name, updated.system, updated.description, updated.tags) == ("after", "New prompt.", "described", ["b", "c"])
    assert updated.metadata == {"k": 1} and updated.llm_config.handle == f"openai/{model}"
    assert updated.updated_at is not None and agent.updated_at is not None and updated.updated_at > agent.updated_at
    assert updated.created_at == agent.created_at
    assert letta.agents.retrieve(agent.id).name == "after"

    response = letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hi"}])
    assert [m.content for m in response.messages if m.message_type == "assistant_message"] == ["updated"]
    (call,) = fake_provider.calls(model)
    assert call.body["messages"][0] == {"role": "system", "content": "New prompt."}

    untouched = letta.agents.update(agent.id, description=None)
    assert untouched.name == "after" and untouched.description is None and untouched.tags == ["b", "c"]


def test_update_refuses_bad_models_and_unknown_agents(letta: Letta, http: httpx.Client) -> None:
    agent = letta.agents.create(name="stays")
    with pytest.raises(letta_client.BadRequestError):
        letta.agents.update(agent.id, model="nosuchprovider/x")
    assert letta.agents.retrieve(agent.id).llm_config.handle == agent.llm_config.handle
    with pytest.raises(letta_client.NotFoundError):
        letta.agents.update(f"agent-{uuid.uuid4()}", name="ghost")
    assert http.patch(f"/v1/agents/{agent.id}", json={"name": ""}).status_code == 422


async def first_run_id(client: httpx.AsyncClient, path: str, payload: dict[str, Any], message_type: str) -> str:
    """Start a background send and leave once an item of ``message_type`` arrived; its run id."""
    async with aconnect_sse(client, "POST", path, json=payload) as source:
        async for event in source.aiter_sse():
            doc = json.loads(event.data)
            if doc.get("message_type") == message_type:
                return str(doc["run_id"])
    raise AssertionError(f"no {message_type} item")


async def test_delete_cancels_runs_and_removes_everything(
    convoy: Convoy, letta: Letta, fake_provider: fp.FakeProvider, store: redis.Redis
) -> None:
    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_text(model, ["remembered"])),
        fp.Stream(fp.paced(fp.chat_text(model, [f"w{i} " for i in range(200)]), 0.05)),
    )
    agent = letta.agents.create(name="doomed", model=f"openai/{model}")
    other = letta.conversations.create(agent_id=agent.id)
    letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "history"}])
    path = f"/v1/agents/{agent.id}/messages/stream"
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": "long"}], "background": True, "stream_tokens": True}
    async with httpx.AsyncClient(base_url=convoy.url, timeout=30) as client:
        running = await first_run_id(client, path, payload, "assistant_message")
        queued = await first_run_id(client, path, payload, "ping")
    assert letta.runs.retrieve(queued).status == "created"

    letta.agents.delete(agent.id)

    assert letta.runs.retrieve(running).status == "cancelled" and letta.runs.retrieve(queued).status == "cancelled"
    with pytest.raises(letta_client.NotFoundError):
        letta.agents.retrieve(agent.id)
    with pytest.raises(letta_client.NotFoundError):
        letta.agents.delete(agent.id)
    with pytest.raises(letta_client.NotFoundError):
        letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "after"}])
    for conv in (other.id, default_conversation(agent.id)):
        with pytest.raises(letta_client.NotFoundError):
            letta.conversations.retrieve(conv)
        assert not store.exists(keyspace.conversation(conv), keyspace.history(conv), keyspace.mailbox(conv), keyspace.conversation_runs(conv))
        assert store.zscore(keyspace.conversations_index(DEFAULT_TENANT), conv) is None
    assert agent.id not in [a.id for a in letta.agents.list(limit=1000)]
    assert not store.exists(keyspace.agent(agent.id), keyspace.agent_conversations(agent.id), keyspace.agent_runs(agent.id))
    assert store.zscore(keyspace.agents_index(DEFAULT_TENANT), agent.id) is None
