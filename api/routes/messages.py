"""``/v1/messages``: one message by id, whichever conversation of the caller's holds it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.auth import Caller
from api.state import State
from api.validation import MESSAGE_ID
from runtime.letta import listings

router = APIRouter(prefix="/v1/messages", tags=["messages"])


@router.get("/{message_id}", summary="Get a message: its parts, as the history listings show them")
async def get_message(
    message_id: Annotated[str, Path(pattern=MESSAGE_ID, description="message-<uuid4>")], state: State, caller: Caller
) -> list[dict[str, Any]]:
    """A list, as Letta's: a model response's parts (reasoning, text, tool calls) share one id. A
    conversation's system message (``runtime.letta.listings``) is read back too."""
    return await listings.message(state.history, state.agents, state.conversations, message_id, tenant=caller.tenant)
