"""Letta's message and stream item types, as Convoy sends and stores them.

Every item that goes on a run's stream carries ``seq_id`` (its position in the run, from 1) and
``run_id``, including ``ping``, ``stop_reason`` and ``usage_statistics``, so a client can resume
after any item it saw, not only after message items.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class WireItem(BaseModel):
    """Fields every stream item may carry."""

    model_config = ConfigDict(extra="ignore")

    run_id: str | None = None
    seq_id: int | None = None


class LettaMessage(WireItem):
    id: str
    date: datetime = Field(default_factory=utcnow)
    otid: str | None = None
    step_id: str | None = None
    name: str | None = None
    sender_id: str | None = None
    is_err: bool | None = None


class UserMessage(LettaMessage):
    message_type: Literal["user_message"] = "user_message"
    content: str | list[dict[str, Any]]


class SystemMessage(LettaMessage):
    message_type: Literal["system_message"] = "system_message"
    content: str


class AssistantMessage(LettaMessage):
    message_type: Literal["assistant_message"] = "assistant_message"
    content: str | list[dict[str, Any]]


class ReasoningMessage(LettaMessage):
    message_type: Literal["reasoning_message"] = "reasoning_message"
    reasoning: str
    source: Literal["reasoner_model", "non_reasoner_model"] = "reasoner_model"
    signature: str | None = None


class HiddenReasoningMessage(LettaMessage):
    """Reasoning the provider returned encrypted (``redacted``) or did not return (``omitted``)."""

    message_type: Literal["hidden_reasoning_message"] = "hidden_reasoning_message"
    state: Literal["redacted", "omitted"] = "redacted"
    hidden_reasoning: str | None = None


class ToolCall(BaseModel):
    """A tool call; in a streamed delta only the first piece has the name and id. ``signature``:
    the provider's signature of the call (Gemini's), sent back with it unchanged."""

    name: str | None = None
    arguments: str | None = None
    tool_call_id: str | None = None
    signature: str | None = None


class CallsMessage(LettaMessage):
    """Tool calls of one model response. As in Letta, one message per response and kind:
    ``tool_calls`` holds them all (parallel calls), ``tool_call`` the first (for clients that read
    only that). A token delta carries one piece of one call in ``tool_call``."""

    tool_call: ToolCall
    tool_calls: list[ToolCall] | None = None

    def calls(self) -> list[ToolCall]:
        """Every call the message holds (a message stored before ``tool_calls`` existed holds one)."""
        return list(self.tool_calls) if self.tool_calls else [self.tool_call]

    @property
    def calls_list(self) -> list[ToolCall]:
        """``tool_calls``, made a list when it is none yet (to add calls to a message being built)."""
        if self.tool_calls is None:
            self.tool_calls = [self.tool_call]
        return self.tool_calls


class ToolCallMessage(CallsMessage):
    """Calls Convoy runs itself (server tools)."""

    message_type: Literal["tool_call_message"] = "tool_call_message"


class ApprovalRequestMessage(CallsMessage):
    """Calls that wait for the client: approval of a server tool, or a client-side tool."""

    message_type: Literal["approval_request_message"] = "approval_request_message"


class ApprovalResponseMessage(LettaMessage):
    message_type: Literal["approval_response_message"] = "approval_response_message"
    approval_request_id: str | None = None
    approve: bool | None = None
    reason: str | None = None
    approvals: list[dict[str, Any]] | None = None


class ToolReturn(BaseModel):
    """One call's result (Letta's ``ToolReturn``)."""

    type: Literal["tool"] = "tool"
    tool_call_id: str
    status: Literal["success", "error"]
    tool_return: str
    stdout: list[str] | None = None
    stderr: list[str] | None = None


class ToolReturnMessage(LettaMessage):
    """The results of one step's calls. As in Letta, one message per step: ``tool_returns`` holds
    them all, and the top-level fields (which Letta's SDK requires) repeat the first."""

    message_type: Literal["tool_return_message"] = "tool_return_message"
    tool_return: str
    status: Literal["success", "error"]
    tool_call_id: str
    stdout: list[str] | None = None
    stderr: list[str] | None = None
    tool_returns: list[ToolReturn] | None = None

    def returns(self) -> list[ToolReturn]:
        """Every result the message holds (a message stored before ``tool_returns`` existed holds one)."""
        if self.tool_returns:
            return list(self.tool_returns)
        return [ToolReturn(tool_call_id=self.tool_call_id, status=self.status, tool_return=self.tool_return, stdout=self.stdout, stderr=self.stderr)]


class Ping(LettaMessage):
    message_type: Literal["ping"] = "ping"


class StopReasonItem(WireItem):
    message_type: Literal["stop_reason"] = "stop_reason"
    stop_reason: str


class UsageStatistics(WireItem):
    message_type: Literal["usage_statistics"] = "usage_statistics"
    completion_tokens: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    step_count: int = 0
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    run_ids: list[str] | None = None


class ErrorMessage(WireItem):
    message_type: Literal["error_message"] = "error_message"
    run_id: str
    error_type: str
    message: str
    detail: str | None = None


HistoryMessage = Annotated[
    UserMessage
    | SystemMessage
    | AssistantMessage
    | ReasoningMessage
    | HiddenReasoningMessage
    | ToolCallMessage
    | ApprovalRequestMessage
    | ApprovalResponseMessage
    | ToolReturnMessage,
    Field(discriminator="message_type"),
]
