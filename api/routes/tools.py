"""``/v1/tools``: the server tools agents may use (``CONVOY_TOOL_MODULES``), in Letta's ``Tool`` shape.

A Convoy tool is Python code registered with ``@tool`` in a module every process imports; its id
is ``tool-<name>``. Letta's routes that create, change or delete tools from source code sent over
HTTP are answered with a 400 that says how tools are added here: running code a request carries is
something Convoy does not do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from api.state import State
from runtime.errors import InvalidRequestError, NotFoundError
from runtime.tools.registry import Tool, ToolRegistry

router = APIRouter(prefix="/v1/tools", tags=["tools"])
ToolIdPath = Annotated[str, Path(max_length=80, description="tool-<name>")]
NO_TOOL_CODE = (
    "Convoy does not create or change tools from source code sent over HTTP: a tool is a Python function "
    "registered with @tool in a module named by CONVOY_TOOL_MODULES (see the README's Tools section), "
    "listed by GET /v1/tools"
)
CONVOY_TOOL_TYPE = "custom"  # a tool of the deployment's own code, in Letta's words
# Letta's ``ToolType`` words: what its ``tool_types`` filters take (a Convoy tool is only ever the first).
LETTA_TOOL_TYPES = (
    "custom", "letta_core", "letta_memory_core", "letta_multi_agent_core", "letta_sleeptime_core",
    "letta_voice_sleeptime_core", "letta_builtin", "letta_files_core", "external_langchain",
    "external_composio", "external_mcp",
)  # fmt: skip
MAX_FILTER_VALUES = 100


def tool_view(tool: Tool, *, requires_approval: bool | None = None) -> dict[str, Any]:
    """A tool as Letta's ``Tool``; ``requires_approval``: an agent's own choice, when it has one."""
    return {
        "id": f"tool-{tool.name}",
        "name": tool.name,
        "description": tool.description,
        "tool_type": CONVOY_TOOL_TYPE,
        "source_type": "python",
        "json_schema": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
        "args_json_schema": tool.parameters,
        "default_requires_approval": tool.requires_approval if requires_approval is None else requires_approval,
        "tags": [],
    }


def tool_of(registry: ToolRegistry, tool_id: str) -> Tool:
    """The tool ``tool_id`` names; 404 in Letta's words if none."""
    tool = registry.get(tool_id.removeprefix("tool-")) if tool_id.startswith("tool-") else None
    if tool is None:
        raise NotFoundError(f"Tool with id {tool_id} not found.")
    return tool


@router.get("", summary="List the registered server tools")
@router.get("/", include_in_schema=False)
async def list_tools(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    after: Annotated[str | None, Query(max_length=80)] = None,
    before: Annotated[str | None, Query(max_length=80)] = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    order_by: Literal["created_at"] = "created_at",
    name: Annotated[str | None, Query(max_length=80)] = None,
    names: Annotated[list[str] | None, Query()] = None,
    tool_ids: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    search: Annotated[str | None, Query(max_length=80)] = None,
    tool_types: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    exclude_tool_types: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    return_only_letta_tools: bool = False,
) -> list[dict[str, Any]]:
    """Every ``@tool`` of the configured modules: its name (what an agent's ``tools`` lists), its
    description and JSON schema as the model sees them, and whether a person approves each call.
    All were registered together when the server started, so their creation order is by name;
    paged as every Letta listing is (``page``).

    Letta's filters, each narrowing the list: ``name``/``names`` (exact names), ``tool_ids``,
    ``search`` (part of a name, any case), ``tool_types``/``exclude_tool_types`` (every Convoy tool
    is ``custom``), ``return_only_letta_tools`` (Letta's built-ins, ``letta_*``: Convoy has none,
    so it lists nothing). ``tool_ids`` and the type filters take repeated or comma-separated values."""
    wanted = {*(names or ()), *((name,) if name is not None else ())}
    ids = set(_words(tool_ids))
    types, excluded = _tool_types(tool_types, "tool_types"), _tool_types(exclude_tool_types, "exclude_tool_types")
    if return_only_letta_tools or (types and CONVOY_TOOL_TYPE not in types) or CONVOY_TOOL_TYPE in excluded:
        return []
    views = [
        tool_view(tool)
        for tool_name in sorted(state.tools.names())
        if (not wanted or tool_name in wanted)
        and (not ids or f"tool-{tool_name}" in ids)
        and (search is None or search.casefold() in tool_name.casefold())
        and (tool := state.tools.get(tool_name)) is not None
    ]
    return page(views, limit=limit, after=after, before=before, order=order)


def _words(values: list[str] | None) -> list[str]:
    """Repeated values, each of which may be a comma-separated list (Letta takes both)."""
    return [word.strip() for value in values or () for word in value.split(",") if word.strip()]


def _tool_types(values: list[str] | None, field: str) -> set[str]:
    """The tool types named; 400 for a word that is not one of Letta's ``ToolType``."""
    words = _words(values)
    unknown = [w for w in words if w not in LETTA_TOOL_TYPES]
    if unknown:
        raise InvalidRequestError(
            f"{field}: {unknown[0][:80]!r} is not a tool type; use one of {', '.join(LETTA_TOOL_TYPES)} "
            f"(every Convoy tool is {CONVOY_TOOL_TYPE!r})"
        )
    return set(words)


def page(
    views: list[dict[str, Any]], *, limit: int, after: str | None, before: str | None, order: Literal["asc", "desc"]
) -> list[dict[str, Any]]:
    """One page of a listing held in ``asc`` order: ``after``/``before`` are ids in the order asked
    for; a cursor that is not listed gives an empty page, so the SDK's auto-pagination, which asks
    for what comes after a page's last id, ends."""
    views = views[::-1] if order == "desc" else list(views)
    ids = [v["id"] for v in views]
    if after is not None:
        views = views[ids.index(after) + 1 :] if after in ids else []
    if before is not None:
        ids = [v["id"] for v in views]
        views = views[: ids.index(before)] if before in ids else []
    return views[:limit]


@router.get("/{tool_id}", summary="Get a registered server tool")
async def get_tool(tool_id: ToolIdPath, state: State) -> dict[str, Any]:
    return tool_view(tool_of(state.tools, tool_id))


@router.post("", include_in_schema=False)
@router.post("/", summary="Creating tools from source code: refused (see the module docstring)")
@router.put("/", summary="Upserting tools from source code: refused", include_in_schema=False)
@router.put("", include_in_schema=False)
async def create_tool() -> None:
    raise InvalidRequestError(NO_TOOL_CODE)


@router.patch("/{tool_id}", summary="Changing a tool: refused (see the module docstring)")
@router.delete("/{tool_id}", summary="Deleting a tool: refused (see the module docstring)")
async def change_tool(tool_id: ToolIdPath, state: State) -> None:
    tool_of(state.tools, tool_id)
    raise InvalidRequestError(NO_TOOL_CODE)
