"""``/v1/agents/{id}/tools``: an agent's tools: list, attach, detach, and whether a person approves
each call (Letta's ``requires_approval`` rule, kept per agent over the tool's own default).

Changes apply from the agent's next turn (an owner reads its agent at the start of every turn).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict

from api.auth import Caller
from api.routes.agents import agent_state
from api.routes.tools import ToolIdPath, page, tool_of, tool_view
from api.state import State
from api.validation import AgentId
from runtime.errors import InvalidRequestError, NotFoundError
from runtime.schemas.agents import AgentRecord
from runtime.schemas.requests import ToolName

router = APIRouter(prefix="/v1/agents", tags=["agents"])


class ApprovalChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requires_approval: bool


@router.get("/{agent_id}/tools", summary="List the agent's tools")
async def list_agent_tools(
    agent_id: AgentId,
    state: State,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    after: Annotated[str | None, Query(max_length=80)] = None,
    before: Annotated[str | None, Query(max_length=80)] = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    order_by: Literal["created_at"] = "created_at",
) -> list[dict[str, Any]]:
    """In the order they were attached, newest first unless ``order=asc``; ``after``/``before``: tool
    ids (Letta's defaults: 10 a page, newest first). ``order_by``: only ``created_at``, as Letta's."""
    agent = await state.agents.get(agent_id, tenant=caller.tenant)
    views = [
        tool_view(tool, requires_approval=agent.tool_approvals.get(name, tool.requires_approval))
        for name in agent.tools
        if (tool := state.tools.get(name)) is not None
    ]
    return page(views, limit=limit, after=after, before=before, order=order)


@router.patch("/{agent_id}/tools/attach/{tool_id}", summary="Attach a tool to the agent")
async def attach_tool(agent_id: AgentId, tool_id: ToolIdPath, state: State, caller: Caller) -> dict[str, Any]:
    """The agent as it is now (attaching a tool it has changes nothing)."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    name = tool_of(state.tools, tool_id).name
    agent = await state.agents.modify(agent_id, lambda a: {} if name in a.tools else {"tools": [*a.tools, name]})
    return await agent_state(state, agent)


@router.patch("/{agent_id}/tools/detach/{tool_id}", summary="Detach a tool from the agent")
async def detach_tool(agent_id: AgentId, tool_id: ToolIdPath, state: State, caller: Caller) -> dict[str, Any]:
    """The agent as it is now; its choice about approving the tool goes with it."""
    await state.agents.get(agent_id, tenant=caller.tenant)
    name = tool_of(state.tools, tool_id).name

    def detached(agent: AgentRecord) -> dict[str, Any]:
        approvals = {tool: v for tool, v in agent.tool_approvals.items() if tool != name}
        return {"tools": [t for t in agent.tools if t != name], "tool_approvals": approvals}

    return await agent_state(state, await state.agents.modify(agent_id, detached))


@router.patch("/{agent_id}/tools/approval/{tool_name}", summary="Set whether a person approves each call of a tool")
async def update_approval(
    agent_id: AgentId,
    tool_name: ToolName,
    state: State,
    caller: Caller,
    body: Annotated[ApprovalChange | None, Body()] = None,
    requires_approval: Annotated[bool | None, Query(deprecated=True)] = None,
) -> dict[str, Any]:
    """``{"requires_approval": bool}`` (or, deprecated, the query parameter): from the agent's next
    turn on, calls of the tool wait for a person's approval, or run without it."""
    value = body.requires_approval if body is not None else requires_approval
    if value is None:
        raise InvalidRequestError("requires_approval must be provided either in request body or as query parameter")
    await state.agents.get(agent_id, tenant=caller.tenant)

    def approved(agent: AgentRecord) -> dict[str, Any]:
        if tool_name not in agent.tools:
            raise NotFoundError(f"Tool '{tool_name}' not found or not attached to agent '{agent_id}'")
        return {"tool_approvals": {**agent.tool_approvals, tool_name: value}}

    return await agent_state(state, await state.agents.modify(agent_id, approved))
