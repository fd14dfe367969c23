"""The SSE wire contract, read raw over HTTP (httpx + httpx-sse parse the stream)."""

from __future__ import annotations

import json

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import Convoy


def _conversation(client: httpx.Client) -> str:
    agent = client.post("/v1/agents", json={"name": "wire", "model": "echo/echo"}).json()
    return client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]


@pytest.fixture
def client(convoy: Convoy) -> httpx.Client:
    with httpx.Client(base_url=convoy.url, timeout=30) as c:
        yield c


def test_every_item_has_a_gapless_seq_id_and_the_stream_ends_with_done(client: httpx.Client) -> None:
    conv = _conversation(client)
    body = {"messages": [{"role": "user", "content": "alpha beta gamma delta"}]}
    with connect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json=body) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["cache-control"] == "no-store"
        assert source.response.headers["x-accel-buffering"] == "no"
        events = list(source.iter_sse())  # returns only when the server closes the response
        assert source.response.is_closed or source.response.is_stream_consumed

    ids = [e.id for e in events]
    assert ids == [str(i) for i in range(1, len(events) + 1)], "seq ids 1, 2, 3... without gaps"
    assert events[-1].data == "[DONE]"
    items = [json.loads(e.data) for e in events[:-1]]
    assert items[0]["message_type"] == "ping" and items[0]["run_id"].startswith("run-")
    assert [i["seq_id"] for i in items] == list(range(1, len(items) + 1))
    text = "".join(i["content"] for i in items if i["message_type"] == "assistant_message")
    assert text == "alpha beta gamma delta"
    assert [i["message_type"] for i in items[-2:]] == ["stop_reason", "usage_statistics"]


def test_an_eventsource_reconnecting_after_the_last_event_of_an_ended_run_is_told_to_stop(client: httpx.Client) -> None:
    """An ``EventSource`` reconnects whenever its response ends; 204 No Content is what stops it.
    Resumed after the run's last event, the GET stream answers that, not an empty stream."""
    conv = _conversation(client)
    reply = client.post(f"/v1/conversations/{conv}/messages", json={"input": "one two", "streaming": False})
    run_id = reply.json()["messages"][0]["run_id"]
    with connect_sse(client, "GET", f"/v1/runs/{run_id}/stream") as source:
        events = list(source.iter_sse())
    assert events[-1].data == "[DONE]"
    done = client.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": events[-1].id})
    assert done.status_code == 204 and done.content == b""
    before_done = client.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": events[-2].id})
    assert before_done.status_code == 200 and "[DONE]" in before_done.text, "one event left: it is sent"


def test_non_streaming_returns_a_letta_response(client: httpx.Client) -> None:
    conv = _conversation(client)
    body = {"messages": [{"role": "user", "content": "just one answer"}], "streaming": False}
    reply = client.post(f"/v1/conversations/{conv}/messages", json=body)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assistant = [m for m in doc["messages"] if m["message_type"] == "assistant_message"]
    assert len(assistant) == 1 and assistant[0]["content"] == "just one answer"
    assert doc["stop_reason"]["stop_reason"] == "end_turn"
    assert doc["usage"]["completion_tokens"] == 3


def test_turns_of_one_conversation_build_on_its_history(client: httpx.Client) -> None:
    conv = _conversation(client)
    for text in ("first turn", "second turn"):
        reply = client.post(f"/v1/conversations/{conv}/messages", json={"input": text, "streaming": False})
        assert reply.status_code == 200, reply.text
    # The echo model reports the whole history it was sent as prompt tokens.
    last = reply.json()["usage"]
    assert last["prompt_tokens"] == len("first turn first turn second turn".split())


def test_health_and_metrics(client: httpx.Client) -> None:
    health = client.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["redis"] == "ok" and health.json()["ray"]["hosts_alive"] >= 1
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "convoy_http_requests_total" in metrics.text
