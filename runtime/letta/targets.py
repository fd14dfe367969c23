"""Which conversation a conversation route's id names, as Letta reads it.

Letta's conversation routes take three forms of id: a conversation's (``conv-<uuid>``); the word
``default`` with an ``agent_id`` (in the body of a send, a resume or a recompile, in the query
otherwise), for the agent's own history ("agent-direct mode"); or, deprecated, the agent's id
itself. Convoy keeps an agent's own history in its default conversation
(``runtime.store.agents.default_conversation_id``), so the last two name that conversation: a
send there is a send to ``POST /v1/agents/{id}/messages``, one at a time as every conversation is.
The routes take the id as ``api.validation.ConversationPath``, which admits exactly these forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.errors import InvalidRequestError, NotFoundError
from runtime.ids import AGENT_ID
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.store.agents import AgentStore, ConversationStore, default_conversation_id

DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Target:
    """A conversation route's conversation: its id, and whether it is an agent's own history
    (listed as Letta lists an agent's messages)."""

    conversation_id: str
    agent_id: str | None  # set when the id named the agent's own history

    @property
    def agent_direct(self) -> bool:
        return self.agent_id is not None


def target(conversation_id: str, agent_id: str | None) -> Target:
    """What ``conversation_id`` (and ``agent_id``) name; 400 when they do not fit together."""
    if conversation_id == DEFAULT:
        if agent_id is None:
            raise InvalidRequestError("conversation id 'default' names an agent's own history: send agent_id with it")
        if not re.fullmatch(AGENT_ID, agent_id):
            raise InvalidRequestError(f"agent_id must be an agent's id (agent-<uuid4>), not {agent_id[:80]!r}")
        return Target(default_conversation_id(agent_id), agent_id)
    if conversation_id.startswith("agent-"):
        if agent_id is not None and agent_id != conversation_id:
            raise InvalidRequestError(f"agent_id {agent_id} differs from the agent {conversation_id} in the path")
        return Target(default_conversation_id(conversation_id), conversation_id)
    if agent_id is not None:
        raise InvalidRequestError(
            f"agent_id is for the agent-direct form ('default' as the conversation id); {conversation_id} is a conversation's id"
        )
    return Target(conversation_id, None)


async def conversation(conversations: ConversationStore, where: Target, *, tenant: str) -> ConversationRecord:
    """The conversation, the agent's default one created on first use; 404 if it (or the agent) is
    unknown or another tenant's."""
    if where.agent_id is not None:
        return await conversations.default_of(where.agent_id, tenant=tenant)
    return await conversations.get(where.conversation_id, tenant=tenant)


async def agent_of(
    agents: AgentStore, conversations: ConversationStore, where: Target, *, tenant: str
) -> tuple[AgentRecord, ConversationRecord | None]:
    """The agent whose conversation it is, and the conversation record (None: an agent's default
    conversation that has had no message yet, which reads as empty and is not created by a read)."""
    if where.agent_id is not None:
        agent = await agents.get(where.agent_id, tenant=tenant)
        try:
            return agent, await conversations.get(where.conversation_id, tenant=tenant)
        except NotFoundError:
            return agent, None
    record = await conversations.get(where.conversation_id, tenant=tenant)
    return await agents.get(record.agent_id, tenant=tenant), record
