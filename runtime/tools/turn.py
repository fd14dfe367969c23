"""The tools of one turn: the agent's server tools and the request's client tools, and how each
call is resolved: run now, or wait for the client (approval, or a client-side tool).

- The server tools a step asks for run at once, in parallel, each with its timeout.
- A tool that needs approval, and every client-side tool, waits for the client: the step ends the
  run with an ``approval_request_message`` and ``stop_reason: requires_approval``. As in Letta, the
  step's other calls wait with it (they are shown in its ``tool_call_message`` and run once the
  decisions come), so one step's calls always run together.
- The client answers with Letta's approval message (or ``tool_returns``): approve (the server tool
  runs), deny with a reason (the model gets an error result saying so), or return a client tool's
  result. All of the step's results then go out as one ``tool_return_message``.
- A tool the agent does not have is an error result for the model, not a crashed run.
- Every server tool call that runs here (or is refused as unavailable) is timed and counted by its
  outcome (``runtime.metrics``); decisions and client results are not tool runs and are not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runtime.errors import InvalidApprovalError
from runtime.ids import new_id, segment_otid
from runtime.metrics import QUIET, UNREGISTERED_TOOL, Recorder
from runtime.providers.events import ToolCall, ToolSpec
from runtime.schemas.messages import (
    ApprovalRequestMessage,
    CallsMessage,
    HistoryMessage,
    ToolReturn,
    ToolReturnMessage,
    UserMessage,
)
from runtime.schemas.requests import ApprovalCreate, ApprovalReturn, ClientTool, ToolReturnCreate
from runtime.tools.registry import ToolRegistry, ToolResult

NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class Waiting:
    """A call of the conversation's last step with no result yet: ``gated`` when it waits for the
    client's decision (it is in an approval request), else it waits only to run with them."""

    call: ToolCall
    gated: bool
    step_id: str | None


def waiting_calls(history: Sequence[HistoryMessage]) -> list[Waiting]:
    """The calls at the end of the history that no tool return answers yet, in the order asked."""
    answered = {r.tool_call_id for m in history if isinstance(m, ToolReturnMessage) for r in m.returns()}
    waiting: list[Waiting] = []
    for message in reversed(history):
        if isinstance(message, UserMessage):
            break
        if isinstance(message, CallsMessage):
            gated = isinstance(message, ApprovalRequestMessage)
            calls = [
                Waiting(ToolCall(c.tool_call_id or "", c.name or "", c.arguments or ""), gated, message.step_id)
                for c in message.calls()
                if c.tool_call_id not in answered
            ]
            waiting[:0] = calls
    return waiting


@dataclass(frozen=True)
class Toolbox:
    registry: ToolRegistry
    agent_tools: tuple[str, ...]
    client_tools: tuple[ClientTool, ...] = ()
    # The agent's own choices of which tools a person approves (tool name -> approves), over each
    # tool's ``requires_approval``.
    approvals: Mapping[str, bool] = field(default_factory=dict)
    metrics: Recorder = QUIET

    def specs(self) -> tuple[ToolSpec, ...]:
        specs = [
            ToolSpec(tool.name, tool.description, tool.parameters)
            for name in self.agent_tools
            if (tool := self.registry.get(name)) is not None
        ]
        specs += [ToolSpec(c.name, c.description or "", c.parameters or NO_PARAMETERS) for c in self.client_tools]
        return tuple(specs)

    def is_client_tool(self, name: str) -> bool:
        return any(c.name == name for c in self.client_tools)

    def waits_for_client(self, name: str) -> bool:
        if self.is_client_tool(name):
            return True
        tool = self.registry.get(name) if name in self.agent_tools else None
        return tool is not None and self.approvals.get(name, tool.requires_approval)

    async def run(self, call: ToolCall) -> ToolResult:
        if call.name not in self.agent_tools:
            result = ToolResult("error", f"tool {call.name!r} is not available to this agent", failure="unavailable")
        else:
            result = await self.registry.run(call.name, call.arguments)
        # The name is a label only when registered: a model may call any name it makes up.
        label = call.name if self.registry.get(call.name) is not None else UNREGISTERED_TOOL
        self.metrics.tool_call(label, result.outcome, result.duration_ms / 1000)
        return result

    async def run_all(self, calls: Sequence[ToolCall]) -> list[tuple[str, ToolResult]]:
        """Run ``calls`` in parallel; (call id, result) each, in their order."""
        results = await asyncio.gather(*(self.run(c) for c in calls))
        return [(c.call_id, r) for c, r in zip(calls, results, strict=True)]

    async def resolve(self, approval: ApprovalCreate, waiting: Sequence[Waiting]) -> list[tuple[str, ToolResult]]:
        """The results of every waiting call, in the order they were asked: the gated ones as the
        client decided, the others run (all in parallel). The answer is checked whole first
        (``_decisions``): an invalid one raises InvalidApprovalError before any tool runs."""
        decisions = _decisions(approval, waiting)

        async def one(waiting_call: Waiting) -> ToolResult:
            call = waiting_call.call
            if not waiting_call.gated:
                return await self.run(call)
            decision = decisions.get(call.call_id)
            if isinstance(decision, ToolReturnCreate):
                return ToolResult(decision.status, decision.text())
            approve = decision.approve if decision is not None else approval.approve
            reason = (decision.reason if decision is not None else None) or approval.reason
            return await self._decided(call, approve, reason)

        results = await asyncio.gather(*(one(w) for w in waiting))
        return [(w.call.call_id, r) for w, r in zip(waiting, results, strict=True)]

    async def _decided(self, call: ToolCall, approve: bool | None, reason: str | None) -> ToolResult:
        if approve is None:
            raise InvalidApprovalError(f"no decision for tool call {call.call_id} ({call.name})")
        if not approve:
            return ToolResult("error", f"the user denied this call{': ' + reason if reason else ''}")
        if self.is_client_tool(call.name):
            return ToolResult("error", f"{call.name} runs on the client: approving it is not enough, return its result")
        return await self.run(call)


def _decisions(approval: ApprovalCreate, waiting: Sequence[Waiting]) -> dict[str, ApprovalReturn | ToolReturnCreate]:
    """The client's decisions by call id, once each is known to be good: every call it names waits
    for a decision, none is named twice, and each gated call has one (or the answer's blanket
    ``approve``). Checked before anything runs, so a bad answer never leaves tools running for a
    turn that then fails."""
    gated = [w.call.call_id for w in waiting if w.gated]
    if not gated:
        raise InvalidApprovalError("no tool call is waiting for approval in this conversation")
    named = [d.tool_call_id for d in approval.approvals or ()]
    stray = sorted(set(named) - set(gated))
    if stray:
        raise InvalidApprovalError(f"tool_call_id {stray} are not waiting; waiting: {sorted(gated)}")
    twice = sorted({c for c in named if named.count(c) > 1})
    if twice:
        raise InvalidApprovalError(f"each waiting tool call takes exactly one decision; decided more than once: {twice}")
    undecided = [c for c in gated if c not in named]
    if undecided and approval.approve is None:
        raise InvalidApprovalError(f"no decision for tool calls {undecided}")
    return {d.tool_call_id: d for d in approval.approvals or ()}


def returned(results: Sequence[tuple[str, ToolResult]], *, run_id: str, step_id: str | None) -> ToolReturnMessage:
    """One step's results as one message (see ``ToolReturnMessage``)."""
    returns = [ToolReturn(tool_call_id=call_id, status=r.status, tool_return=r.text) for call_id, r in results]
    first = returns[0]
    message_id = new_id("message")
    return ToolReturnMessage(
        id=message_id,
        otid=segment_otid(message_id, 0),
        run_id=run_id,
        step_id=step_id,
        tool_call_id=first.tool_call_id,
        status=first.status,
        tool_return=first.tool_return,
        tool_returns=returns,
    )
