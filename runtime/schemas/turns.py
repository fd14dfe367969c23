"""What the API puts in a conversation's mailbox: one accepted turn, self-contained."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from runtime.schemas.model_settings import ModelSettings
from runtime.schemas.requests import ClientSkill, ClientTool, TurnMessage


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
