"""A run that ends after its conversation was deleted (its owner could not be reached by the
delete's cancel) leaves nothing of the conversation behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from actors.mailbox import Mailbox
from runtime.ids import new_id
from runtime.schemas.agents import ConversationRecord
from runtime.schemas.messages import UsageStatistics, utcnow
from runtime.schemas.runs import RunView
from runtime.store import keyspace
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.fencing import Fence
from runtime.store.runs import PendingApproval, RunStore
from runtime.stream import wire
from tests.conftest import async_client

EPOCH = 3


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_url)
    yield client
    await client.aclose()


async def _accept(runs: RunStore, mailbox: Mailbox, conversation: ConversationRecord) -> RunView:
    """A message accepted into ``conversation`` (the accept step alone: no owner is woken)."""
    view = RunView(id=new_id("run"), agent_id=conversation.agent_id, conversation_id=conversation.id, tenant="t", created_at=utcnow())
    await mailbox.accept(
        conversation.id,
        view.id,
        b"{}",
        on_busy="queue",
        run_fields=runs.initial_fields(view),
        first_item=b"{}",
        stream_ttl_s=60,
        run_ttl_s=60,
    )
    return view


async def test_a_run_ending_in_an_approval_request_after_its_conversation_was_deleted_opens_none(
    redis: aioredis.Redis,
) -> None:
    """Regression: the run's end wrote the conversation's pending-approval hash again, without a
    TTL, after the delete had removed everything else: a key kept for ever. And the agent's own
    conversation is made again under the same id on its next message, which that stale approval
    then refused (409 PENDING_APPROVAL) for a history holding no such request."""
    agent = await AgentStore(redis).create(tenant="t", name="payer", model="echo/echo", system="")
    conversations = ConversationStore(redis)
    own = await conversations.default_for(agent)  # the agent's own conversation (agent-level message routes)
    runs, mailbox = RunStore(redis, ttl_s=60, maxlen=100), Mailbox(redis)
    view = await _accept(runs, mailbox, own)  # accepted, no host woken (no Ray here)
    # Its owner (one the delete's cancel cannot reach) takes it.
    await redis.set(keyspace.epoch(own.id), EPOCH)
    taken = await mailbox.take(Fence(own.id, EPOCH))
    assert taken is not None and taken.entry.run_id == view.id

    # The delete goes ahead without it (what a delete does once its cancel gave up on the owner).
    await conversations.delete(own, epoch_ttl_s=60)
    ended = await runs.end(
        view.id,
        conversation_id=own.id,
        ending=wire.Completed("requires_approval", UsageStatistics()),
        fence=Fence(own.id, EPOCH),
        mailbox_entry=taken.entry.entry_id,
        pending_approval=PendingApproval("approval-1", ("call-1",)),
    )
    assert ended, "the run still ends"
    assert (await runs.get(view.id, own.id, tenant="t")).stop_reason == "requires_approval"
    assert not await redis.exists(keyspace.pending_approval(own.id)), "no approval opened for a deleted conversation"

    again = await conversations.default_for(agent)  # the agent's next message makes it again
    assert again.id == own.id
    accepted = await _accept(runs, mailbox, again)
    assert (await mailbox.run_ids(again.id)) == [accepted.id], "it takes messages: nothing waits on an approval"
