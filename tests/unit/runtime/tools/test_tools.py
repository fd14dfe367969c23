"""Tool registry and the context-window policy, without I/O."""

from __future__ import annotations

import pytest

from runtime.agent.context import fit, render_system
from runtime.errors import InputOverflowError, InvalidRequestError, SystemPromptOverflowError
from runtime.ids import new_id
from runtime.providers.events import ChatMessage
from runtime.schemas.agents import AgentRecord
from runtime.schemas.messages import utcnow
from runtime.schemas.requests import MemoryBlock
from runtime.tools.registry import ToolRegistry


async def test_schema_from_type_hints_and_results_for_every_failure() -> None:
    registry = ToolRegistry()

    @registry.register(timeout_s=0.2)
    def scale(values: list[float], factor: float = 2.0) -> list[float]:
        """Multiply values.

        Details the model does not need."""
        return [v * factor for v in values]

    tool = registry.get("scale")
    assert tool is not None and tool.description == "Multiply values."
    assert tool.parameters["required"] == ["values"] and tool.parameters["properties"]["factor"]["default"] == 2.0
    assert (await registry.run("scale", '{"values": [1, 2]}')).text == "[2.0, 4.0]"
    assert (await registry.run("scale", '{"values": [1], "extra": 1}')).status == "error"  # unknown argument
    assert (await registry.run("scale", "not json")).status == "error"
    assert "not available" in (await registry.run("missing", "{}")).text
    with pytest.raises(InvalidRequestError, match=r"\['nope'\]"):
        registry.check(["scale", "nope"])


def _chat(n: int, size: int) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for i in range(n):
        out += [ChatMessage("user", f"u{i} " + "x" * size), ChatMessage("assistant", f"a{i} " + "y" * size)]
    return out


def test_fit_drops_whole_old_turns_and_keeps_the_current_one() -> None:
    chat = _chat(10, 300)
    kept, dropped = fit("sys", (), chat, window=1_000, reserve=100)
    assert dropped > 0 and dropped % 2 == 0, "cuts fall on turn boundaries"
    assert kept[0].role == "user" and kept[-1].content.startswith("a9")
    everything, none = fit("sys", (), chat, window=100_000, reserve=100)
    assert none == 0 and everything == chat
    # an input that fits only if counted generously is sent whole, and left to the provider's limit
    tight = [*chat, ChatMessage("user", "y" * 3_000)]
    assert fit("sys", (), tight, window=1_000, reserve=100)[0] == tight[-1:]
    with pytest.raises(SystemPromptOverflowError):
        fit("s" * 10_000, (), chat, window=1_000, reserve=100)


def test_fit_never_cuts_into_the_current_input_and_refuses_one_that_cannot_fit() -> None:
    history = _chat(4, 300)
    inputs = [ChatMessage("user", f"part {i} " + "x" * 1_000) for i in range(3)]
    # the three parts overrun the budget at the policy's count, but might fit: all are sent, no history
    kept, dropped = fit("sys", (), [*history, *inputs], window=1_100, reserve=100, inputs=3)
    assert kept == inputs and dropped == len(history), "all of a three-message input is sent, the history is not"
    with pytest.raises(InputOverflowError) as refused:
        fit("sys", (), [*history, *inputs], window=800, reserve=100, inputs=3)
    assert "3 messages" in refused.value.detail and "more than fit" in refused.value.detail
    # an approval's continuation (no new input) keeps its whole turn and is never refused here
    assert fit("sys", (), inputs, window=600, reserve=100, inputs=0)[0] == inputs[-1:]


def test_memory_blocks_are_rendered_into_the_system_prompt() -> None:
    now = utcnow()
    agent = AgentRecord(
        id=new_id("agent"), name="a", model="echo/echo", system="Be kind.", created_at=now, updated_at=now,
        memory_blocks=[MemoryBlock(label="persona", value="I am Sam.", description="who I am")],
    )
    text = render_system(agent)
    assert text.startswith("Be kind.") and "<persona>" in text and "<value>I am Sam.</value>" in text
