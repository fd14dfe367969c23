"""What the model sees: the system prompt with memory blocks, and history cut to fit the window.

**Context-window policy.** Tokens are estimated at one per ``CHARS_PER_TOKEN`` characters of each
message (content, tool calls, reasoning, plus a little per message), an over-estimate for English,
so the budget errs on the safe side. The budget is the agent's context window minus its
output-token reserve: the agent's ``max_tokens``, else ``DEFAULT_OUTPUT_RESERVE`` but never more
than a quarter of the window (so a small window still leaves room for the prompt).

- If the system prompt and tool schemas alone exceed the budget, the turn fails with
  ``context_window_overflow_in_system_prompt``.
- Otherwise the oldest whole turns of the history are left out until the rest fits. A turn starts
  at a user message (tool calls stay with their results). **The current input is never cut**: a
  request of several user messages is one input, kept whole with everything after it.
- If the current input alone cannot fit, even counted generously (``LENIENT_CHARS_PER_TOKEN``,
  so an input that might fit is sent and left to the provider's own limit), the turn fails at once
  with ``context_window_overflow_in_input``, saying by how much.

Nothing is deleted from the stored history: the cut applies to what one request sends, and the
step trace records how much was cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from runtime.errors import InputOverflowError, SystemPromptOverflowError
from runtime.providers.events import ChatMessage, ToolSpec
from runtime.schemas.agents import AgentRecord
from runtime.schemas.requests import ClientSkill

CHARS_PER_TOKEN = 3
LENIENT_CHARS_PER_TOKEN = 4  # a generous count, for refusing only what cannot fit
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


def with_skills(system: str, skills: Sequence[ClientSkill]) -> str:
    """The system prompt of one request, with the client's skills listed after it (Letta's
    ``client_skills``: they are the request's, never stored)."""
    if not skills:
        return system
    lines = [system, "", "<available_skills>"]
    lines += [f"- {s.name}: {s.description} ({s.location})" for s in skills]
    lines.append("</available_skills>")
    return "\n".join(lines).strip()


def estimate(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


MESSAGE_OVERHEAD_CHARS = 24  # role, separators


def _chars(message: ChatMessage) -> int:
    chars = MESSAGE_OVERHEAD_CHARS + len(message.content)
    chars += sum(len(c.name) + len(c.arguments) + len(c.call_id) + MESSAGE_OVERHEAD_CHARS for c in message.tool_calls)
    chars += sum(len(r.text) + len(r.signature or "") + len(r.redacted or "") for r in message.reasoning)
    return chars


def fit(
    system: str,
    tools: Sequence[ToolSpec],
    messages: Sequence[ChatMessage],
    *,
    window: int,
    reserve: int | None,
    inputs: int = 1,
) -> tuple[list[ChatMessage], int]:
    """``messages`` cut to the budget, oldest turns first; returns them and how many were dropped.

    ``inputs``: how many of the trailing user messages are the current turn's input (0 when the
    turn goes on from an approval): the cut never reaches past the first of them."""
    reserve = reserve or min(DEFAULT_OUTPUT_RESERVE, window // 4)
    budget = window - reserve
    fixed = estimate(system) + sum(estimate(json.dumps(asdict(t))) for t in tools)
    if fixed > budget:
        raise SystemPromptOverflowError(
            f"system prompt and tools need about {fixed} tokens; the budget is {budget} "
            f"(context window {window} minus {reserve} reserved for the answer)"
        )
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    current = starts[-max(1, inputs)] if len(starts) >= max(1, inputs) else 0
    costs = [_chars(m) // CHARS_PER_TOKEN + 1 for m in messages]
    total = fixed + sum(costs)
    cut = 0
    for start in starts:  # cut only at the start of a turn, and never into the current input
        if total <= budget or start > current:
            break
        if start > cut:
            total -= sum(costs[cut:start])
            cut = start
    if total > budget and inputs:
        _check_input(messages[current : current + _span(messages, current, inputs)], budget - fixed, window, reserve, fixed)
    return list(messages[cut:]), cut


def _span(messages: Sequence[ChatMessage], start: int, inputs: int) -> int:
    """How many messages from ``start`` the ``inputs`` user messages of the current input take."""
    seen = 0
    for offset, message in enumerate(messages[start:]):
        seen += message.role == "user"
        if seen == inputs:
            return offset + 1
    return len(messages) - start


def _check_input(input_messages: Sequence[ChatMessage], room: int, window: int, reserve: int, fixed: int) -> None:
    need = sum(_chars(m) for m in input_messages) // LENIENT_CHARS_PER_TOKEN + 1
    if need > room:
        raise InputOverflowError(
            f"the input ({len(input_messages)} message{'s' if len(input_messages) != 1 else ''}) needs at least about "
            f"{need} tokens (counting {LENIENT_CHARS_PER_TOKEN} characters per token), {need - room} more than fit: the "
            f"context window of {window} tokens keeps {reserve} for the answer and about {fixed} for the system prompt "
            "and tools. Send less at once, or raise the agent's context_window_limit if the model allows more"
        )
