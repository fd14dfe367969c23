"""Id parameter types: ids are checked at the edge, so a malformed one is a 422 with a readable
message and never reaches Redis."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
AGENT_ID = rf"^agent-{_UUID}$"
CONVERSATION_ID = rf"^conv-{_UUID}$"
RUN_ID = rf"^run-{_UUID}$"
MESSAGE_ID = rf"^message-{_UUID}$"

AgentId = Annotated[str, Path(pattern=AGENT_ID, description="agent-<uuid4>")]
ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID, description="conv-<uuid4>")]
RunId = Annotated[str, Path(pattern=RUN_ID, description="run-<uuid4>")]
AgentIdQuery = Annotated[str, Query(pattern=AGENT_ID, description="agent-<uuid4>")]
ConversationIdQuery = Annotated[str, Query(pattern=CONVERSATION_ID, description="conv-<uuid4>")]
RunIdQuery = Annotated[str, Query(pattern=RUN_ID, description="run-<uuid4>")]
MessageIdQuery = Annotated[str, Query(pattern=MESSAGE_ID, description="message-<uuid4>")]
Limit = Annotated[int, Query(ge=1, le=1000)]
# ASCII digits only: str.isdigit() also accepts "²" and "１", which int() then refuses.
