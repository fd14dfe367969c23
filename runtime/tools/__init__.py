"""Server tools: what an agent may call (``registry``), and how one turn resolves its calls (``turn``).

The public API for tool modules (``CONVOY_TOOL_MODULES``) is ``from runtime.tools import tool``.
"""

from runtime.tools.registry import TOOLS, Tool, ToolRegistry, ToolResult, load, tool

__all__ = ["TOOLS", "Tool", "ToolRegistry", "ToolResult", "load", "tool"]
