"""What the model sees: the system prompt with memory blocks, and history cut to fit the window.

**Context-window policy.** Tokens are estimated at one per ``CHARS_PER_TOKEN`` characters of each
message (content, tool calls, reasoning, plus a little per message) (an over-estimate for English, so the budget errs on the safe side). The budget is
the agent's context window minus its output-token reserve: the agent's ``max_tokens``, else
``DEFAULT_OUTPUT_RESERVE`` but never more than a quarter of the window (so a small window still
leaves room for the prompt). If the system prompt and tool schemas
alone exceed it, the turn fails with ``context_window_overflow_in_system_prompt``. Otherwise the
oldest whole turns (a turn starts at a user message; tool calls stay with their results) are
dropped until the rest fits; the current turn is always kept. Nothing is deleted from the stored
history: the cut applies to what one request sends, and the step trace records how much was cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from runtime.errors import SystemPromptOverflowError
from runtime.providers.events import ChatMessage, ToolSpec
from runtime.schemas.agents import AgentRecord

CHARS_PER_TOKEN = 3
DEFAULT_OUTPUT_RESERVE = 4096


def render_system(agent: AgentRecord) -> str:
    """The system prompt, followed by the agent's memory blocks."""
    if not agent.memory_blocks:
        return agent.system
    parts = [agent.system, "", "<memory_blocks>"]
    for block in agent.memory_blocks:
        parts.append(f"<{block.label}>")
        if block.description:
            parts.append(f"<description>{block.description}</description>")
        parts.append(f"<value>{block.value}</value>")
        parts.append(f"</{block.label}>")
    parts.append("</memory_blocks>")
    return "\n".join(parts).strip()


def estimate(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


MESSAGE_OVERHEAD_CHARS = 24  # role, separators


def _cost(message: ChatMessage) -> int:
    chars = MESSAGE_OVERHEAD_CHARS + len(message.content)
    chars += sum(len(c.name) + len(c.arguments) + len(c.call_id) + MESSAGE_OVERHEAD_CHARS for c in message.tool_calls)
    chars += sum(len(r.text) + len(r.signature or "") + len(r.redacted or "") for r in message.reasoning)
    return chars // CHARS_PER_TOKEN + 1


def fit(
    system: str, tools: Sequence[ToolSpec], messages: Sequence[ChatMessage], *, window: int, reserve: int | None
) -> tuple[list[ChatMessage], int]:
    """``messages`` cut to the budget, oldest turns first; returns them and how many were dropped."""
    reserve = reserve or min(DEFAULT_OUTPUT_RESERVE, window // 4)
    budget = window - reserve
    fixed = estimate(system) + sum(estimate(json.dumps(asdict(t))) for t in tools)
    if fixed > budget:
        raise SystemPromptOverflowError(
            f"system prompt and tools need about {fixed} tokens; the budget is {budget} "
            f"(context window {window} minus {reserve} reserved for the answer)"
        )
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    costs = [_cost(m) for m in messages]
    total = fixed + sum(costs)
    cut = 0
    for start in starts:  # cut only at the start of a turn, and never past the current one
        if total <= budget:
            break
        if start > cut:
            total -= sum(costs[cut:start])
            cut = start
    return list(messages[cut:]), cut
