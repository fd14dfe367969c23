"""A turn cancelled while its tools run (``runtime.agent.loop``): what the history keeps."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.agent.loop import INTERRUPTED, run_turn
from runtime.agent.prompt import to_chat
from runtime.providers.events import Finish, ResponseInfo, ToolCallDelta, Usage
from runtime.schemas.messages import HistoryMessage, ToolCallMessage, ToolReturnMessage, UserMessage
from runtime.tools.registry import ToolRegistry
from tests.unit.runtime import turns


async def test_a_cancel_while_a_tool_runs_keeps_its_call_and_says_it_may_have_taken_effect() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []
    registry = ToolRegistry()

    @registry.register
    def transfer(amount: int) -> str:
        """Send money."""
        started.set()
        release.wait(5)
        ran.append(amount)
        return "sent"

    persisted: list[HistoryMessage] = []

    async def persist(messages: list[HistoryMessage]) -> None:
        persisted.extend(messages)

    model = turns.Scripted([ResponseInfo("r", "m"), ToolCallDelta(0, "call_1", "transfer", '{"amount": 100}'), Usage(1, 1), Finish("tool_calls")])
    agent = turns.agent(tools=["transfer"])
    turn = asyncio.create_task(
        run_turn(
            turns.turn("pay bob 100"),
            agent=agent,
            conversation=turns.conversation(agent),
            history=[],
            models=lambda handle: turns.model(model),
            tools=registry,
            emit=turns.ignore,
            persist=persist,
        )
    )
    try:
        assert await asyncio.to_thread(started.wait, 5), "the tool started"
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
    finally:
        release.set()
    user, call, result = persisted
    assert isinstance(user, UserMessage) and isinstance(call, ToolCallMessage) and isinstance(result, ToolReturnMessage)
    assert [(r.tool_call_id, r.status, r.tool_return) for r in result.tool_returns] == [("call_1", "error", INTERRUPTED)]
    shown = [m for m in to_chat(persisted) if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in shown] == [("call_1", INTERRUPTED)], "the next request tells the model"
