"""Id parameter types: ids are checked at the edge, so a malformed one is a 422 with a readable
message and never reaches Redis."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from runtime.errors import InvalidRequestError
from runtime.ids import AGENT_ID, CONVERSATION_ID, MESSAGE_ID, RUN_ID
from runtime.letta.targets import DEFAULT

AgentId = Annotated[str, Path(pattern=AGENT_ID, description="agent-<uuid4>")]
ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID, description="conv-<uuid4>")]
RunId = Annotated[str, Path(pattern=RUN_ID, description="run-<uuid4>")]
AgentIdQuery = Annotated[str, Query(pattern=AGENT_ID, description="agent-<uuid4>")]
ConversationIdQuery = Annotated[str, Query(pattern=CONVERSATION_ID, description="conv-<uuid4>")]
RunIdQuery = Annotated[str, Query(pattern=RUN_ID, description="run-<uuid4>")]
MessageIdQuery = Annotated[str, Query(pattern=MESSAGE_ID, description="message-<uuid4>")]
# Letta's multi-agent group, which Convoy does not have: a filter on one is refused (``no_groups``).
GroupIdQuery = Annotated[str | None, Query(max_length=80, description="refused: Convoy has no groups")]
# A conversation route's id in each form Letta takes (``runtime.letta.targets``).
ConversationPath = Annotated[
    str,
    Path(
        pattern=rf"^({CONVERSATION_ID[1:-1]}|{AGENT_ID[1:-1]}|{DEFAULT})$",
        description="conv-<uuid4>; or 'default' with agent_id, or (deprecated) agent-<uuid4>: the agent's own history",
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000)]


def no_groups(group_id: str | None) -> None:
    """400 for a ``group_id``: it names a Letta multi-agent group, and Convoy has none, so a listing
    narrowed to one would otherwise answer with every message."""
    if group_id is not None:
        raise InvalidRequestError(
            "group_id names a Letta multi-agent group, which Convoy does not have: leave it out to list the messages"
        )
