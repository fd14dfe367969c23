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


class ApprovalReturn(BaseModel):
    """A decision on one pending tool call."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["approval"] = "approval"
    tool_call_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    approve: bool
    reason: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None


class ToolReturnCreate(BaseModel):
    """The result of a client-side tool, run by the client."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["tool"] = "tool"
    tool_call_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    tool_return: Text | list[TextPart]
    status: Literal["success", "error"] = "success"
    stdout: list[Text] | None = None
    stderr: list[Text] | None = None

    def text(self) -> str:
        return self.tool_return if isinstance(self.tool_return, str) else "".join(p.text for p in self.tool_return)


class ApprovalCreate(BaseModel):
    """Letta's answer to an ``approval_request_message``: approve or deny the pending calls, or
    return client-side tool results. ``approve``/``reason`` alone apply to every pending call."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["approval"]
    approval_request_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    approve: bool | None = None
    reason: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    approvals: Annotated[
        list[Annotated[ApprovalReturn | ToolReturnCreate, Field(discriminator="type")]], Field(max_length=MAX_MESSAGES)
    ] | None = None
    otid: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None

    @model_validator(mode="after")
    def _decides(self) -> ApprovalCreate:
        if self.approve is None and not self.approvals:
            raise ValueError("an approval needs 'approve' (true/false) or a list of 'approvals'")
        return self


class ClientTool(BaseModel):
    """A tool the client runs itself: calling it pauses the run until the client returns a result."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    parameters: dict[str, Any] | None = None


InputMessage = MessageCreate | ApprovalCreate


class SendMessageRequest(BaseModel):
    """Body of ``POST /v1/conversations/{id}/messages`` (and the agent-direct routes)."""

    model_config = ConfigDict(extra="ignore")

    messages: Annotated[list[InputMessage], Field(max_length=MAX_MESSAGES)] | None = None
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
    client_tools: Annotated[list[ClientTool], Field(max_length=128)] | None = None

    @model_validator(mode="after")
    def _has_input(self) -> SendMessageRequest:
        if self.messages and self.input is not None:
            raise ValueError("send either 'messages' or 'input', not both")
        if not self.messages and self.input is None:
            raise ValueError("send at least one message: 'messages' (a list) or 'input' (a string)")
        approvals = [m for m in self.messages or () if isinstance(m, ApprovalCreate)]
        if approvals and len(self.messages or ()) != 1:
            raise ValueError("an approval message must be sent alone")
        return self

    @property
    def approval(self) -> ApprovalCreate | None:
        first = self.messages[0] if self.messages else None
        return first if isinstance(first, ApprovalCreate) else None

    def input_messages(self) -> list[InputMessage]:
        if self.messages:
            return self.messages
        assert self.input is not None
        return [MessageCreate(role="user", content=self.input)]


class MemoryBlock(BaseModel):
    """A labelled block of text rendered into the agent's system prompt."""

    model_config = ConfigDict(extra="ignore")

    label: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[A-Za-z0-9_.-]+$")]
    value: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)]
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    limit: int | None = Field(default=None, ge=1)


ToolName = Annotated[str, Field(min_length=1, max_length=64)]


class CreateAgentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    system: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)] | None = None
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]], Field(max_length=64)] | None = None
    metadata: dict[str, Any] | None = None
    tools: Annotated[list[ToolName], Field(max_length=128)] | None = None
    memory_blocks: Annotated[list[MemoryBlock], Field(max_length=64)] | None = None
    context_window_limit: int | None = Field(default=None, ge=1_000, le=10_000_000)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


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
