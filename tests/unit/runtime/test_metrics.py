"""What a turn measures (``runtime.metrics``), without Redis or Ray: the step loop's model latency and
provider errors, the toolbox's tool calls, and the bound on model labels."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from runtime.agent.loop import run_turn
from runtime.errors import LLMEmptyResponseError, LLMRateLimitError
from runtime.metrics import OTHER_MODEL, UNREGISTERED_TOOL, ModelLabels, ModelMeter, Recorder, ToolOutcome
from runtime.providers.events import Finish, LLMEvent, TextDelta, ToolCallDelta, Usage
from runtime.providers.registry import Providers
from runtime.settings import Settings
from runtime.tools.registry import ToolRegistry
from tests.unit.runtime import turns


@dataclass
class Meter(ModelMeter):
    first: list[float] = field(default_factory=list)
    paces: list[tuple[float, float]] = field(default_factory=list)

    def first_token(self, seconds: float) -> None:
        self.first.append(seconds)

    def paced(self, per_token_s: float, longest_gap_s: float) -> None:
        self.paces.append((per_token_s, longest_gap_s))


class Recording(Recorder):
    """A recorder that keeps what it is told (the real interface, no exporter)."""

    def __init__(self) -> None:
        self.meters: dict[tuple[str, str], Meter] = {}
        self.errors: list[tuple[str, str]] = []
        self.tools: list[tuple[str, ToolOutcome, float]] = []

    def model(self, provider: str, model: str) -> ModelMeter:
        return self.meters.setdefault((provider, model), Meter())

    def provider_error(self, provider: str, error_type: str) -> None:
        self.errors.append((provider, error_type))

    def tool_call(self, tool: str, outcome: ToolOutcome, seconds: float) -> None:
        self.tools.append((tool, outcome, seconds))


async def test_a_step_records_its_first_token_and_once_ended_its_pace() -> None:
    metrics = Recording()
    agent = turns.agent()
    for words in ("one two three four", "alone"):
        await run_turn(
            turns.turn(words, stream_tokens=True),
            agent=agent,
            conversation=turns.conversation(agent),
            history=[],
            models=Providers(Settings(echo_delay_ms=5)).model,
            tools=ToolRegistry(),
            emit=turns.ignore,
            metrics=metrics,
        )
    meter = metrics.meters[("echo", "echo")]
    assert len(meter.first) == 2 and min(meter.first) >= 0, "a first token per response"
    # Two points per response, not one per token; a response of one content event has no pace.
    assert len(meter.paces) == 1, meter.paces
    ((per_token, longest),) = meter.paces
    assert 0.004 <= per_token <= longest, meter.paces  # the echo model's 5 ms between words
    assert metrics.errors == [] and metrics.tools == []


async def test_tool_calls_are_recorded_by_registered_name_and_outcome() -> None:
    registry = ToolRegistry()

    @registry.register
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    calls = [
        ToolCallDelta(0, "c1", "add", '{"a": 1, "b": 2}'),
        ToolCallDelta(1, "c2", "add", '{"a": "x"}'),
        ToolCallDelta(2, "c3", "invented_by_the_model", "{}"),
        Finish("tool_calls"),
    ]
    metrics = Recording()
    agent = turns.agent(tools=["add"])
    adapter = turns.Scripted(calls, [TextDelta("done"), Usage(), Finish("end_turn")])
    outcome = await run_turn(
        turns.turn("go", stream_tokens=True),
        agent=agent,
        conversation=turns.conversation(agent),
        history=[],
        models=lambda handle: turns.model(adapter),
        tools=registry,
        emit=turns.ignore,
        metrics=metrics,
    )
    assert outcome.stop_reason == "end_turn"
    assert sorted((tool, result) for tool, result, _ in metrics.tools) == [
        ("add", "invalid_arguments"),
        ("add", "success"),
        (UNREGISTERED_TOOL, "unavailable"),  # a name the model made up never becomes a label
    ]
    assert len(metrics.meters[("fake", "scripted")].first) == 2, "one first token per step"


@pytest.mark.parametrize(
    ("response", "error_type", "raised"),
    [
        (LLMRateLimitError("slow down"), "llm_rate_limit", LLMRateLimitError),
        ([Usage(), Finish("end_turn")], "llm_empty_response", LLMEmptyResponseError),
    ],
)
async def test_a_failed_model_call_is_counted_by_provider_and_error_type(
    response: list[LLMEvent] | Exception, error_type: str, raised: type[Exception]
) -> None:
    metrics = Recording()
    agent = turns.agent()
    with pytest.raises(raised):
        await run_turn(
            turns.turn("hi", stream_tokens=True),
            agent=agent,
            conversation=turns.conversation(agent),
            history=[],
            models=lambda handle: turns.model(turns.Scripted(response)),
            tools=ToolRegistry(),
            emit=turns.ignore,
            metrics=metrics,
        )
    assert metrics.errors == [("fake", error_type)]


def test_model_labels_are_bounded_per_process() -> None:
    labels = ModelLabels(limit=2)
    assert [labels("echo", "a"), labels("echo", "b"), labels("echo", "c"), labels("echo", "a")] == ["a", "b", OTHER_MODEL, "a"]
    assert labels("openai", "a") == OTHER_MODEL, "the bound counts (provider, model) pairs"


async def test_a_tool_that_outlives_its_timeout_is_a_timeout() -> None:
    registry = ToolRegistry()

    @registry.register(timeout_s=0.01)
    async def slow() -> str:
        """Never in time."""
        await asyncio.sleep(1)
        return "late"

    assert (await registry.run("slow", "{}")).outcome == "timeout"
    assert (await registry.run("missing", "{}")).outcome == "unavailable"
