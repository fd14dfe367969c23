"""The conversation logic is plain Python: an ``Activation`` and a ``HostCore`` run turns on a real
Redis with no Ray at all (the Ray actor, ``ConversationHost``, is a thin shell around ``HostCore``).

Turns are accepted exactly as the API accepts them (``Mailbox.accept``, the run's first item,
its record), then a host is told to look at the conversation, as a doorbell ring would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray
import redis.asyncio as aioredis

from actors.conversation import Activation, Services
from actors.directory import Directory, Lease, owner_id
from actors.host import HostCore
from actors.mailbox import Mailbox
from runtime.errors import LLMAuthenticationError, StoreUnavailableError
from runtime.ids import new_id
from runtime.providers.events import Finish, ResponseInfo, TextDelta, Usage
from runtime.providers.registry import Providers
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import Ping, utcnow
from runtime.schemas.requests import MessageCreate
from runtime.schemas.runs import RunView
from runtime.schemas.turns import TurnRequest
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.connection import connect
from runtime.store.history import HistoryStore
from runtime.store.runs import UNFINISHED_RUN_TTL_S, RunStore
from runtime.stream import wire
from runtime.stream.items import read_after
from runtime.tools import ToolRegistry
from tests.conftest import eventually
from tests.unit.runtime import turns


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, echo_delay_ms=0, idle_passivate_s=60, lease_ttl_ms=5_000, hosts=1)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect(settings)
    yield client
    await client.aclose()


async def _conversation(redis: aioredis.Redis) -> tuple[AgentRecord, ConversationRecord]:
    agent = await AgentStore(redis).create(tenant="t", name="plain", model="echo/echo", system="Echo.")
    return agent, await ConversationStore(redis).create(agent)


async def _accept(redis: aioredis.Redis, agent: AgentRecord, conversation: ConversationRecord, text: str) -> str:
    """Accept one turn as the API does: run record, first item, mailbox entry, in one step."""
    runs = RunStore(redis, ttl_s=600, maxlen=1000)
    run_id = new_id("run")
    view = RunView(id=run_id, agent_id=agent.id, conversation_id=conversation.id, tenant="t", created_at=utcnow())
    turn = TurnRequest(
        run_id=run_id,
        agent_id=agent.id,
        conversation_id=conversation.id,
        messages=[MessageCreate(content=text)],
        accepted_at_ns=time.time_ns(),
    )
    await runs.index(view)
    await Mailbox(redis).accept(
        conversation.id,
        run_id,
        turn.model_dump_json().encode(),
        on_busy="queue",
        run_fields=runs.initial_fields(view),
        first_item=wire.encode(Ping(id=f"ping-{run_id[4:]}", run_id=run_id, seq_id=1)),
        stream_ttl_s=600,
        run_ttl_s=UNFINISHED_RUN_TTL_S,
    )
    return run_id


async def _items(redis: aioredis.Redis, conversation_id: str, run_id: str) -> list[dict[str, Any]]:
    stored = await read_after(redis, keyspace.run_stream(conversation_id, run_id), 0)
    return [{"done": True} if i.terminal else json.loads(i.payload) for i in stored]


def _text(items: list[dict[str, Any]]) -> str:
    return "".join(i["content"] for i in items if i.get("message_type") == "assistant_message")


async def _finished(redis: aioredis.Redis, run_ids: list[str]) -> bool:
    runs = RunStore(redis, ttl_s=600, maxlen=1000)
    return all([(await runs.get(r, tenant=None)).status == "completed" for r in run_ids])


async def test_an_activation_runs_its_mailbox_in_order_without_ray(settings: Settings, redis: aioredis.Redis) -> None:
    assert not ray.is_initialized()
    agent, conversation = await _conversation(redis)
    first, second = [await _accept(redis, agent, conversation, f"turn {n} of two") for n in ("one", "two")]
    services = Services(
        redis=redis,
        settings=settings,
        mailbox=Mailbox(redis),
        runs=RunStore(redis, ttl_s=600, maxlen=1000),
        history=HistoryStore(redis),
        agents=AgentStore(redis),
        conversations=ConversationStore(redis),
        models=Providers(settings).model,
        tools=ToolRegistry(),
    )
    lease = await Directory(redis, lease_ttl_ms=settings.lease_ttl_ms).acquire(conversation.id, owner_id("plain", "i1", 1))
    assert not isinstance(lease, str) and hasattr(lease, "epoch")
    activation = Activation(lease, services)  # type: ignore[arg-type]
    worker = asyncio.create_task(activation.run())
    try:
        await eventually(lambda: _finished(redis, [first, second]), 10, message="both turns to complete")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    one, two = await _items(redis, conversation.id, first), await _items(redis, conversation.id, second)
    assert _text(one) == "turn one of two" and _text(two) == "turn two of two"
    assert [i.get("message_type") for i in one[-3:-1]] == ["stop_reason", "usage_statistics"] and one[-1] == {"done": True}
    history = await HistoryStore(redis).page(conversation.id)
    assert [m.message_type for m in history] == ["user_message", "assistant_message"] * 2, "one turn after the other"
    assert await Mailbox(redis).depth(conversation.id) == 0


async def test_a_host_core_takes_over_what_its_dead_predecessor_held_without_ray(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """What Ray's restart of a host amounts to, in plain Python: a new incarnation under the same
    name ends the run its predecessor left running (``owner_lost``) and runs what waits behind it."""
    agent, conversation = await _conversation(redis)
    interrupted = await _accept(redis, agent, conversation, "left running")
    waiting = await _accept(redis, agent, conversation, "waiting behind it")
    name = f"plain-host-{new_id('run')[4:12]}"
    # The predecessor: it took the conversation and started the first run, then died.
    lease = await Directory(redis, lease_ttl_ms=settings.lease_ttl_ms).acquire(conversation.id, owner_id(name, "dead", 1))
    assert not isinstance(lease, str)
    await redis.sadd(keyspace.host_conversations(name), conversation.id)
    fence_epoch = lease.epoch  # type: ignore[union-attr]
    from runtime.store.fencing import Fence

    taken = await Mailbox(redis).take(Fence(conversation.id, fence_epoch, lease.owner))  # type: ignore[union-attr]
    assert taken is not None and taken.status == "started"

    core = HostCore(name, settings)
    try:
        await core.start()  # recovery: takes over the predecessor's conversations at once
        await eventually(lambda: _finished(redis, [waiting]), 15, message="the waiting turn to complete")
        lost = await RunStore(redis, ttl_s=600, maxlen=1000).get(interrupted, tenant=None)
        assert lost.status == "failed" and lost.metadata and lost.metadata["error"]["error_type"] == "owner_lost"
        assert _text(await _items(redis, conversation.id, waiting)) == "waiting behind it"
        stats = await core.stats()
        assert stats["activations"] == 1 and stats["name"] == name
    finally:
        await core.stop()


async def test_a_host_core_activates_a_conversation_rung_at_its_doorbell(settings: Settings, redis: aioredis.Redis) -> None:
    """How the API wakes a conversation active nowhere (``ConversationRouter.wake``): a ring at the
    doorbell of the host that is to take it, no Ray call."""
    agent, conversation = await _conversation(redis)
    run_id = await _accept(redis, agent, conversation, "rung, not called")
    name = f"plain-host-{new_id('run')[4:12]}"
    core = HostCore(name, settings)
    try:
        await core.start()
        await redis.xadd(keyspace.host_bell(name), {"c": conversation.id})
        await eventually(lambda: _finished(redis, [run_id]), 15, message="the rung conversation's turn to complete")
        assert _text(await _items(redis, conversation.id, run_id)) == "rung, not called"
    finally:
        await core.stop()


async def test_a_ring_that_came_while_its_host_was_down_is_answered_by_the_next_incarnation(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A host that dies after the API rang it for a conversation it does not own yet: nothing else
    would wake that conversation, so Ray's restart of the host (here a new ``HostCore`` under the
    same name) reads the doorbell on from where its predecessor's last heartbeat says it got to."""
    agent, conversation = await _conversation(redis)
    name = f"plain-host-{new_id('run')[4:12]}"
    before = HostCore(name, settings)
    await before.start()
    await eventually(lambda: redis.hexists(keyspace.hosts(), name), 10, message="the first incarnation's heartbeat")
    await before.stop()
    run_id = await _accept(redis, agent, conversation, "rung while down")
    await redis.xadd(keyspace.host_bell(name), {"c": conversation.id})
    after = HostCore(name, settings)
    try:
        await after.start()
        await eventually(lambda: _finished(redis, [run_id]), 15, message="the turn rung while the host was down to complete")
        assert _text(await _items(redis, conversation.id, run_id)) == "rung while down"
    finally:
        await after.stop()


def _services(settings: Settings, redis: aioredis.Redis, **parts: Any) -> Services:
    """What a host gives its activations, on ``redis``; ``parts`` replace some of it."""
    made: dict[str, Any] = {
        "redis": redis,
        "settings": settings,
        "mailbox": Mailbox(redis),
        "runs": RunStore(redis, ttl_s=600, maxlen=1000),
        "history": HistoryStore(redis),
        "agents": AgentStore(redis),
        "conversations": ConversationStore(redis),
        "models": Providers(settings).model,
        "tools": ToolRegistry(),
    }
    return Services(**(made | parts))


async def _activation(settings: Settings, redis: aioredis.Redis, conversation_id: str, services: Services) -> Activation:
    lease = await Directory(redis, lease_ttl_ms=settings.lease_ttl_ms).acquire(conversation_id, owner_id("plain", new_id("run")[4:12], 1))
    assert isinstance(lease, Lease)
    return Activation(lease, services)


async def _status(redis: aioredis.Redis, run_id: str) -> RunView:
    return await RunStore(redis, ttl_s=600, maxlen=1000).get(run_id, tenant=None)


async def _ended(redis: aioredis.Redis, run_id: str) -> bool:
    return (await _status(redis, run_id)).status not in ("created", "running")


class _AnswerAppendFails(HistoryStore):
    """A history whose first append of a model's answer lands in Redis and then fails to come back:
    its reply held until the turn's task is cancelled (``cancelled``), or given up as after an
    outage longer than the owner's patience (``store_unavailable``)."""

    def __init__(self, redis: aioredis.Redis, fault: str) -> None:
        super().__init__(redis)
        self._fault = fault
        self.landed = asyncio.Event()

    async def append(self, fence: Any, messages: Any) -> None:
        await super().append(fence, messages)
        if self.landed.is_set() or not any(m.message_type == "assistant_message" for m in messages):
            return
        self.landed.set()
        if self._fault == "cancelled":
            await asyncio.Event().wait()  # the reply never comes: only the cancel ends this wait
        raise StoreUnavailableError("Redis unreachable for 10 s")


@pytest.mark.parametrize("fault", ["cancelled", "store_unavailable"])
async def test_the_next_turn_sees_messages_whose_append_raised_after_it_landed(
    settings: Settings, redis: aioredis.Redis, fault: str
) -> None:
    """Review H5: an answer whose history append raised after it had landed (a cancel while its
    reply was on its way back; Redis given up on afterwards) was in Redis but not in the
    activation's copy, so the next turn of that activation showed the model a history without it."""
    agent, conversation = await _conversation(redis)  # system prompt "Echo.": one word
    history = _AnswerAppendFails(redis, fault)
    activation = await _activation(settings, redis, conversation.id, _services(settings, redis, history=history))
    worker = asyncio.create_task(activation.run())
    try:
        first = await _accept(redis, agent, conversation, "first question here")
        activation.poke()
        await asyncio.wait_for(history.landed.wait(), 10)
        if fault == "cancelled":
            assert activation.cancel(first), "the cancel reaches the running turn"
        await eventually(lambda: _ended(redis, first), 10, message="the first run to end")
        assert (await _status(redis, first)).status == ("cancelled" if fault == "cancelled" else "failed")
        stored = await HistoryStore(redis).recent(conversation.id, limit=50)
        assert [m.message_type for m in stored] == ["user_message", "assistant_message"], "the answer landed"

        second = await _accept(redis, agent, conversation, "second")
        activation.poke()
        await eventually(lambda: _finished(redis, [second]), 10, message="the second run to complete")
        usage = next(i for i in await _items(redis, conversation.id, second) if i.get("message_type") == "usage_statistics")
        # What the model was shown: the system prompt, the first question, its answer, the second.
        assert usage["prompt_tokens"] == 1 + 3 + 3 + 1, "the next turn shows the model the stored answer"
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


class _FailedEndsHeld(RunStore):
    """A run store whose end of a failed run waits until ``release`` is set: the window in which a
    user's cancel arrives while the run is being ended."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis, ttl_s=600, maxlen=1000)
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def end(self, run_id: str, **fields: Any) -> bool:
        if isinstance(fields.get("ending"), wire.Failed) and not self.release.is_set():
            self.reached.set()
            await self.release.wait()
        return await super().end(run_id, **fields)


async def test_a_cancel_arriving_while_a_failed_run_is_being_ended_keeps_its_real_error(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Review H6: a user's cancel landing while a failing run was being ended interrupted the end:
    the activation stopped, and the run was left ``running`` (later ``owner_lost``) instead of
    failing with its real error."""
    agent, conversation = await _conversation(redis)
    scripted = turns.Scripted(
        LLMAuthenticationError("bad key"),
        [ResponseInfo("r", "x"), TextDelta("fine"), Usage(prompt_tokens=1, completion_tokens=1), Finish("end_turn")],
    )
    runs = _FailedEndsHeld(redis)
    services = _services(settings, redis, runs=runs, models=lambda handle: turns.model(scripted))
    activation = await _activation(settings, redis, conversation.id, services)
    worker = asyncio.create_task(activation.run())
    try:
        failing = await _accept(redis, agent, conversation, "this one fails")
        activation.poke()
        await asyncio.wait_for(runs.reached.wait(), 10)
        assert activation.cancel(failing), "the run is still this activation's"
        runs.release.set()
        await eventually(lambda: _ended(redis, failing), 10, message="the failing run to end")
        view = await _status(redis, failing)
        assert view.status == "failed" and view.metadata and view.metadata["error"]["error_type"] == "llm_authentication"

        after = await _accept(redis, agent, conversation, "and this one works")
        activation.poke()
        await eventually(lambda: _finished(redis, [after]), 10, message="the next run, in the same activation")
        assert not worker.done(), "the activation goes on"
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_an_activation_fenced_out_at_its_first_take_says_so(settings: Settings, redis: aioredis.Redis) -> None:
    """An activation whose lease another owner took before its first take stops as ``fenced``
    (not as a crash), touching nothing: the newer owner runs the turn."""
    agent, conversation = await _conversation(redis)
    directory = Directory(redis, lease_ttl_ms=settings.lease_ttl_ms)
    stale = await directory.acquire(conversation.id, owner_id("old-host", "a", 1))
    assert isinstance(stale, Lease)
    await directory.release(stale)
    newer = await directory.acquire(conversation.id, owner_id("new-host", "b", 1))
    assert isinstance(newer, Lease) and newer.epoch > stale.epoch
    run_id = await _accept(redis, agent, conversation, "for the newer owner")
    assert await asyncio.wait_for(Activation(stale, _services(settings, redis)).run(), 10) == "fenced"
    assert (await _status(redis, run_id)).status == "created", "the stale owner touched nothing"
