"""The run as the Letta API shows it (``GET /v1/runs/{id}``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.schemas.auth import DEFAULT_TENANT

RunStatus = Literal["created", "running", "completed", "failed", "cancelled"]

StopReason = Literal[
    "end_turn",
    "error",
    "llm_api_error",
    "invalid_llm_response",
    "invalid_tool_call",
    "max_steps",
    "max_tokens_exceeded",
    "no_tool_call",
    "tool_rule",
    "cancelled",
    "insufficient_credits",
    "requires_approval",
    "context_window_overflow_in_system_prompt",
]

# One table, used everywhere: which run status a stop reason ends in.
STATUS_FOR_STOP_REASON: dict[str, RunStatus] = {
    "end_turn": "completed",
    "max_steps": "completed",
    "max_tokens_exceeded": "completed",
    "tool_rule": "completed",
    "requires_approval": "completed",
    "cancelled": "cancelled",
    "error": "failed",
    "llm_api_error": "failed",
    "invalid_llm_response": "failed",
    "invalid_tool_call": "failed",
    "no_tool_call": "failed",
    "insufficient_credits": "failed",
    "context_window_overflow_in_system_prompt": "failed",
}


class RequestConfig(BaseModel):
    use_assistant_message: bool = True
    include_return_message_types: list[str] | None = None
    assistant_message_tool_name: str | None = None
    assistant_message_tool_kwarg: str | None = None


class RunView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    agent_id: str
    conversation_id: str
    status: RunStatus = "created"
    background: bool = False
    created_at: datetime
    completed_at: datetime | None = None
    stop_reason: StopReason | None = None
    metadata: dict[str, Any] | None = None
    request_config: RequestConfig | None = None
    ttft_ns: int | None = None
    total_duration_ns: int | None = None
    # Letta's async sends: where the result is POSTed once the run ends, and how that went.
    callback_url: str | None = None
    callback_sent_at: datetime | None = None
    callback_status_code: int | None = None
    callback_error: str | None = None
    # Convoy extensions (ignored by Letta clients): when the owner started the run, and which
    # activation (``<host>/<incarnation>``) ran it.
    started_at: datetime | None = None
    owner: str | None = None
    # Whose run it is; never shown (``exclude``), checked on every read (see ``RunStore.get``).
    tenant: str = Field(default=DEFAULT_TENANT, exclude=True)


class RunQuery(BaseModel):
    """Filters of ``GET /v1/runs`` (Letta's names)."""

    agent_id: str | None = None
    conversation_id: str | None = None
    statuses: list[RunStatus] | None = None
    active: bool | None = None
    background: bool | None = None
    stop_reason: StopReason | None = None
    limit: int = 50
    after: str | None = None
    before: str | None = None
    ascending: bool = False

    def matches(self, run: RunView) -> bool:
        if self.agent_id and run.agent_id != self.agent_id:
            return False
        if self.statuses and run.status not in self.statuses:
            return False
        if self.active is not None and (run.status in ("created", "running")) != self.active:
            return False
        if self.background is not None and run.background != self.background:
            return False
        return not (self.stop_reason and run.stop_reason != self.stop_reason)
