"""An approval answer is checked whole before any of its step's tools run: one decision per
waiting call, and only for waiting calls."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from runtime.errors import InvalidApprovalError
from runtime.schemas.messages import ApprovalRequestMessage, HistoryMessage, ToolCall, ToolCallMessage, UserMessage
from runtime.schemas.requests import ApprovalCreate, SendMessageRequest
from runtime.tools.registry import ToolRegistry
from runtime.tools.turn import Toolbox, waiting_calls


def _step(ran: list[str]) -> tuple[Toolbox, list[HistoryMessage]]:
    """A step that called server tool ``A`` and asked approval for ``B1`` and ``B2``."""
    registry = ToolRegistry()

    @registry.register
    async def lookup(q: str) -> str:
        """A server tool."""
        ran.append(f"lookup {q}")
        return "found"

    @registry.register(requires_approval=True)
    async def transfer(amount: int) -> str:
        """Needs a person's approval."""
        ran.append(f"transfer {amount}")
        return "sent"

    asked = [ToolCall(name="transfer", arguments=f'{{"amount": {n}}}', tool_call_id=f"B{n}") for n in (1, 2)]
    server = ToolCall(name="lookup", arguments='{"q": "x"}', tool_call_id="A")
    history: list[HistoryMessage] = [
        UserMessage(id="message-u", content="go"),
        ToolCallMessage(id="message-r", step_id="step-1", tool_call=server, tool_calls=[server]),
        ApprovalRequestMessage(id="message-r", step_id="step-1", tool_call=asked[0], tool_calls=asked),
    ]
    return Toolbox(registry, ("lookup", "transfer")), history


def _answer(*decisions: tuple[str, bool], **blanket: Any) -> ApprovalCreate:
    approvals = [{"type": "approval", "tool_call_id": c, "approve": a} for c, a in decisions]
    return ApprovalCreate.model_validate({"type": "approval", "approvals": approvals or None, **blanket})


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_answer(("B1", True), ("B1", True)), r"decided more than once: \['B1'\]"),
        (_answer(("B1", True)), r"no decision for tool calls \['B2'\]"),
        (_answer(("B1", True), ("B3", True)), r"\['B3'\] are not waiting"),
    ],
    ids=["a-call-decided-twice", "a-call-undecided", "a-call-not-waiting"],
)
async def test_a_bad_answer_is_refused_before_any_tool_runs(answer: ApprovalCreate, message: str) -> None:
    """Regression (G5): ``[B1, B1]`` started the server call and the approved one, then failed the
    turn on B2's missing decision, the tools running on with nothing on record."""
    ran: list[str] = []
    box, history = _step(ran)
    with pytest.raises(InvalidApprovalError, match=message):
        await box.resolve(answer, waiting_calls(history))
    assert ran == []


async def test_a_whole_answer_runs_each_call_once() -> None:
    ran: list[str] = []
    box, history = _step(ran)
    results = await box.resolve(_answer(("B2", False), approve=True), waiting_calls(history))
    assert [(c, r.status, r.text) for c, r in results] == [
        ("A", "success", "found"),
        ("B1", "success", "sent"),
        ("B2", "error", "the user denied this call"),
    ]
    assert sorted(ran) == ["lookup x", "transfer 1"]


@pytest.mark.parametrize(
    "answer",
    [
        {"type": "approval", "approvals": [{"type": "approval", "tool_call_id": "B1", "approve": True}] * 2},
        {"type": "tool_return", "tool_returns": [{"tool_call_id": "B1", "tool_return": "r"}] * 2},
    ],
    ids=["approvals", "tool_returns"],
)
def test_a_request_deciding_a_call_twice_is_invalid(answer: dict[str, Any]) -> None:
    """Refused as the request is read, so nothing is accepted or written for it."""
    with pytest.raises(ValidationError, match=r"decided more than once: \['B1'\]"):
        SendMessageRequest.model_validate({"messages": [answer]})
