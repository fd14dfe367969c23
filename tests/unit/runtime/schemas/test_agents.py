"""``AgentRecord``: records stored before a field existed still load, and read back as Letta's
``AgentState`` with that field's default."""

from __future__ import annotations

import json

from runtime.schemas.agents import AgentRecord

# An agent as the code before memory blocks' flags and ``timezone`` stored it.
STORED_BEFORE = {
    "id": "agent-4f1c1c9e-3a52-4d7a-9d51-0c7a3e1d2b10",
    "tenant": "default",
    "name": "support",
    "model": "echo/echo",
    "system": "Be brief.",
    "memory_blocks": [{"label": "human", "value": "Ada", "description": None, "limit": 100}],
    "created_at": "2026-01-02T03:04:05+00:00",
    "updated_at": "2026-01-02T03:04:05+00:00",
}


def test_a_record_stored_before_block_flags_and_timezone_loads() -> None:
    state = AgentRecord.model_validate_json(json.dumps(STORED_BEFORE)).state()
    (block,) = state["blocks"]
    assert (block["label"], block["value"], block["limit"]) == ("human", "Ada", 100)
    assert (block["read_only"], block["metadata"], block["tags"], block["hidden"]) == (False, None, None, None)
    assert state["timezone"] is None
