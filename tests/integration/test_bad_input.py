"""Bad input gets a clear 4xx and writes nothing."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis

from tests.conftest import Convoy, redis_snapshot, sync_client


@pytest.fixture
def client(convoy: Convoy) -> httpx.Client:
    with httpx.Client(base_url=convoy.url, timeout=30) as c:
        yield c


@pytest.fixture
def store(convoy: Convoy) -> redis.Redis:
    return sync_client(convoy.redis_url)


def test_unknown_conversation_is_404_and_writes_nothing(client: httpx.Client, store: redis.Redis) -> None:
    before = redis_snapshot(store)
    missing = f"conv-{uuid.uuid4()}"
    reply = client.post(f"/v1/conversations/{missing}/messages", json={"input": "hello"})
    assert reply.status_code == 404
    assert missing in reply.json()["detail"]
    assert client.get(f"/v1/conversations/{missing}").status_code == 404
    assert client.get(f"/v1/runs/run-{uuid.uuid4()}").status_code == 404
    assert client.get(f"/v1/agents/agent-{uuid.uuid4()}").status_code == 404
    assert redis_snapshot(store) == before


def test_conversation_for_unknown_agent_is_404(client: httpx.Client, store: redis.Redis) -> None:
    before = redis_snapshot(store)
    reply = client.post("/v1/conversations", params={"agent_id": f"agent-{uuid.uuid4()}"})
    assert reply.status_code == 404
    assert redis_snapshot(store) == before


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "json"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "role"),
        (b"{}", "at least one message"),
        (b'{"input": "x", "max_steps": 0}', "max_steps"),
        (b'{"input": "x", "on_busy": "sometimes"}', "on_busy"),
    ],
)
def test_malformed_message_body_is_422_with_a_readable_message(
    client: httpx.Client, store: redis.Redis, body: bytes, needle: str
) -> None:
    agent = client.post("/v1/agents", json={"name": "bad-input"}).json()
    conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]
    before = redis_snapshot(store)
    reply = client.post(f"/v1/conversations/{conv}/messages", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    message = reply.json()["message"]
    assert message.startswith("invalid request:") and needle in message.lower()
    assert redis_snapshot(store) == before


def test_malformed_ids_and_unknown_models_are_rejected(client: httpx.Client, store: redis.Redis) -> None:
    before = redis_snapshot(store)
    assert client.get("/v1/conversations/not-an-id").status_code == 422
    assert client.post("/v1/conversations", params={"agent_id": "nope"}).status_code == 422
    reply = client.post("/v1/agents", json={"name": "x", "model": "nowhere/model-9"})
    assert reply.status_code == 400 and "unknown model provider" in reply.json()["detail"]
    reply = client.post("/v1/agents", json={"name": "x", "model": "no-slash"})
    assert reply.status_code == 400 and "provider/model" in reply.json()["detail"]
    assert redis_snapshot(store) == before
