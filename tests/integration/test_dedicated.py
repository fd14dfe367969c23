"""``CONVOY_PLACEMENT=dedicated``: one Ray actor (its own process) per conversation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from runtime.store import keyspace
from tests.conftest import Convoy, start_convoy, stop_convoy, wait_until


@pytest.fixture(scope="module")
def dedicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Convoy]:
    server = start_convoy(tmp_path_factory.mktemp("dedicated"), {"CONVOY_PLACEMENT": "dedicated"})
    yield server
    assert not stop_convoy(server), "processes left behind"


def test_each_conversation_gets_its_own_process_until_passivated(dedicated: Convoy) -> None:
    store = redis.Redis.from_url(dedicated.redis_url, decode_responses=True)
    with httpx.Client(base_url=dedicated.url, timeout=60) as client:
        assert client.get("/v1/health").json()["ray"]["placement"] == "dedicated"
        agent = client.post("/v1/agents", json={"name": "isolated"}).json()
        convs = [client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"] for _ in range(2)]
        hosts: list[str] = []
        pids: set[int] = set()
        for conv in convs:
            reply = client.post(f"/v1/conversations/{conv}/messages", json={"input": "alone", "streaming": False})
            assert reply.status_code == 200 and reply.json()["messages"][0]["content"] == "alone"
            # Read at once: the conversation is passivated after 2 s of idleness.
            owner = store.get(keyspace.lease(conv))
            assert owner is not None, "a conversation is active right after its turn"
            hosts.append(owner.split("/")[0])
            pids.add(json.loads(store.hget(keyspace.hosts(), hosts[-1]))["pid"])
        assert hosts == [f"convoy-conv-{conv}" for conv in convs]
        assert len(pids) == 2, "two processes"

        # Passivated (CONVOY_IDLE_PASSIVATE_S=2 in tests): the actor leaves and frees its process.
        wait_until(lambda: not store.hexists(keyspace.hosts(), hosts[0]), 20, 0.1, "the dedicated host to exit")
        assert store.get(keyspace.lease(convs[0])) is None
        reply = client.post(f"/v1/conversations/{convs[0]}/messages", json={"input": "back", "streaming": False})
        assert reply.status_code == 200
        assert reply.json()["usage"]["prompt_tokens"] == len("alone alone back".split()), "history intact"
