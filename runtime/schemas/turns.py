"""What the API puts in a conversation's mailbox: one accepted turn, self-contained; and how a send
(``SendMessageRequest``) describes its turn (``turn_of``) and its run (``run_of``)."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from runtime.schemas.agents import ConversationRef
from runtime.schemas.messages import utcnow
from runtime.schemas.model_settings import ModelSettings
from runtime.schemas.requests import ClientSkill, ClientTool, SendMessageRequest, TurnMessage
from runtime.schemas.runs import RequestConfig, RunView


class TurnRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str
    agent_id: str
    conversation_id: str
    messages: list[TurnMessage]
    stream_tokens: bool = False
    max_steps: int = 50
    use_assistant_message: bool = True
    include_return_message_types: list[str] | None = None
    override_model: str | None = None
    client_tools: list[ClientTool] | None = None
    override_system: str | None = None
    client_skills: list[ClientSkill] | None = None
    model_settings: ModelSettings | None = None
    accepted_at_ns: int


def run_of(
    conversation: ConversationRef, body: SendMessageRequest, run_id: str, *, run_type: str | None, callback_url: str | None
) -> RunView:
    """The run a send starts, as it is first stored (``created``); ``run_type``: Letta's
    ``metadata.run_type``, by default what the send asked for (a stream or a whole answer)."""
    return RunView(
        id=run_id,
        agent_id=conversation.agent_id,
        conversation_id=conversation.id,
        tenant=conversation.tenant,
        status="created",
        background=body.background,
        created_at=utcnow(),
        metadata={"run_type": run_type or ("streaming" if body.streaming else "blocking")},
        callback_url=callback_url,
        request_config=RequestConfig(
            use_assistant_message=body.use_assistant_message,
            include_return_message_types=body.include_return_message_types,
        ),
    )


def turn_of(conversation: ConversationRef, body: SendMessageRequest, run_id: str) -> TurnRequest:
    """The turn a send asks of its conversation, accepted now."""
    return TurnRequest(
        run_id=run_id,
        agent_id=conversation.agent_id,
        conversation_id=conversation.id,
        messages=body.input_messages(),
        # A reply read whole is built from whole messages: token deltas are for streams only.
        stream_tokens=body.stream_tokens and body.streaming,
        max_steps=body.max_steps,
        use_assistant_message=body.use_assistant_message,
        include_return_message_types=body.include_return_message_types,
        override_model=body.override_model,
        client_tools=body.client_tools,
        override_system=body.override_system,
        client_skills=body.client_skills,
        model_settings=body.model_settings,
        accepted_at_ns=time.time_ns(),
    )
