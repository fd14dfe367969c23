"""The tools of one turn: the agent's server tools and the request's client tools, and how each
call is resolved — run now, or wait for the client (approval, or a client-side tool).

- A server tool runs at once, in parallel with the step's other calls, unless it was registered
  with ``requires_approval``.
- A tool that needs approval, and every client-side tool, ends the run with an
  ``approval_request_message`` and ``stop_reason: requires_approval``. The client answers with
  Letta's approval message: approve (the server tool runs), deny with a reason (the model gets an
  error result saying so), or return a client tool's result.
- A tool the agent does not have is an error result for the model, not a crashed run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.errors import InvalidApprovalError
from runtime.ids import new_id
from runtime.providers.events import ToolCall, ToolSpec
from runtime.schemas.messages import ApprovalRequestMessage, ToolReturnMessage
from runtime.schemas.requests import ApprovalCreate, ApprovalReturn, ClientTool, ToolReturnCreate
from runtime.tools.registry import ToolRegistry, ToolResult

NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Toolbox:
    registry: ToolRegistry
    agent_tools: tuple[str, ...]
    client_tools: tuple[ClientTool, ...] = ()

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
        return tool is not None and tool.requires_approval

    async def run(self, call: ToolCall) -> ToolResult:
        if call.name not in self.agent_tools:
            return ToolResult("error", f"tool {call.name!r} is not available to this agent")
        return await self.registry.run(call.name, call.arguments)

    async def run_all(self, calls: Sequence[ToolCall], *, run_id: str, step_id: str | None) -> list[ToolReturnMessage]:
        results = await asyncio.gather(*(self.run(c) for c in calls))
        return [returned(c.call_id, r, run_id=run_id, step_id=step_id) for c, r in zip(calls, results, strict=True)]

    async def resolve(
        self, approval: ApprovalCreate, waiting: Sequence[ApprovalRequestMessage], *, run_id: str
    ) -> list[ToolReturnMessage]:
        """The results of the calls an approval answers, in the order they were requested."""
        if not waiting:
            raise InvalidApprovalError("no tool call is waiting for approval in this conversation")
        decisions: dict[str, ApprovalReturn | ToolReturnCreate] = {d.tool_call_id: d for d in approval.approvals or ()}
        known = {w.tool_call.tool_call_id or "" for w in waiting}
        stray = sorted(set(decisions) - known)
        if stray:
            raise InvalidApprovalError(f"tool_call_id {stray} are not waiting; waiting: {sorted(known)}")
        out: list[ToolReturnMessage] = []
        for request in waiting:
            call_id = request.tool_call.tool_call_id or ""
            call = ToolCall(call_id, request.tool_call.name or "", request.tool_call.arguments or "")
            decision = decisions.get(call_id)
            if isinstance(decision, ToolReturnCreate):
                result = ToolResult(decision.status, decision.text())
            else:
                approve = decision.approve if decision is not None else approval.approve
                reason = (decision.reason if decision is not None else None) or approval.reason
                result = await self._decided(call, approve, reason)
            out.append(returned(call_id, result, run_id=run_id, step_id=request.step_id))
        return out

    async def _decided(self, call: ToolCall, approve: bool | None, reason: str | None) -> ToolResult:
        if approve is None:
            raise InvalidApprovalError(f"no decision for tool call {call.call_id} ({call.name})")
        if not approve:
            return ToolResult("error", f"the user denied this call{': ' + reason if reason else ''}")
        if self.is_client_tool(call.name):
            return ToolResult("error", f"{call.name} runs on the client: approving it is not enough, return its result")
        return await self.run(call)


def returned(call_id: str, result: ToolResult, *, run_id: str, step_id: str | None) -> ToolReturnMessage:
    return ToolReturnMessage(
        id=new_id("message"),
        run_id=run_id,
        step_id=step_id,
        tool_call_id=call_id,
        status=result.status,
        tool_return=result.text,
    )
