"""Convoy on a real two-node Ray cluster (both nodes on this machine): hosts and conversations are
spread over both nodes, and when one node is lost its conversations carry on, history intact, on
the node that survives. Real Ray, real Redis, real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from runtime import keys
from tests.conftest import Convoy, start_convoy, stop_convoy, wait_until
from tests.ray_cluster import RayCluster, RayNode, add_node, start_cluster

HOSTS = 4
SYSTEM = "You are a careful test agent."
RECOVERY_TIMEOUT_S = 45.0


@dataclass
class Setup:
    cluster: RayCluster
    head: RayNode
    node2: RayNode
    convoy: Convoy
    store: redis.Redis
    timings: dict[str, float]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    cluster = start_cluster(tmp_path)
    convoy: Convoy | None = None
    leftovers: dict[str, set[int]] = {}
    try:
        timings["head_start_s"] = time.monotonic() - started
        mark = time.monotonic()
        node2 = add_node(cluster, "node2", tmp_path, resources={"node2": 1})
        timings["node2_join_s"] = time.monotonic() - mark
        mark = time.monotonic()
        convoy = start_convoy(
            tmp_path / "convoy-home",
            {
                **cluster.client_env(),  # RAY_ADDRESS, and the cluster's token (see tests.ray_cluster)
                "CONVOY_HOSTS": str(HOSTS),
                "CONVOY_IDLE_PASSIVATE_S": "600",  # conversations stay active on their node until it dies
            },
        )
        timings["convoy_start_s"] = time.monotonic() - mark
        store = redis.Redis.from_url(convoy.redis_url, decode_responses=True)
        yield Setup(cluster, cluster.head, node2, convoy, store, timings)
        store.close()
    finally:
        mark = time.monotonic()
        serve_leftovers: set[int] = set()
        if convoy is not None:
            serve_leftovers = stop_convoy(convoy)
        timings["convoy_stop_s"] = time.monotonic() - mark
        mark = time.monotonic()
        leftovers = cluster.stop()
        timings["cluster_stop_s"] = time.monotonic() - mark
        timings["total_s"] = time.monotonic() - started
        print(f"\nmultinode timings: {json.dumps({k: round(v, 2) for k, v in timings.items()})}")
    assert not serve_leftovers, f"convoy serve left processes behind: {sorted(serve_leftovers)}"
    assert not leftovers, f"Ray nodes left processes behind after SIGTERM: {leftovers}"


def heartbeats(store: redis.Redis) -> dict[str, dict[str, object]]:
    return {name: json.loads(raw) for name, raw in store.hgetall(keys.hosts()).items()}


def node_of(setup: Setup, pid: int) -> str | None:
    for node in (setup.head, setup.node2):
        if node.process.poll() is None and node.hosts_process(pid):
            return node.name
    return None


def owner_of(store: redis.Redis, conversation_id: str) -> tuple[str, str] | None:
    """(host name, incarnation) of the conversation's current lease, if any."""
    value = store.get(keys.lease(conversation_id))
    if not value:
        return None
    host, incarnation = value.split("/")[:2]
    return host, incarnation


def words(text: str) -> int:
    return len(text.split())


def send(client: httpx.Client, conversation_id: str, text: str) -> dict[str, object]:
    reply = client.post(f"/v1/conversations/{conversation_id}/messages", json={"input": text, "streaming": False})
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assistant = [m for m in doc["messages"] if m["message_type"] == "assistant_message"]
    assert [m["content"] for m in assistant] == [text]
    return doc


@pytest.mark.slow
def test_conversations_on_a_lost_node_carry_on_on_the_surviving_node(setup: Setup) -> None:
    store, timings = setup.store, setup.timings
    mark = time.monotonic()

    # 1. The hosts are spread over both nodes: each heartbeat's pid is a worker of one node's raylet.
    def placed() -> dict[str, str] | None:
        beats = heartbeats(store)
        if len(beats) < HOSTS:
            return None
        where = {name: node_of(setup, int(beat["pid"])) for name, beat in beats.items()}  # type: ignore[call-overload]
        return where if all(where.values()) else None

    host_node: dict[str, str] = wait_until(placed, 30, interval_s=0.1, message="a heartbeat from every host")  # type: ignore[assignment]
    assert set(host_node.values()) == {"head", "node2"}, f"hosts not on both nodes: {host_node}"
    incarnation_before = {name: str(beat["incarnation"]) for name, beat in heartbeats(store).items()}

    # 2. Conversations active on both nodes, each with a history of two turns.
    turns = ["first turn here", "the second turn is longer"]
    history_words = words(SYSTEM) + sum(2 * words(t) for t in turns)
    on_node: dict[str, list[str]] = {"head": [], "node2": []}
    with httpx.Client(base_url=setup.convoy.url, timeout=30) as client:
        agent = client.post("/v1/agents", json={"name": "multinode", "model": "echo/echo", "system": SYSTEM}).json()
        for _ in range(40):
            if all(len(v) >= 2 for v in on_node.values()):
                break
            conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]
            for text in turns:
                doc = send(client, conv, text)
            assert doc["usage"]["prompt_tokens"] == words(SYSTEM) + words(turns[0]) * 2 + words(turns[1])  # type: ignore[index]
            owner = owner_of(store, conv)
            assert owner is not None, f"conversation {conv} has no owner while active"
            on_node[host_node[owner[0]]].append(conv)
        assert all(on_node.values()), f"conversations not on both nodes: {on_node}"
        timings["conversations_s"] = time.monotonic() - mark

        # 3. Lose node 2 at once: its raylet, its agents and its workers (the hosts on it).
        lost_hosts = sorted(name for name, node in host_node.items() if node == "node2")
        lost = on_node["node2"][0]
        killed_at = setup.node2.kill()

        # 4. A message to a conversation that lived there succeeds, with its whole history.
        text = "after the node was lost"
        deadline = killed_at + RECOVERY_TIMEOUT_S
        attempts: list[str] = []
        while True:
            try:
                reply = client.post(
                    f"/v1/conversations/{lost}/messages",
                    json={"input": text, "streaming": False},
                    timeout=max(1.0, deadline - time.monotonic()),
                )
                if reply.status_code == 200:
                    break
                attempts.append(f"{reply.status_code} {reply.text[:200]}")
            except httpx.TimeoutException as exc:
                attempts.append(repr(exc))
            assert time.monotonic() < deadline, f"no successful reply within {RECOVERY_TIMEOUT_S}s: {attempts}"
        timings["first_reply_after_kill_s"] = time.monotonic() - killed_at
        timings["failed_attempts"] = len(attempts)
        doc = reply.json()
        assistant = [m for m in doc["messages"] if m["message_type"] == "assistant_message"]
        assert [m["content"] for m in assistant] == [text]
        assert doc["usage"]["prompt_tokens"] == history_words + words(text), "history lost"

        # ... and its new owner is a host process on the surviving node.
        owner = owner_of(store, lost)
        assert owner is not None
        beat = heartbeats(store)[owner[0]]
        assert beat["incarnation"] == owner[1], "the owner's heartbeat is from another incarnation"
        assert node_of(setup, int(beat["pid"])) == "head"  # type: ignore[call-overload]

        # 5. Ray restarts every lost host on the surviving node (the API keeps waking them).
        def restarted() -> bool:
            beats = heartbeats(store)
            return all(
                beats[h]["incarnation"] != incarnation_before[h] and node_of(setup, int(beats[h]["pid"])) == "head"  # type: ignore[call-overload]
                for h in lost_hosts
            )

        wait_until(restarted, RECOVERY_TIMEOUT_S, interval_s=0.1, message="the lost hosts to run on the head")
        timings["hosts_restarted_after_kill_s"] = time.monotonic() - killed_at

        # Every other conversation of the lost node carries on too.
        for conv in on_node["node2"][1:]:
            doc = send(client, conv, text)
            assert doc["usage"]["prompt_tokens"] == history_words + words(text)  # type: ignore[index]
        timings["all_lost_conversations_ok_s"] = time.monotonic() - killed_at
