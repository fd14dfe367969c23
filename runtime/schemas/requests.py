"""Request bodies of the Letta API, validated at the edge.

Only what Convoy acts on is modelled strictly; fields the Letta SDK may send that Convoy does not
implement yet are accepted and ignored (``extra="ignore"``) so an unchanged SDK keeps working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TEXT_CHARS = 1_000_000
MAX_MESSAGES = 256
MAX_PARTS = 256
MAX_NAME_CHARS = 256
MAX_SYSTEM_CHARS = 200_000

OnBusy = Literal["queue", "reject", "interrupt"]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: Text


class MessageCreate(BaseModel):
    """One input message (Letta's ``MessageCreate``)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] | None = None
    role: Literal["user", "system", "assistant"] = "user"
    content: Text | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_PARTS)]
    otid: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    sender_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SendMessageRequest(BaseModel):
    """Body of ``POST /v1/conversations/{id}/messages`` (and the agent-direct routes)."""

    model_config = ConfigDict(extra="ignore")

    messages: Annotated[list[MessageCreate], Field(max_length=MAX_MESSAGES)] | None = None
    input: Text | Annotated[list[TextPart], Field(max_length=MAX_PARTS)] | None = None
    streaming: bool = True
    stream_tokens: bool = True
    include_pings: bool = True
    background: bool = False
    max_steps: int = Field(default=50, ge=1, le=1000)
    use_assistant_message: bool = True
    include_return_message_types: list[str] | None = None
    override_model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    agent_id: str | None = None
    on_busy: OnBusy = "queue"

    @model_validator(mode="after")
    def _has_input(self) -> SendMessageRequest:
        if self.messages and self.input is not None:
            raise ValueError("send either 'messages' or 'input', not both")
        if not self.messages and self.input is None:
            raise ValueError("send at least one message: 'messages' (a list) or 'input' (a string)")
        return self

    def input_messages(self) -> list[MessageCreate]:
        if self.messages:
            return self.messages
        assert self.input is not None
        return [MessageCreate(role="user", content=self.input)]


class CreateAgentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    system: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)] | None = None
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]], Field(max_length=64)] | None = None
    metadata: dict[str, Any] | None = None


class CreateConversationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    summary: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None


MAX_SEQ = 2**53  # larger cursors are nonsense, and are refused as such


class ResumeRequest(BaseModel):
    """Body of ``POST /v1/runs/{id}/stream`` and ``POST /v1/conversations/{id}/stream``."""

    model_config = ConfigDict(extra="ignore")

    starting_after: int = Field(default=0, ge=0, le=MAX_SEQ, description="the last seq_id the client has")
    include_pings: bool = True
    run_id: str | None = Field(default=None, pattern=r"^run-[0-9a-f-]{36}$")
    otid: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    agent_id: str | None = None
    poll_interval: float | None = None  # accepted for Letta compatibility; Convoy pushes, it does not poll
    batch_size: int | None = None  # idem


class CancelRunsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_ids: Annotated[list[Annotated[str, Field(pattern=r"^run-[0-9a-f-]{36}$")]], Field(max_length=1000)] | None = None
