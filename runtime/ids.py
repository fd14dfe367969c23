"""Identifiers in Letta's shape: ``<kind>-<uuid4>``.

Ids are not secrets (tenants are isolated by ownership checks, not by unguessable ids); their
shape (the patterns below) is validated at the HTTP edge (``api/validation.py``), so a malformed
id is a clear 4xx, never a Redis key of arbitrary content.
"""

from __future__ import annotations

import uuid
from typing import Literal

Kind = Literal["agent", "conv", "run", "message", "step"]

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
AGENT_ID = rf"^agent-{_UUID}$"
CONVERSATION_ID = rf"^conv-{_UUID}$"
RUN_ID = rf"^run-{_UUID}$"
MESSAGE_ID = rf"^message-{_UUID}$"

def new_id(kind: Kind) -> str:
    return f"{kind}-{uuid.uuid4()}"


def segment_otid(message_id: str, index: int) -> str:
    """A stable otid for segment ``index`` of one model response (reasoning, text, tool call...).

    Deltas of one segment share it; the next segment gets the next index. Derived from the
    message id so every replica computes the same value.
    """
    raw = uuid.UUID(message_id.split("-", 1)[1])
    return str(uuid.UUID(int=(raw.int & ~0x7F) | (index & 0x7F)))
