"""Agents and conversations: what Convoy stores, and the Letta-shaped views it returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.providers.handles import split_handle
from runtime.schemas.auth import DEFAULT_TENANT
from runtime.schemas.model_settings import ModelSettings, letta_view
from runtime.schemas.requests import AGENT_TYPE, MemoryBlock

DEFAULT_CONTEXT_WINDOW = 128_000


class AgentRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str = DEFAULT_TENANT
    name: str
    model: str
    system: str = ""
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] | None = None
    tools: list[str] = Field(default_factory=list)
    memory_blocks: list[MemoryBlock] = Field(default_factory=list)
    context_window_limit: int | None = None
    max_tokens: int | None = None
    model_settings: ModelSettings | None = None
    timezone: str | None = None  # an IANA name, stored and shown only: the model is shown no time
    # Which tools a person approves, as this agent chose (tool name -> approves; Letta's
    # requires_approval tool rules), over each tool's own default.
    tool_approvals: dict[str, bool] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime

    @property
    def max_output_tokens(self) -> int | None:
        """The agent's output limit: its model settings', else its ``max_tokens``."""
        settings = self.model_settings
        return (settings.max_output_tokens if settings else None) or self.max_tokens

    @property
    def context_window(self) -> int:
        return self.context_window_limit or DEFAULT_CONTEXT_WINDOW

    def state(self, **extra: Any) -> dict[str, Any]:
        """The agent as Letta's ``AgentState`` (every field the SDK requires is present); ``extra``:
        fields only the caller can fill (from the tool registry, the runs, the history)."""
        provider, model_name = split_handle(self.model)
        blocks = [
            {"id": f"block-{self.id[6:]}-{b.label}", **b.model_dump(mode="json")} for b in self.memory_blocks
        ]
        return {
            "id": self.id,
            "name": self.name,
            "agent_type": AGENT_TYPE,
            "system": self.system,
            "description": self.description,
            "model": self.model,
            "llm_config": {
                "model": model_name,
                "handle": self.model,
                "model_endpoint_type": provider,
                "provider_name": provider,
                "context_window": self.context_window,
                "max_tokens": self.max_output_tokens,
            },
            "model_settings": letta_view(self.model_settings, provider, max_output_tokens=self.max_output_tokens),
            "memory": {"blocks": blocks, "file_blocks": [], "prompt_template": ""},
            "blocks": blocks,
            "sources": [],
            "tags": self.tags,
            "tools": [{"id": f"tool-{name}", "name": name, "tool_type": "custom"} for name in self.tools],
            "metadata": self.metadata,
            "timezone": self.timezone,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            **extra,
        }


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """What a conversation's id says for good: whose it is and which agent's (neither ever changes).
    Enough to accept a turn; the owner reads the records themselves."""

    id: str
    tenant: str
    agent_id: str


class ConversationRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    agent_id: str
    tenant: str = DEFAULT_TENANT
    summary: str | None = None
    description: str | None = None
    model: str | None = None
    model_settings: ModelSettings | None = None
    context_window_limit: int | None = None  # over the agent's, for this conversation's turns
    hidden: bool = False  # left out of listings (Letta's ``hidden``)
    archived: bool = False  # listed only when archived ones are asked for (``archive_status``)
    archived_at: datetime | None = None
    created_at: datetime
    updated_at: datetime

    def ref(self) -> ConversationRef:
        return ConversationRef(self.id, self.tenant, self.agent_id)

    @property
    def is_default(self) -> bool:
        """Whether this is its agent's default conversation (the agent's own history: its id is
        derived from the agent's, ``runtime.store.agents.default_conversation_id``)."""
        return self.id.removeprefix("conv-") == self.agent_id.removeprefix("agent-")

    def window_of(self, agent: AgentRecord) -> AgentRecord:
        """``agent`` as this conversation's turns see it: with the conversation's context window
        when it sets one."""
        if self.context_window_limit is None:
            return agent
        return agent.model_copy(update={"context_window_limit": self.context_window_limit})

    def view(self, *, last_message_at: datetime | None = None) -> dict[str, Any]:
        """The conversation as Letta's ``Conversation``."""
        view = self.model_dump(mode="json", exclude={"tenant", "model_settings", "hidden"})
        view["model_settings"] = self.model_settings.model_dump(mode="json", exclude_none=True) if self.model_settings else None
        view["last_message_at"] = last_message_at.isoformat() if last_message_at else None
        return view
