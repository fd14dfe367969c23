"""Accepting a turn (``actors.client.ConversationClient.accept``) when Redis fails mid-way: a reply
lost after the accept had landed is not a refusal."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.client import Cancelled, ConversationClient
from actors.mailbox import Mailbox
from actors.supervisor import host_names
from runtime.errors import NotFoundError
from runtime.ids import new_id
from runtime.schemas.agents import ConversationRef
from runtime.schemas.messages import utcnow
from runtime.schemas.requests import MessageCreate
from runtime.schemas.runs import RunQuery, RunView
from runtime.schemas.turns import TurnRequest
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.connection import connect
from runtime.store.runs import RunStore
from runtime.stream.tailer import TailerPool
from tests.fakes.proxy import SilencingProxy


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, hosts=1)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect(settings)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[SilencingProxy]:
    async with SilencingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as found:
        yield found


def _send(conversation: str) -> tuple[TurnRequest, RunView]:
    run_id = new_id("run")
    turn = TurnRequest(
        run_id=run_id, agent_id="agent-x", conversation_id=conversation, messages=[MessageCreate(content="hi")], accepted_at_ns=time.time_ns()
    )
    return turn, RunView(id=run_id, agent_id="agent-x", conversation_id=conversation, tenant="t", created_at=utcnow())


@pytest.mark.single_redis
async def test_an_accept_whose_reply_was_lost_keeps_its_run_and_a_retry_joins_it(
    settings: Settings, redis: aioredis.Redis, proxy: SilencingProxy
) -> None:
    conversation = new_id("conv")
    await redis.set(keyspace.conversation(conversation), b"{}")
    for name in host_names(settings):  # a live host: waking the conversation rings its doorbell
        await redis.hset(keyspace.hosts(), name, json.dumps({"ts": time.time()}))
    api = connect(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_socket_timeout_s=0.5, read_block_ms=100))
    tailers = TailerPool(api, block_ms=100)
    client = ConversationClient(settings, api, RunStore(api, ttl_s=60, maxlen=100), tailers)
    ref = ConversationRef(id=conversation, tenant="t", agent_id="agent-x")
    try:
        warm = new_id("conv")  # the client's connection is open and Redis knows its scripts
        await redis.set(keyspace.conversation(warm), b"{}")
        await client.accept(ConversationRef(id=warm, tenant="t", agent_id="agent-x"), *_send(warm), on_busy="queue", idempotency=None, approval=None, key_id=None)
        proxy.lose_replies()
        turn, view = _send(conversation)
        with pytest.raises(RedisError):
            await client.accept(ref, turn, view, on_busy="queue", idempotency="otid:once", approval=None, key_id=None)
        assert await Mailbox(redis).run_ids(conversation) == [turn.run_id], "the accept landed"
        runs = RunStore(redis, ttl_s=60, maxlen=100)
        assert await runs.conversation_of(turn.run_id) == conversation, "GET /v1/runs/{id} finds it"

        again = await client.accept(ref, *_send(conversation), on_busy="queue", idempotency="otid:once", approval=None, key_id=None)
        assert again.duplicate and again.run.id == turn.run_id, "the retry joins the run that landed"
        assert [r.id for r in await runs.list(RunQuery(conversation_id=conversation), tenant="t")] == [turn.run_id]
    finally:
        await api.aclose()


async def test_a_send_arriving_while_its_conversation_is_deleted_is_refused_not_orphaned(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Deleting a conversation cancels what its mailbox holds, then removes it: a send accepted in
    between would be left behind, its run ``created`` for good. The delete closes the conversation
    to new turns first, so that send is refused (404) instead."""
    for name in host_names(settings):  # a live host: waking a conversation rings its doorbell (no Ray here)
        await redis.hset(keyspace.hosts(), name, json.dumps({"ts": time.time()}))
    agent = await AgentStore(redis).create(tenant="t", name="doomed", model="echo/echo", system="")
    conversation = await ConversationStore(redis).create(agent)
    runs = RunStore(redis, ttl_s=60, maxlen=100)
    late: list[BaseException | None] = []

    class SendDuringTheCancel(ConversationClient):
        async def cancel_conversation(self, conversation_id: str) -> Cancelled:
            try:
                await self.accept(conversation.ref(), *_send(conversation_id), on_busy="queue", idempotency=None, approval=None, key_id=None)
                late.append(None)
            except NotFoundError as exc:
                late.append(exc)
            return await super().cancel_conversation(conversation_id)

    client = SendDuringTheCancel(settings, redis, runs, TailerPool(redis, block_ms=100))
    await client.delete_conversation(conversation)
    assert len(late) == 1 and isinstance(late[0], NotFoundError), "the send is refused: the conversation is closed"
    assert await runs.list(RunQuery(conversation_id=conversation.id), tenant="t") == [], "and no run is left behind"
