"""Letta's listing rules that need no store: the system message's id, and the parts of a model
response kept in their own order in a newest-first listing."""

from __future__ import annotations

from datetime import UTC, datetime

from runtime.letta.listings import _parts_in_order, system_message_id
from runtime.schemas.messages import AssistantMessage, HistoryMessage, ReasoningMessage, UserMessage

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_the_system_message_id_is_the_conversations_uuid() -> None:
    assert system_message_id("conv-00000000-0000-4000-8000-000000000001") == "message-00000000-0000-4000-8000-000000000001"


def test_newest_first_keeps_each_messages_parts_in_their_own_order() -> None:
    question = UserMessage(id="message-1", date=NOW, content="hi")
    thought = ReasoningMessage(id="message-2", date=NOW, reasoning="think")
    answer = AssistantMessage(id="message-2", date=NOW, content="hello")
    oldest_first: list[HistoryMessage] = [question, thought, answer]
    assert _parts_in_order(oldest_first[::-1]) == [thought, answer, question]
