"""``/v1/tools``: the server tools agents may use (``CONVOY_TOOL_MODULES``), in Letta's ``Tool`` shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.state import State

router = APIRouter(prefix="/v1/tools", tags=["tools"])


@router.get("", summary="List the registered server tools")
@router.get("/", include_in_schema=False)
async def list_tools(state: State) -> list[dict[str, Any]]:
    """Every ``@tool`` of the configured modules: its name (what an agent's ``tools`` lists), its
    description and JSON schema as the model sees them, and whether a person approves each call."""
    found = []
    for name in state.tools.names():
        tool = state.tools.get(name)
        assert tool is not None
        found.append(
            {
                "id": f"tool-{tool.name}",
                "name": tool.name,
                "description": tool.description,
                "tool_type": "custom",
                "json_schema": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
                "default_requires_approval": tool.requires_approval,
            }
        )
    return found
