"""Which conversation a conversation route's id names (no Redis needed: the forms are read from the ids)."""

from __future__ import annotations

import uuid

import pytest

from runtime.errors import InvalidRequestError
from runtime.ids import new_id
from runtime.letta.targets import DEFAULT, Target, target
from runtime.store.agents import default_conversation_id


def test_a_conversation_id_names_that_conversation() -> None:
    conversation_id = new_id("conv")
    assert target(conversation_id, None) == Target(conversation_id, None)
    assert not target(conversation_id, None).agent_direct


def test_default_with_agent_id_and_an_agent_id_name_the_agents_own_history() -> None:
    agent_id = new_id("agent")
    own = Target(default_conversation_id(agent_id), agent_id)
    assert target(DEFAULT, agent_id) == own
    assert target(agent_id, None) == own
    assert target(agent_id, agent_id) == own
    assert own.agent_direct
    assert own.conversation_id == f"conv-{uuid.UUID(agent_id.removeprefix('agent-'))}"


@pytest.mark.parametrize(
    ("conversation_id", "agent_id", "says"),
    [
        (DEFAULT, None, "send agent_id with it"),
        (DEFAULT, "conv-1", "must be an agent's id"),
        (DEFAULT, "agent-not-a-uuid", "must be an agent's id"),
        ("agent-00000000-0000-4000-8000-000000000001", "agent-00000000-0000-4000-8000-000000000002", "differs from the agent"),
        ("conv-00000000-0000-4000-8000-000000000001", "agent-00000000-0000-4000-8000-000000000002", "agent-direct form"),
    ],
)
def test_ids_that_do_not_fit_together_are_refused(conversation_id: str, agent_id: str | None, says: str) -> None:
    with pytest.raises(InvalidRequestError, match=says):
        target(conversation_id, agent_id)
