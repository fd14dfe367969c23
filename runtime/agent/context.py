"""What the model sees: the system prompt with memory blocks, and history cut to fit the window.

**Context-window policy.** Tokens are estimated at one per ``CHARS_PER_TOKEN`` characters of each
message (content, tool calls, reasoning, plus a little per message), an over-estimate for English,
so the budget errs on the safe side. The budget is the agent's context window minus its
output-token reserve: the agent's ``max_tokens``, else ``DEFAULT_OUTPUT_RESERVE`` but never more
than a quarter of the window (so a small window still leaves room for the prompt).

- If the system prompt and tool schemas alone exceed the budget, the turn fails with
  ``context_window_overflow_in_system_prompt``.
- A request starts at a user message: a head the history window cut out of its turn (a tool
  result without its call, the model's call or answer) is left out whatever the budget (``_head``).
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
from typing import Any

from runtime.agent.prompt import to_chat
from runtime.errors import InputOverflowError, SystemPromptOverflowError
from runtime.providers.events import ChatMessage, ToolSpec
from runtime.schemas.agents import AgentRecord
from runtime.schemas.messages import HistoryMessage, UserMessage
from runtime.schemas.requests import ClientSkill

# How many past messages a turn reads to show the model (the window is then cut to fit, above).
HISTORY_WINDOW = 1000
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
    cut = _head(messages, starts)
    total = fixed + sum(costs[cut:])
    for start in starts:  # cut only at the start of a turn, and never into the current input
        if total <= budget or start > current:
            break
        if start > cut:
            total -= sum(costs[cut:start])
            cut = start
    if total > budget and inputs:
        _check_input(messages[current : current + _span(messages, current, inputs)], budget - fixed, window, reserve, fixed)
    return list(messages[cut:]), cut


def _head(messages: Sequence[ChatMessage], starts: Sequence[int]) -> int:
    """Where a request may start: at its first user message. The history window
    (``HISTORY_WINDOW`` stored messages) can begin inside a turn, at a tool result whose call it
    left out or at the model's call or answer; every provider refuses such a head (OpenAI: a
    ``tool`` message with no ``tool_calls`` before it; Anthropic: a ``tool_result`` for an unknown
    ``tool_use_id``; Gemini: a function call or response not right after a user turn), so the rest
    of that turn is left out, as an over-budget cut would leave it. Only a window with no user
    message at all (one turn longer than the window) starts at its first non-tool message."""
    if starts:
        return starts[0]
    return next((i for i, m in enumerate(messages) if m.role != "tool"), len(messages))


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


def overview(agent: AgentRecord, tools: Sequence[ToolSpec], history: Sequence[HistoryMessage]) -> dict[str, Any]:
    """What the agent's next request would hold, counted as the cut above counts it: Letta's
    ``ContextWindowOverview`` (``GET /v1/agents/{id}/context``). ``history``: the messages a turn
    reads (``HISTORY_WINDOW``); those the cut would leave out are not in ``messages``."""
    system = render_system(agent)
    core = system.removeprefix(agent.system).strip()
    chat = to_chat(history)
    try:
        kept, cut = fit(system, tools, chat, window=agent.context_window, reserve=agent.max_output_tokens, inputs=0)
    except SystemPromptOverflowError:
        kept, cut = [], len(chat)
    users_cut = sum(m.role == "user" for m in chat[:cut])
    starts = [i for i, m in enumerate(history) if isinstance(m, UserMessage)]
    first = starts[users_cut] if cut and users_cut < len(starts) else (len(history) if cut else 0)
    functions = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]
    tokens_system = estimate(agent.system)
    tokens_core = estimate(core) if core else 0
    tokens_functions = sum(estimate(json.dumps(f)) for f in functions)
    tokens_messages = sum(_chars(m) // CHARS_PER_TOKEN + 1 for m in kept)
    return {
        "context_window_size_max": agent.context_window,
        "context_window_size_current": tokens_system + tokens_core + tokens_functions + tokens_messages,
        "num_messages": len(history) - first,
        "num_archival_memory": 0,
        "num_recall_memory": len(history),
        "num_tokens_external_memory_summary": 0,
        "external_memory_summary": "",
        "num_tokens_system": tokens_system,
        "system_prompt": agent.system,
        "num_tokens_core_memory": tokens_core,
        "core_memory": core,
        "num_tokens_summary_memory": 0,
        "summary_memory": None,
        "num_tokens_functions_definitions": tokens_functions,
        "functions_definitions": [{"type": "function", "function": f} for f in functions],
        "num_tokens_messages": tokens_messages,
        "messages": [m.model_dump(mode="json", exclude_none=True) for m in history[first:]],
    }
