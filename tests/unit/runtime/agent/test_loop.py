"""The step loop, without Redis or Ray: the echo model through the real event path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic_core import to_json

from runtime.agent.loop import model_for, run_turn
from runtime.errors import InvalidRequestError, LLMEmptyResponseError
from runtime.ids import new_id, segment_otid
from runtime.providers.echo import EchoAdapter
from runtime.providers.events import Finish, LLMRequest, ResponseInfo, Usage
from runtime.providers.handles import split_handle
from runtime.providers.registry import Providers
from runtime.schemas.messages import AssistantMessage, UserMessage, WireItem
from runtime.settings import Settings
from runtime.tools.registry import ToolRegistry
from tests.unit.runtime import turns


async def test_echo_streams_word_deltas_sharing_one_id() -> None:
    emitted: list[WireItem] = []

    async def emit(item: WireItem) -> None:
        emitted.append(item)

    agent = turns.agent()
    turn = turns.turn("  hello   wide world ")
    outcome = await run_turn(
        turn,
        agent=agent,
        conversation=turns.conversation(agent),
        history=[],
        models=Providers(Settings(echo_delay_ms=0)).model,
        tools=ToolRegistry(),
        emit=emit,
    )
    assert all(isinstance(i, AssistantMessage) for i in emitted)
    assert "".join(i.content for i in emitted) == "  hello   wide world "  # type: ignore[attr-defined]
    assert len({i.id for i in emitted}) == 1 and len({i.otid for i in emitted}) == 1  # type: ignore[attr-defined]
    assert outcome.stop_reason == "end_turn"
    assert outcome.usage.completion_tokens == 3 and outcome.usage.step_count == 1
    user, assistant = outcome.new_messages
    assert isinstance(user, UserMessage) and user.otid == "client-otid"
    assert isinstance(assistant, AssistantMessage) and assistant.content == "  hello   wide world "
    assert outcome.ttft_ns is not None and outcome.ttft_ns > 0


async def test_step_streaming_emits_one_complete_message() -> None:
    emitted: list[WireItem] = []

    async def emit(item: WireItem) -> None:
        emitted.append(item)

    agent = turns.agent()
    await run_turn(
        turns.turn("a b c", stream_tokens=False),
        agent=agent,
        conversation=turns.conversation(agent),
        history=[],
        models=lambda h: turns.model(EchoAdapter(0)),
        tools=ToolRegistry(),
        emit=emit,
    )
    assert len(emitted) == 1 and emitted[0].content == "a b c"  # type: ignore[attr-defined]


async def test_a_model_that_says_nothing_is_an_empty_response_error() -> None:
    async def emit(item: WireItem) -> None:
        raise AssertionError("nothing to emit")

    silent = turns.Scripted([ResponseInfo("r", "x"), Usage(prompt_tokens=1), Finish("end_turn")])
    agent = turns.agent()
    with pytest.raises(LLMEmptyResponseError):
        await run_turn(
            turns.turn("hi"),
            agent=agent,
            conversation=turns.conversation(agent),
            history=[],
            models=lambda h: turns.model(silent),
            tools=ToolRegistry(),
            emit=emit,
        )


def test_model_precedence_request_then_conversation_then_agent() -> None:
    agent = turns.agent("echo/agent")
    conv = turns.conversation(agent, model="echo/conversation")
    assert model_for(turns.turn("x", override_model="echo/request"), conv, agent) == "echo/request"
    assert model_for(turns.turn("x"), conv, agent) == "echo/conversation"
    assert model_for(turns.turn("x"), turns.conversation(agent), agent) == "echo/agent"


def test_handles_and_otids() -> None:
    assert split_handle("openai/gpt-4o/mini") == ("openai", "gpt-4o/mini")
    assert Providers(Settings()).validate("echo/echo") == "echo/echo"
    mid = new_id("message")
    assert segment_otid(mid, 0) != segment_otid(mid, 1)
    assert segment_otid(mid, 1) == segment_otid(mid, 1)


NO_KEYS = {"openai_api_key": None, "anthropic_api_key": None, "gemini_api_key": None, "google_vertex_project": None}


def test_default_model_is_echo_without_keys() -> None:
    assert Settings(**NO_KEYS, google_genai_use_vertexai=False).resolved_default_model() == "echo/echo"


def test_provider_table_validates_handles_and_credentials() -> None:
    bare = Providers(Settings(**NO_KEYS, google_genai_use_vertexai=False))
    with pytest.raises(InvalidRequestError, match="set OPENAI_API_KEY"):
        bare.validate("openai/gpt-4o")
    with pytest.raises(InvalidRequestError, match="set ANTHROPIC_API_KEY"):
        bare.validate("anthropic/claude")
    with pytest.raises(InvalidRequestError, match="set GEMINI_API_KEY or GOOGLE_API_KEY"):
        bare.validate("google/gemini-2.5-flash")
    with pytest.raises(InvalidRequestError, match="known providers: echo, openai, openai-responses, anthropic, google"):
        bare.validate("vllm/llama")
    keyed = Providers(Settings(**{**NO_KEYS, "gemini_api_key": "gk"}, gemini_base_url="http://gemini.local"))
    model = keyed.model("google/gemini-2.5-flash")
    assert (model.provider, model.name, model.endpoint) == ("google", "gemini-2.5-flash", "http://gemini.local")
    vertex = Providers(Settings(**{**NO_KEYS, "google_vertex_project": "my-project"}))
    assert vertex.validate("google/gemini-2.5-pro") == "google/gemini-2.5-pro"
    local = Providers(Settings(providers={"vllm": {"base_url": "http://gpu:8000/v1"}}))
    assert local.validate("vllm/meta-llama/Llama-3.1-8B") == "vllm/meta-llama/Llama-3.1-8B"
    model = local.model("vllm/meta-llama/Llama-3.1-8B")
    assert (model.provider, model.name, model.endpoint) == ("vllm", "meta-llama/Llama-3.1-8B", "http://gpu:8000/v1")


def test_google_settings_read_the_sdks_own_variables() -> None:
    """GOOGLE_API_KEY wins over GEMINI_API_KEY (as in the SDK); GOOGLE_GENAI_USE_VERTEXAI switches to
    Vertex AI in GOOGLE_CLOUD_PROJECT; CONVOY_GOOGLE_VERTEX_PROJECT needs no switch."""
    code = (
        "from runtime.settings import Settings as S; s = S()\n"
        "print(s.gemini_api_key, s.gemini_base_url, s.vertex_project, s.google_vertex_location, s.resolved_default_model())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOY_", "GOOGLE_", "GEMINI_", "OPENAI_", "ANTHROPIC_"))}
    base = {**env, "GEMINI_API_KEY": "gemini-key", "GOOGLE_API_KEY": "google-key", "GOOGLE_GEMINI_BASE_URL": "http://g"}
    vertex = {**env, "GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": "proj", "GOOGLE_CLOUD_LOCATION": "europe-west4"}
    outs = [
        subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.split()
        for e in (base, vertex, {**env, "GOOGLE_CLOUD_PROJECT": "proj"}, {**env, "CONVOY_GOOGLE_VERTEX_PROJECT": "mine"})
    ]
    assert outs[0] == ["google-key", "http://g", "None", "None", "google/gemini-2.5-flash"]
    assert outs[1] == ["None", "None", "proj", "europe-west4", "google/gemini-2.5-flash"]
    assert outs[2][2] == "None" and outs[2][4] == "echo/echo"  # a project alone does not switch to Vertex AI
    assert outs[3][2] == "mine"


def test_a_compatible_provider_cannot_shadow_a_builtin_one() -> None:
    with pytest.raises(ValueError, match="built in"):
        Settings(providers={"openai": {"base_url": "http://x/v1"}})


class _BodyAdapter(EchoAdapter):
    """Echo's stream, with a request body of a provider whose history is ``contents`` (Gemini's shape)."""

    def __init__(self, contents: list[dict[str, object]]) -> None:
        super().__init__(0)
        self.contents = contents

    def payload(self, request: LLMRequest) -> dict[str, object]:  # type: ignore[override]
        return {"systemInstruction": {"parts": [{"text": "sys"}]}, "contents": self.contents}


@pytest.mark.parametrize(
    ("max_bytes", "kept"),
    [(0, None), (10_000, 3), (100_000, 8)],
    ids=["no-request", "newest-that-fit", "whole"],
)
async def test_a_trace_keeps_the_newest_messages_that_fit_its_bound(max_bytes: int, kept: int | None) -> None:
    contents = [{"role": "user", "parts": [{"text": f"{i} " + "y" * 3_000}]} for i in range(8)]
    traces: list[dict[str, object]] = []

    async def record_step(doc: dict[str, object]) -> None:
        traces.append(doc)

    async def emit(item: WireItem) -> None:
        pass

    agent = turns.agent()
    await run_turn(
        turns.turn("hi"),
        agent=agent,
        conversation=turns.conversation(agent),
        history=[],
        models=lambda h: turns.model(_BodyAdapter(contents)),
        tools=ToolRegistry(),
        emit=emit,
        record_step=record_step,
        trace_request_max_bytes=max_bytes,
    )
    (trace,) = [t["trace"] for t in traces]
    request = trace["request"]  # type: ignore[index]
    if kept is None:
        assert request is None
        return
    assert request["systemInstruction"] == {"parts": [{"text": "sys"}]}
    if kept == len(contents):
        assert request["contents"] == contents
        return
    marker, *newest = request["contents"]
    assert marker == {"convoy_elided_messages": len(contents) - kept} and newest == contents[-kept:]
    assert len(to_json(request)) <= max_bytes
