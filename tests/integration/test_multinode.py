"""Convoy on a real two-node Ray cluster (both nodes on this machine, see ``bench.raycluster``).

The conversation hosts, and the conversations they hold, are spread over both nodes; when one node
is lost at once (every process of it frozen, then killed), Ray restarts its hosts on the node that
survives and the conversations that lived there carry on, history intact. Real Ray, real Redis,
real HTTP. The two tests share one cluster and run in order: the second one kills node 2.

Which node a host runs on is read from the operating system, not from Convoy: a host's heartbeat
(in Redis) carries its pid, and a Ray worker is a child process of its node's raylet.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis

from bench.raycluster import RayCluster, RayNode, add_node, start_cluster
from runtime.store import keyspace
from tests.conftest import Convoy, start_convoy, stop_convoy, wait_until

pytestmark = pytest.mark.slow

HOSTS = 4
SYSTEM = "You are a careful test agent."
TURNS = ["first turn here", "the second turn is longer"]
PER_NODE = 2  # conversations held on each node before it is lost
# Ray's GCS declares a silent node dead after 5 failed health checks 3 s apart (Ray's defaults,
# kept on purpose), then restarts the lost actors elsewhere: 15-25 s on this machine.
RECOVERY_TIMEOUT_S = 45.0


@dataclass
class Setup:
    cluster: RayCluster
    head: RayNode
    node2: RayNode
    convoy: Convoy
    store: redis.Redis
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("multinode")
    timings: dict[str, float] = {}
    started = time.monotonic()
    cluster = start_cluster(tmp)
    convoy: Convoy | None = None
    try:
        timings["head_start_s"] = time.monotonic() - started
        mark = time.monotonic()
        node2 = add_node(cluster, "node2", tmp, resources={"node2": 1})
        timings["node2_join_s"] = time.monotonic() - mark
        mark = time.monotonic()
        convoy = start_convoy(
            tmp / "convoy-home",
            {
                **cluster.client_env(),  # RAY_ADDRESS and the cluster's token (see bench.raycluster)
                "CONVOY_HOSTS": str(HOSTS),
                # Conversations stay active on their node until it is lost.
                "CONVOY_IDLE_PASSIVATE_S": "600",
                # Convoy's default: a reader waits this long for a silent, ownerless run before it
                # wakes the conversation again (and twice as long before it gives up), which has to
                # cover Ray noticing the lost node.
                "CONVOY_STREAM_IDLE_TIMEOUT_S": "60",
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
        rounded = {k: round(v, 2) for k, v in timings.items()}
        (tmp / "timings.json").write_text(json.dumps(rounded))
        print(f"\nmultinode timings: {json.dumps(rounded)}")
    assert convoy is not None and convoy.process.returncode == 0, convoy and convoy.log()
    assert not serve_leftovers, f"convoy serve left processes behind: {sorted(serve_leftovers)}"
    assert not leftovers, f"Ray nodes left processes behind after SIGTERM: {leftovers}"


def heartbeats(store: redis.Redis) -> dict[str, dict[str, Any]]:
    return {name: json.loads(raw) for name, raw in store.hgetall(keyspace.hosts()).items()}


def node_of(setup: Setup, pid: int) -> str | None:
    """The node whose raylet ``pid`` is a worker of (None: no live node's)."""
    for node in (setup.head, setup.node2):
        if node.process.poll() is None and node.hosts_process(pid):
            return node.name
    return None


def host_nodes(setup: Setup) -> dict[str, str]:
    """Host name -> node, once every host has sent a heartbeat."""

    def placed() -> dict[str, str] | None:
        where = {name: node_of(setup, int(beat["pid"])) for name, beat in heartbeats(setup.store).items()}
        return where if len(where) == HOSTS and all(where.values()) else None  # type: ignore[return-value]

    return wait_until(placed, 30, interval_s=0.1, message="a heartbeat from every host")  # type: ignore[no-any-return]


def owner_of(store: redis.Redis, conversation_id: str) -> tuple[str, str] | None:
    """(host name, incarnation) from the conversation's lease ('<host>/<incarnation>[/...]')."""
    value = store.get(keyspace.lease(conversation_id))
    if not value:
        return None
    host, incarnation = value.split("/")[:2]
    return host, incarnation


def words(text: str) -> int:
    return len(text.split())


def send(client: httpx.Client, conversation_id: str, text: str, **kwargs: Any) -> httpx.Response:
    return client.post(
        f"/v1/conversations/{conversation_id}/messages", json={"input": text, "streaming": False}, **kwargs
    )


def check_reply(reply: httpx.Response, text: str, prompt_tokens: int) -> None:
    """An echo of ``text`` whose prompt held exactly ``prompt_tokens`` words (the echo model
    counts the system prompt and every user and assistant message it is sent)."""
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert [m["content"] for m in doc["messages"] if m["message_type"] == "assistant_message"] == [text]
    assert doc["stop_reason"]["stop_reason"] == "end_turn"
    assert doc["usage"]["prompt_tokens"] == prompt_tokens, "the model was not sent exactly the history"


def gcs_declared_dead_at(head: RayNode) -> float | None:
    """Wall-clock time at which the GCS declared a node dead (from its log; for the report only)."""
    try:
        text = (head.temp_dir / "session_latest" / "logs" / "gcs_server.out").read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"^\[([\d-]+ [\d:,]+) .*Node is dead because the health check failed", text, re.M)
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if found else None


def test_hosts_are_spread_evenly_over_the_nodes(setup: Setup) -> None:
    """``ensure_hosts`` asks Ray to SPREAD the hosts: with two nodes each runs half of them."""
    where = host_nodes(setup)
    counts = {node: sum(1 for n in where.values() if n == node) for node in ("head", "node2")}
    assert max(counts.values()) - min(counts.values()) <= 1, f"hosts not spread over the nodes: {where}"


def test_conversations_of_a_lost_node_carry_on_on_the_surviving_node(setup: Setup) -> None:
    store, timings = setup.store, setup.timings

    # 1. Hosts on both nodes.
    host_node = host_nodes(setup)
    assert set(host_node.values()) == {"head", "node2"}, f"hosts are not on both nodes: {host_node}"
    first_incarnation = {name: beat["incarnation"] for name, beat in heartbeats(store).items()}

    # 2. Conversations active on both nodes, each with two turns of history.
    history = words(SYSTEM) + sum(2 * words(t) for t in TURNS)
    on_node: dict[str, list[str]] = {"head": [], "node2": []}
    mark = time.monotonic()
    with httpx.Client(base_url=setup.convoy.url, timeout=30) as client:
        agent = client.post("/v1/agents", json={"name": "multinode", "model": "echo/echo", "system": SYSTEM})
        assert agent.status_code == 200, agent.text
        for _ in range(40):  # placement hashes conversation ids over the hosts: a few suffice
            if all(len(convs) >= PER_NODE for convs in on_node.values()):
                break
            conv = client.post("/v1/conversations", params={"agent_id": agent.json()["id"]}).json()["id"]
            seen = words(SYSTEM)
            for text in TURNS:
                seen += words(text)
                check_reply(send(client, conv, text), text, seen)
                seen += words(text)
            owner = owner_of(store, conv)
            assert owner is not None, f"conversation {conv} has no owner right after a turn"
            on_node[host_node[owner[0]]].append(conv)
        assert all(len(c) >= PER_NODE for c in on_node.values()), f"conversations not on both nodes: {on_node}"
        timings["conversations_s"] = time.monotonic() - mark

        # 3. Lose node 2 at once: its raylet, its agents and its workers (the hosts on it).
        lost_hosts = sorted(name for name, node in host_node.items() if node == "node2")
        lost, *other_lost = on_node["node2"]
        wall_killed_at = time.time()
        killed_at = setup.node2.kill()

        # 4. One message to a conversation that lived there, sent at once, succeeds within a bound,
        #    and the model was sent its whole history. (Not retried: a retry would add a turn.)
        text = "sent after the node was lost"
        try:
            reply = send(client, lost, text, timeout=RECOVERY_TIMEOUT_S)
        except httpx.TimeoutException:
            pytest.fail(f"no reply within {RECOVERY_TIMEOUT_S}s of losing the node")
        timings["first_reply_after_loss_s"] = time.monotonic() - killed_at
        check_reply(reply, text, history + words(text))

        # ... and its owner now is a host process on the surviving node.
        owner = owner_of(store, lost)
        assert owner is not None, "the conversation has no owner right after a turn"
        beat = wait_until(
            lambda: (b := heartbeats(store)[owner[0]])["incarnation"] == owner[1] and b,
            10,
            message="a heartbeat from the conversation's new owner",
        )
        assert node_of(setup, int(beat["pid"])) == "head", f"new owner {owner} is not on the surviving node"

        # 5. Ray restarted every lost host on the surviving node, and every host answers again.
        def restarted() -> bool:
            beats = heartbeats(store)
            return all(
                beats[h]["incarnation"] != first_incarnation[h] and node_of(setup, int(beats[h]["pid"])) == "head"
                for h in lost_hosts
            )

        wait_until(restarted, RECOVERY_TIMEOUT_S, interval_s=0.1, message="the lost hosts to run on the head")
        timings["lost_hosts_on_head_after_loss_s"] = time.monotonic() - killed_at
        dead_at = gcs_declared_dead_at(setup.head)
        if dead_at is not None:
            timings["gcs_declared_node_dead_after_loss_s"] = dead_at - wall_killed_at

        def all_hosts_answer() -> bool:
            health = client.get("/v1/health")
            return health.status_code == 200 and health.json()["ray"]["hosts_alive"] == HOSTS

        wait_until(all_hosts_answer, 15, interval_s=0.2, message="every host to answer the health check")

        # Every other conversation of the lost node carries on too, and so do the head's.
        for conv in [*other_lost, *on_node["head"]]:
            check_reply(send(client, conv, text), text, history + words(text))
        timings["all_conversations_ok_after_loss_s"] = time.monotonic() - killed_at
