"""Server tools the test server loads (``CONVOY_TOOL_MODULES=tests.fakes.tools``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from pydantic import Field

from runtime.tools import tool

log = logging.getLogger("tests.fakes.tools")


@tool
def add(a: Annotated[int, Field(description="first addend")], b: int) -> int:
    """Add two integers.

    Longer explanation that is not part of the description."""
    return a + b


@tool
async def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


@tool(timeout_s=0.5)
async def sleepy(seconds: float) -> str:
    """Sleeps, longer than its timeout allows."""
    await asyncio.sleep(seconds)
    return "woke up"


@tool(requires_approval=True)
def transfer(amount: int, to: str) -> str:
    """Send money (a person approves each call)."""
    return f"sent {amount} to {to}"


@tool
def note(text: str) -> str:
    """Logs a line (in the thread a plain function runs in): what a turn logs says which turn it is."""
    log.info("note taken", extra={"note": text})
    return "noted"
