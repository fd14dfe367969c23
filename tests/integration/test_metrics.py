"""What an operator scrapes from a real two-node Ray cluster running Convoy (``bench.raycluster``):
the hosts' metrics, served by each node's Ray metrics agent and found, as Prometheus finds them,
through the service discovery file the head's dashboard writes; and the hosts' JSON log lines,
which say which run, conversation and tenant they concern.

Turns of every kind run on conversations held on both nodes: completed (echo), cancelled, a tool
call and a provider error (the fake provider, speaking OpenAI Chat), and a lease taken by another
owner. Then every scrape is read until the metrics carry exactly those values (Ray's agents export
every few seconds: a bounded wait, no sleep).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from bench import upstream as fp
from bench.raycluster import RayCluster, RayNode, add_node, start_cluster
from runtime.store import keyspace
from tests.conftest import TOOLS_ENV, Convoy, eventually, provider_env, start_convoy, stop_convoy, wait_until
from tests.integration.test_providers import FAST_RETRY, send, unique

pytestmark = pytest.mark.slow

HOSTS = 4
TENANT = "metrics-tenant"
# Ray's metrics agents export every few seconds (its report interval is 10 s), then a scrape shows it.
EXPORT_TIMEOUT_S = 90.0
LEASE_TTL_MS = 6000  # renewed every 2 s: a lease taken by another owner is found within that
IDLE_PASSIVATE_S = 8  # long enough for the lease test's conversation to be active when it is taken


@dataclass
class Setup:
    cluster: RayCluster
    node2: RayNode
    convoy: Convoy
    store: redis.Redis
    key: str

    @property
    def nodes(self) -> tuple[RayNode, RayNode]:
        return self.cluster.head, self.node2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fake_provider: fp.FakeProvider) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("metrics")
    cluster = start_cluster(tmp, dashboard=True)
    convoy: Convoy | None = None
    try:
        node2 = add_node(cluster, "node2", tmp)
        convoy = start_convoy(
            tmp / "convoy-home",
            {
                **cluster.client_env(),
                **provider_env(fake_provider),
                **TOOLS_ENV,
                "CONVOY_HOSTS": str(HOSTS),
                "CONVOY_LOG_JSON": "true",
                "CONVOY_LEASE_TTL_MS": str(LEASE_TTL_MS),
                "CONVOY_IDLE_PASSIVATE_S": str(IDLE_PASSIVATE_S),
            },
        )
        created = subprocess.run(
            [str(Path(sys.executable).parent / "convoy"), "keys", "create", "--tenant", TENANT],
            env={**convoy.env, "CONVOY_REDIS_URL": convoy.redis_url},
            capture_output=True,
            text=True,
            check=True,
        )
        store = redis.Redis.from_url(convoy.redis_url, decode_responses=True)
        yield Setup(cluster, node2, convoy, store, created.stdout.split()[-1])
        store.close()
    finally:
        leftovers: set[int] = set()
        if convoy is not None:
            leftovers = stop_convoy(convoy)
        stopped = cluster.stop()
    assert convoy is not None and convoy.process.returncode == 0, convoy and convoy.log()
    assert not leftovers and not stopped, (leftovers, stopped)


@pytest.fixture
async def client(setup: Setup) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {setup.key}"}
    async with httpx.AsyncClient(base_url=setup.convoy.url, headers=headers, timeout=60) as c:
        yield c


async def conversation(client: httpx.AsyncClient, model: str = "echo/echo", **agent: Any) -> str:
    reply = await client.post("/v1/agents", json={"name": "metrics", "model": model, **agent})
    assert reply.status_code == 200, reply.text
    return str((await client.post("/v1/conversations", params={"agent_id": reply.json()["id"]})).json()["id"])


def node_of_owner(setup: Setup, conversation_id: str) -> str:
    """The node whose raylet runs the host that holds the conversation (its lease names the host,
    the host's heartbeat its pid, and a Ray worker is a child of its node's raylet)."""
    host = setup.store.get(keyspace.lease(conversation_id))
    assert host, f"{conversation_id} is held by no one"
    pid = int(json.loads(setup.store.hget(keyspace.hosts(), host.split("/")[0]) or "{}")["pid"])
    return next(node.name for node in setup.nodes if node.hosts_process(pid))


# -- scraping ------------------------------------------------------------------------------------------


def targets(setup: Setup) -> dict[str, str]:
    """Node name -> its metrics exporter, as the service discovery file lists them (once both are)."""

    def listed() -> dict[str, str] | None:
        path = setup.cluster.service_discovery
        if not path.exists():
            return None
        listed = [t for group in json.loads(path.read_text()) for t in group["targets"]]
        found = {n.name: t for n in setup.nodes for t in listed if t.endswith(f":{n.metrics_port}")}
        return found if len(found) == 2 else None

    return wait_until(listed, 60, interval_s=0.2, message="both nodes in Ray's service discovery file")  # type: ignore[no-any-return]


Samples = Counter[tuple[str, frozenset[tuple[str, str]]]]


def scrape(target: str) -> Samples:
    """Convoy's samples at one exporter, summed over Ray's own labels (worker, node, session...)."""
    ours: Samples = Counter()
    text = httpx.get(f"http://{target}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_convoy_"):
                labels = frozenset((k, v) for k, v in sample.labels.items() if k[0].islower() and not k.startswith("otel_"))
                ours[(sample.name.removeprefix("ray_"), labels)] += sample.value
    return ours


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and want <= have)


# -- the tests ---------------------------------------------------------------------------------------------


async def test_a_scrape_of_both_nodes_shows_the_hosts_metrics_with_real_values(
    setup: Setup, client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    # Completed turns on the echo model, until both nodes have held some.
    completed: Counter[str] = Counter()
    for _ in range(16):
        conv = await conversation(client)
        turn = await send(client, conv, "hello from a node", stream_tokens=True)
        assert turn.stop_reason == "end_turn", turn.items
        completed[node_of_owner(setup, conv)] += 1
        if len(completed) == 2 and min(completed.values()) >= 2:
            break
    assert len(completed) == 2, f"16 conversations all landed on {set(completed)}"

    # A cancelled turn: a long echo, cancelled once its first token arrived.
    conv = await conversation(client)
    async with aconnect_sse(
        client, "POST", f"/v1/conversations/{conv}/messages", json={"input": "word " * 3000, "stream_tokens": True}
    ) as source:
        items: list[dict[str, Any]] = []
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            items.append(json.loads(event.data))
            if items[-1].get("message_type") == "assistant_message" and sum("content" in i for i in items) == 1:
                assert (await client.post(f"/v1/runs/{items[-1]['run_id']}/cancel")).status_code == 200
    assert [i["stop_reason"] for i in items if "stop_reason" in i] == ["cancelled"]

    # A tool call, then the answer (two steps of a scripted OpenAI model).
    model = unique("gpt-metrics")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("c1", "add", '{"a": 2, "b": 3}')])),
        fp.Stream(fp.chat_text(model, ["5"])),
    )
    turn = await send(client, await conversation(client, f"openai/{model}", tools=["add"]), "add 2 and 3")
    assert turn.stop_reason == "end_turn" and turn.returns()[0]["status"] == "success"

    # A provider error: rate limited (the SDK tries twice; one failed call for Convoy).
    limited = unique("gpt-limited")
    fake_provider.script(limited, fp.openai_error(429, "Rate limit reached", "requests", "rate_limit_exceeded", headers=FAST_RETRY), repeat=True)
    turn = await send(client, await conversation(client, f"openai/{limited}"), "hi")
    assert [e["error_type"] for e in turn.errors] == ["llm_rate_limit"]

    # A lease taken by another owner while its conversation is active here.
    taken = await conversation(client)
    await send(client, taken, "soon taken")
    setup.store.set(keyspace.lease(taken), "intruder/elsewhere/1", px=60_000)

    found = targets(setup)
    said = next(line for line in setup.convoy.log().splitlines() if line.startswith("metrics "))
    assert all(f"http://{target}/metrics" in said for target in found.values()), "convoy serve says where they are"
    runs = {"completed": sum(completed.values()) + 2, "cancelled": 1, "failed": 1}  # + the tool turn and `taken`

    def scraped() -> dict[str, Samples] | None:
        by_node = {name: scrape(target) for name, target in found.items()}
        every = sum(by_node.values(), Counter())
        checks = [
            # Per node: its own hosts' runs, model latencies, mailboxes, activations and leases.
            *(total(by_node[n], "convoy_runs_ended_total", status="completed") >= completed[n] for n in by_node),
            *(total(by_node[n], "convoy_model_ttft_seconds_count", provider="echo") >= completed[n] for n in by_node),
            *(total(by_node[n], "convoy_model_time_per_token_seconds_count", provider="echo") >= completed[n] for n in by_node),
            *(total(by_node[n], "convoy_model_longest_gap_seconds_count", provider="echo") >= completed[n] for n in by_node),
            *(total(by_node[n], "convoy_mailbox_depth_count") >= completed[n] for n in by_node),
            *(total(by_node[n], "convoy_activation_seconds_count") >= completed[n] for n in by_node),
            *(total(by_node[n], "convoy_lease_renewals_total") > 0 for n in by_node),
            *(any(name == "convoy_conversations_active" for name, _ in by_node[n]) for n in by_node),
            # The cluster: every run once, by status and stop reason.
            total(every, "convoy_runs_ended_total", status="completed", stop_reason="end_turn") == runs["completed"],
            total(every, "convoy_runs_ended_total", status="cancelled", stop_reason="cancelled") == runs["cancelled"],
            total(every, "convoy_runs_ended_total", status="failed", stop_reason="llm_api_error") == runs["failed"],
            total(every, "convoy_provider_errors_total", provider="openai", error_type="llm_rate_limit") == 1,
            total(every, "convoy_model_ttft_seconds_count", provider="openai", model=model) == 2,
            total(every, "convoy_tool_call_seconds_count", tool="add", outcome="success") == 1,
            total(every, "convoy_tool_call_seconds_bucket", tool="add", outcome="success", le="+Inf") == 1,
            total(every, "convoy_leases_lost_total") >= 1,
            total(every, "convoy_conversations_deactivated_total", reason="lease_lost") >= 1,
            total(every, "convoy_conversations_deactivated_total", reason="idle") >= 1,  # passivated
        ]
        return by_node if all(checks) else None

    try:
        by_node = await eventually(scraped, EXPORT_TIMEOUT_S, interval_s=1.0, message="the hosts' metrics in both nodes' scrapes")
    except AssertionError:
        every = sum((scrape(t) for t in found.values()), Counter())
        raise AssertionError(f"scraped (completed per node {dict(completed)}):\n" + "\n".join(sorted(map(str, every.items())))) from None
    assert isinstance(by_node, dict)
    # Real values, not just names: the echo model's first token takes under a second here.
    every = sum(by_node.values(), Counter())
    fast = total(every, "convoy_model_ttft_seconds_bucket", provider="echo", le="1.0")
    assert fast == total(every, "convoy_model_ttft_seconds_count", provider="echo") > 0


async def test_a_log_line_inside_a_turn_says_which_run_conversation_and_tenant(setup: Setup, client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt-notes")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("n1", "note", '{"text": "look here"}')])),
        fp.Stream(fp.chat_text(model, ["noted"])),
    )
    conv = await conversation(client, f"openai/{model}", tools=["note"])
    turn = await send(client, conv, "take a note")
    assert turn.returns()[0]["tool_return"] == "noted"

    def logged() -> dict[str, Any] | None:
        for node in setup.nodes:
            for path in node.worker_logs():
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith("{") and '"look here"' in line:
                        return json.loads(line)  # type: ignore[no-any-return]
        return None

    line = wait_until(logged, 30, interval_s=0.2, message="the tool's log line in a host's log")
    assert line["msg"] == "note taken" and line["note"] == "look here"
    assert (line["run_id"], line["conversation_id"], line["tenant"]) == (turn.run_id, conv, TENANT)
