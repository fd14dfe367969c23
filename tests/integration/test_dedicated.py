"""``CONVOY_PLACEMENT=dedicated``: one Ray actor (its own process) per conversation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from ray.exceptions import ActorDiedError

from actors.directory import Directory
from actors.host import HostCore
from actors.router import ConversationRouter
from actors.supervisor import dedicated_name
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.runs import RunStore
from tests.conftest import Convoy, async_client, eventually, start_convoy, stop_convoy, wait_until
from tests.integration.test_activation import _accept, _conversation


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


class _StandInActor:
    """What the router uses of a Ray actor handle (``handle.<method>.remote(*args)``, awaited) for a
    ``HostCore`` in this process; once the actor is gone, every call through it fails with
    ``ActorDiedError``, as through Ray's handle of an actor that exited."""

    def __init__(self, core: HostCore) -> None:
        self.core = core
        self.gone = False

    def __getattr__(self, method: str) -> Any:
        return _StandInMethod(self, method)


class _StandInMethod:
    def __init__(self, actor: _StandInActor, method: str) -> None:
        self._actor, self._method = actor, method

    def remote(self, *args: object) -> Any:
        return self._call(*args)

    async def _call(self, *args: object) -> object:
        if self._actor.gone:
            raise ActorDiedError()
        return await getattr(self._actor.core, self._method)(*args)


async def test_a_cancel_reaches_a_dedicated_host_created_again_after_the_cached_one_exited(redis_url: str) -> None:
    """Review H3: a replica that once reached a conversation's dedicated host keeps its handle; the
    host passivates and exits, and is created again (by another replica): every later cancel through
    the old handle failed as "owner unreachable", and the run went on. No Ray here: the hosts are
    ``HostCore``s and the handles stand-ins that fail as a dead actor's do."""
    settings = Settings(redis_url=redis_url, placement="dedicated", echo_delay_ms=20, idle_passivate_s=60, lease_ttl_ms=5_000)
    store = async_client(redis_url)
    runs = RunStore(store, ttl_s=600, maxlen=1000)
    agent, conversation = await _conversation(store)
    name = dedicated_name(conversation.id)
    actors: dict[str, _StandInActor] = {}

    def lookup(actor_name: str) -> Any:
        if actor_name not in actors:
            raise ValueError(f"no actor named {actor_name}")
        return actors[actor_name]

    router = ConversationRouter(settings, Directory(store, lease_ttl_ms=settings.lease_ttl_ms), store, lookup=lookup)
    long_text = " ".join(f"word{i}" for i in range(400))  # 8 s of echo: still running when cancelled

    async def cancelled_at(core: HostCore) -> None:
        run_id = await _accept(store, agent, conversation, long_text)
        assert await core.deliver(conversation.id) == "ok"
        await eventually(lambda: _status_is(runs, run_id, "running"), 10, message="the run to start")
        assert await router.cancel(conversation.id, run_id), "the cancel reaches the conversation's host"
        await eventually(lambda: _status_is(runs, run_id, "cancelled"), 10, message="the run to be cancelled")

    first = HostCore(name, settings)
    second = HostCore(name, settings)
    try:
        await first.start()
        actors[name] = _StandInActor(first)
        await cancelled_at(first)  # the replica now holds a handle of the first actor
        await first.stop()  # passivated: the actor exits...
        actors[name].gone = True
        await second.start()  # ...and is created again under its name
        actors[name] = _StandInActor(second)
        await cancelled_at(second)
    finally:
        await first.stop()
        await second.stop()
        await store.aclose()


async def _status_is(runs: RunStore, run_id: str, status: str) -> bool:
    return (await runs.get(run_id, tenant=None)).status == status
