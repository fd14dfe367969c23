"""Provider adapters end to end: Convoy's HTTP API -> conversation actor -> real openai/anthropic/google-genai
SDK -> a local server speaking each provider's wire format (``bench/upstream/``, ``bench/upstream/gemini.py``).

Every test scripts the fake under its own model name, so tests never see each other's traffic.
The session server runs with short provider deadlines and one retry of each kind (conftest).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from bench import upstream as fp
from bench.upstream import gemini as fg
from tests.conftest import Convoy, eventually


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Turn:
    run_id: str
    items: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    done: bool
    run: dict[str, Any]

    def of(self, message_type: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i.get("message_type") == message_type]

    @property
    def text(self) -> str:
        return "".join(i["content"] for i in self.of("assistant_message"))

    def returns(self) -> list[dict[str, Any]]:
        """Every tool result, in order (each step's results are one message's ``tool_returns``)."""
        return [r for m in self.of("tool_return_message") for r in m["tool_returns"]]

    @property
    def stop_reason(self) -> str:
        return self.of("stop_reason")[-1]["stop_reason"]


async def conversation(client: httpx.AsyncClient, model: str, **conv: Any) -> str:
    agent = (await client.post("/v1/agents", json={"name": "p", "model": model, "system": "Be brief."})).json()
    reply = await client.post("/v1/conversations", params={"agent_id": agent["id"]}, json=conv or None)
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]


async def send(client: httpx.AsyncClient, conv: str, text: str = "hello", **body: Any) -> Turn:
    payload = {"messages": [{"role": "user", "content": text}], **body}
    items: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    done = False
    async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json=payload) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                done = True
                continue
            doc = json.loads(event.data)
            (errors if event.event == "error" else items).append(doc)
    run_id = items[0]["run_id"]
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    return Turn(run_id, items, errors, done, run)


async def one_turn(client: httpx.AsyncClient, handle: str, text: str = "hello", **body: Any) -> Turn:
    return await send(client, await conversation(client, handle), text, **body)


async def steps(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    reply = await client.get(f"/v1/runs/{run_id}/steps")
    assert reply.status_code == 200, reply.text
    return reply.json()


def calls(fake: fp.FakeProvider, model: str, n: int) -> list[fp.Call]:
    return fake.wait_calls(model, n, timeout_s=10)


# -- OpenAI Chat Completions and compatible servers ------------------------------------------------


def _one_message_of_deltas(deltas: list[dict[str, Any]], text: str) -> None:
    """Token deltas of one message (one id, one otid), each under its own seq_id, adding up to
    ``text``. Deltas that reach the host together may come as one item (``runtime.stream.writer``)."""
    assert deltas and len({d["id"] for d in deltas}) == 1 and len({d["otid"] for d in deltas}) == 1
    assert "".join(d["content"] for d in deltas) == text
    assert len({d["seq_id"] for d in deltas}) == len(deltas)


async def test_tokens_that_come_apart_are_streamed_apart(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.paced(fp.chat_text(model, ["Hel", "lo", " wörld", "!"]), 0.1)))

    turn = await one_turn(client, f"openai/{model}", "say hello", stream_tokens=True)

    assert [d["content"] for d in turn.of("assistant_message")] == ["Hel", "lo", " wörld", "!"]


async def test_a_long_conversations_trace_keeps_its_newest_messages_within_the_bound(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    """A step's trace keeps the request it sent up to CONVOY_TRACE_REQUEST_MAX_BYTES (16 KiB by
    default): past it, the system prompt and the newest messages that fit, the older ones counted
    by a marker. The provider still receives the whole history."""
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["ok"])), repeat=True)
    conv = await conversation(client, f"openai/{model}")
    said = [f"{i} " + "x" * 6_000 for i in range(4)]  # 24 KB of history by the fourth turn
    for text in said:
        turn = await send(client, conv, text)
        assert turn.stop_reason == "end_turn" and not turn.errors

    first, *_, last = calls(fake_provider, model, len(said))
    assert first.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": said[0]}]
    assert [m["content"] for m in last.body["messages"] if m["role"] == "user"] == said  # sent whole
    (step,) = await steps(client, turn.run_id)
    kept = step["trace"]["request"]
    assert len(json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode()) <= 16 * 1024
    system, marker, *newest = kept["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert newest == last.body["messages"][len(last.body["messages"]) - len(newest) :]
    assert newest[-1] == {"role": "user", "content": said[-1]} and len(newest) >= 2
    assert marker == {"convoy_elided_messages": len(last.body["messages"]) - 1 - len(newest)} and marker["convoy_elided_messages"] > 0
    assert {k: v for k, v in kept.items() if k != "messages"} == {k: v for k, v in last.body.items() if k != "messages"}
    runs = (await client.get("/v1/runs", params={"conversation_id": conv, "order": "asc"})).json()
    (step,) = await steps(client, runs[0]["id"])
    assert step["trace"]["request"] == first.body  # under the bound: whole


async def test_openai_chat_tokens_usage_and_a_trace(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    frames = fp.chat_text(model, ["Hel", "lo", " wörld", "!"], usage=fp.Usage(20, 9, cached_tokens=8, reasoning_tokens=3))
    fake_provider.script(model, fp.Stream(fp.split_frames(fp.with_keepalives(frames), every=7)))

    turn = await one_turn(client, f"openai/{model}", "say hello", stream_tokens=True)

    assert turn.text == "Hello wörld!"
    _one_message_of_deltas(turn.of("assistant_message"), "Hello wörld!")
    assert turn.stop_reason == "end_turn" and turn.done and not turn.errors
    usage = turn.of("usage_statistics")[0]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (20, 9, 29)
    assert usage["cached_input_tokens"] == 8 and usage["reasoning_tokens"] == 3
    assert turn.run["status"] == "completed" and turn.run["ttft_ns"] > 0

    (call,) = fake_provider.calls(model)
    assert call.path == "/v1/chat/completions" and call.headers["authorization"] == "Bearer sk-test-openai"
    assert call.body["stream"] is True and call.body["stream_options"] == {"include_usage": True}
    assert call.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "say hello"}]

    (step,) = await steps(client, turn.run_id)
    assert step["status"] == "success" and step["provider_name"] == "openai" and step["model"] == model
    assert step["prompt_tokens"] == 20 and step["cached_input_tokens"] == 8
    trace = step["trace"]
    assert trace["request"]["messages"] == call.body["messages"]
    assert trace["response"]["text"] == "Hello wörld!" and trace["response"]["finish_reason"] == "end_turn"
    assert trace["ttft_ms"] > 0 and trace["latency_ms"] >= trace["ttft_ms"] and trace["attempts"] == 1


async def test_compatible_server_reasoning_then_text_are_two_segments_of_one_message(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("llama")
    fake_provider.script(
        model, fp.Stream(fp.chat_text(model, ["4"], reasoning=["2+2", " is 4"], include_usage_chunk=False))
    )
    turn = await one_turn(client, f"compat/{model}", "2+2?")

    reasoning = turn.of("reasoning_message")
    assert "".join(r["reasoning"] for r in reasoning) == "2+2 is 4"
    assert turn.text == "4"
    answer = turn.of("assistant_message")[0]
    assert reasoning[0]["id"] == answer["id"] and reasoning[0]["otid"] != answer["otid"]
    assert turn.of("usage_statistics")[0]["completion_tokens"] == 7
    (call,) = fake_provider.calls(model)
    assert call.path == "/compat/v1/chat/completions"


async def test_step_streaming_sends_whole_messages(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["a", "b", "c"], reasoning=["r1", "r2"])))
    turn = await one_turn(client, f"compat/{model}", stream_tokens=False)
    said = [i for i in turn.items if i["message_type"] != "ping"]  # keepalives come when the machine is slow
    assert [(i["message_type"], i.get("reasoning") or i.get("content")) for i in said[:2]] == [
        ("reasoning_message", "r1r2"),
        ("assistant_message", "abc"),
    ]


async def test_parallel_tool_calls_continue_the_loop_with_tool_results(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    calls_ = [("call_1", "get_weather", '{"city":', ' "Paris"}'), ("call_2", "get_time", "{}")]
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, calls_, interleave=True)),
        fp.Stream(fp.chat_text(model, ["No tools here."])),
    )
    turn = await one_turn(client, f"openai/{model}", "weather?", stream_tokens=True)

    tool_calls: dict[str, dict[str, str]] = {}
    for item in turn.of("tool_call_message"):
        call = item["tool_call"]
        entry = tool_calls.setdefault(item["otid"], {"name": "", "arguments": ""})
        entry["name"] = call.get("name") or entry["name"]
        entry["arguments"] += call.get("arguments") or ""
    assert sorted((c["name"], json.loads(c["arguments"])) for c in tool_calls.values()) == [
        ("get_time", {}),
        ("get_weather", {"city": "Paris"}),
    ]
    returns = turn.returns()
    assert [(r["tool_call_id"], r["status"]) for r in returns] == [("call_1", "error"), ("call_2", "error")]
    assert "not available" in returns[0]["tool_return"]
    assert turn.text == "No tools here." and turn.stop_reason == "end_turn"
    assert turn.of("usage_statistics")[0]["step_count"] == 2

    _first, second = calls(fake_provider, model, 2)
    sent = second.body["messages"]
    assert sent[-3]["role"] == "assistant" and [c["id"] for c in sent[-3]["tool_calls"]] == ["call_1", "call_2"]
    assert [(m["role"], m["tool_call_id"]) for m in sent[-2:]] == [("tool", "call_1"), ("tool", "call_2")]
    assert [s["status"] for s in await steps(client, turn.run_id)] == ["success", "success"]


@pytest.mark.parametrize(
    ("builder", "stop_reason", "status", "error_type"),
    [
        (lambda m: fp.chat_length(m, ["cut", " short"]), "max_tokens_exceeded", "completed", None),
        (lambda m: fp.chat_refusal(m, ["I can't", " help with that."]), "end_turn", "completed", None),
        (lambda m: fp.chat_text(m, ["partial"], finish="content_filter"), "llm_api_error", "failed", "llm_content_filter"),
    ],
    ids=["length", "refusal", "content_filter"],
)
async def test_chat_finish_reasons_are_surfaced(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, builder: Any, stop_reason: str, status: str, error_type: str | None
) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(builder(model)))
    turn = await one_turn(client, f"openai/{model}")
    assert turn.stop_reason == stop_reason and turn.run["status"] == status and turn.done
    assert turn.text  # a refusal is shown as the answer; a filtered answer keeps what arrived
    if error_type:
        assert [e["error_type"] for e in turn.errors] == [error_type]
        assert turn.run["metadata"]["error"]["error_type"] == error_type
    else:
        assert not turn.errors
    if stop_reason == "end_turn":
        assert turn.text == "I can't help with that." and turn.run["metadata"]["finish_reason"] == "stop"


# -- OpenAI Responses -----------------------------------------------------------------------------


async def test_responses_reasoning_summary_text_and_usage(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt-5")
    frames = fp.responses_reasoning_summary(
        model, [["Thinking", " hard."]], ["The ", "answer."], usage=fp.Usage(30, 12, cached_tokens=10, reasoning_tokens=5)
    )
    fake_provider.script(model, fp.Stream(fp.split_frames(frames, every=11)))
    turn = await one_turn(client, f"openai-responses/{model}", "why?")
    assert "".join(r["reasoning"] for r in turn.of("reasoning_message")) == "Thinking hard."
    assert turn.text == "The answer." and turn.stop_reason == "end_turn"
    usage = turn.of("usage_statistics")[0]
    assert (usage["prompt_tokens"], usage["cached_input_tokens"], usage["reasoning_tokens"]) == (30, 10, 5)
    (call,) = fake_provider.calls(model)
    assert call.path == "/v1/responses" and call.body["instructions"] == "Be brief." and call.body["store"] is False
    assert call.body["input"] == [{"role": "user", "content": "why?"}]


async def test_responses_function_call_and_incomplete(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt-5")
    fake_provider.script(
        model,
        fp.Stream(fp.responses_function_call(model, [("call_9", "lookup", '{"q"', ': "x"}')])),
        fp.Stream(fp.responses_incomplete(model, ["Out of", " tokens"])),
    )
    turn = await one_turn(client, f"openai-responses/{model}")
    call_items = turn.of("tool_call_message")
    assert call_items[0]["tool_call"]["name"] == "lookup"
    assert json.loads("".join(i["tool_call"].get("arguments") or "" for i in call_items)) == {"q": "x"}
    assert turn.stop_reason == "max_tokens_exceeded" and turn.run["status"] == "completed"
    second = calls(fake_provider, model, 2)[1]
    kinds = [item.get("type", "message") for item in second.body["input"]]
    assert kinds[-2:] == ["function_call", "function_call_output"]
    assert second.body["input"][-1]["call_id"] == "call_9"


@pytest.mark.parametrize("nested", [True, False], ids=["error-event-as-recorded", "error-event-as-documented"])
async def test_responses_error_events_fail_the_run(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, nested: bool
) -> None:
    model = unique("gpt-5")
    fake_provider.script(
        model, fp.Stream(fp.responses_error_event(model, code="server_error", message="upstream broke", nested=nested)), repeat=True
    )
    turn = await one_turn(client, f"openai-responses/{model}")
    assert turn.stop_reason == "llm_api_error" and turn.run["status"] == "failed"
    assert [e["error_type"] for e in turn.errors] == ["llm_unavailable"]
    assert "upstream broke" in turn.errors[0]["detail"]


async def test_responses_failed_event(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt-5")
    fake_provider.script(model, fp.Stream(fp.responses_failed(model, code="invalid_prompt", message="bad prompt")))
    turn = await one_turn(client, f"openai-responses/{model}")
    assert [e["error_type"] for e in turn.errors] == ["llm_bad_request"] and turn.run["status"] == "failed"


# -- Anthropic Messages ---------------------------------------------------------------------------


async def test_anthropic_thinking_keeps_its_signature_and_usage_counts_the_cache(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("claude")
    usage = fp.Usage(input_tokens=5, output_tokens=11, cached_tokens=100, cache_write_tokens=20)
    fake_provider.script(
        model, fp.Stream(fp.anthropic_thinking(model, ["Let me", " think."], ["Done", "."], signature="sig-abc", usage=usage))
    )
    turn = await one_turn(client, f"anthropic/{model}", "think")
    reasoning = turn.of("reasoning_message")
    assert "".join(r["reasoning"] for r in reasoning) == "Let me think."
    assert [r["signature"] for r in reasoning if r.get("signature")] == ["sig-abc"]
    assert turn.text == "Done."
    u = turn.of("usage_statistics")[0]
    assert (u["prompt_tokens"], u["completion_tokens"], u["cached_input_tokens"], u["cache_write_tokens"]) == (125, 11, 100, 20)
    (call,) = fake_provider.calls(model)
    assert call.path == "/v1/messages"
    assert "sk-ant-test" in (call.headers.get("x-api-key", "") + call.headers.get("authorization", ""))
    assert call.body["system"] == "Be brief." and call.body["max_tokens"] > 0


async def test_anthropic_tool_use_sends_thinking_and_tool_results_back(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("claude")
    fake_provider.script(
        model,
        fp.Stream(fp.anthropic_redacted_thinking(model, "ENCRYPTED==", ["Checking."])),
        fp.Stream(fp.anthropic_tool_use(model, [("toolu_1", "search", '{"query": ', '"convoy"}')], text=["Let me look."])),
        fp.Stream(fp.anthropic_text(model, ["Nothing found."])),
    )
    conv = await conversation(client, f"anthropic/{model}")
    first = await send(client, conv, "hi")
    assert [h["state"] for h in first.of("hidden_reasoning_message")] == ["redacted"]
    second = await send(client, conv, "search please")
    assert second.of("tool_call_message")[0]["tool_call"]["name"] == "search"
    assert second.text == "Let me look.Nothing found." and second.stop_reason == "end_turn"

    _, with_tool, after_tool = calls(fake_provider, model, 3)
    history = after_tool.body["messages"]
    # turn 1 came back with its redacted thinking block intact, before its text
    assert history[1]["role"] == "assistant" and history[1]["content"][0] == {"type": "redacted_thinking", "data": "ENCRYPTED=="}
    assert history[-2]["content"][-1] == {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "convoy"}}
    assert history[-1]["role"] == "user" and history[-1]["content"][0]["type"] == "tool_result"
    assert history[-1]["content"][0]["tool_use_id"] == "toolu_1" and history[-1]["content"][0]["is_error"] is True
    assert with_tool.body["messages"][-1] == {"role": "user", "content": "search please"}


async def test_anthropic_max_tokens(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("claude")
    fake_provider.script(model, fp.Stream(fp.anthropic_text(model, ["trunc"], stop_reason="max_tokens")))
    turn = await one_turn(client, f"anthropic/{model}")
    assert turn.stop_reason == "max_tokens_exceeded" and turn.run["status"] == "completed"


async def test_anthropic_error_event_after_text_fails_without_retry(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("claude")
    fake_provider.script(model, fp.Stream(fp.anthropic_error_event(model, ["Half an ", "answer"])), repeat=True)
    turn = await one_turn(client, f"anthropic/{model}", stream_tokens=True)
    assert turn.text == "Half an answer"  # what reached the client stays, exactly once
    assert turn.stop_reason == "llm_api_error" and [e["error_type"] for e in turn.errors] == ["llm_unavailable"]
    assert turn.run["status"] == "failed" and turn.done
    assert len(fake_provider.calls(model)) == 1, "no retry after the first token"
    (step,) = await steps(client, turn.run_id)
    assert step["status"] == "failed" and step["error_type"] == "llm_unavailable"
    assert step["trace"]["response"]["text"] == "Half an answer"


# -- Google Gemini ----------------------------------------------------------------------------------


async def test_gemini_text_streams_with_usage_and_a_trace(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gemini")
    frames = fg.gemini_text(model, ["Hel", "lo", " wörld", "!"], usage=fp.Usage(20, 9, cached_tokens=8, reasoning_tokens=3))
    fake_provider.script(model, fp.Stream(fp.split_frames(frames, every=9)))

    turn = await one_turn(client, f"google/{model}", "say hello", stream_tokens=True)

    assert turn.text == "Hello wörld!" and turn.stop_reason == "end_turn" and turn.done and not turn.errors
    _one_message_of_deltas(turn.of("assistant_message"), "Hello wörld!")
    usage = turn.of("usage_statistics")[0]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (20, 9, 29)
    assert usage["cached_input_tokens"] == 8 and usage["reasoning_tokens"] == 3
    assert turn.run["status"] == "completed" and turn.run["ttft_ns"] > 0 and turn.run["metadata"]["finish_reason"] == "STOP"

    (call,) = fake_provider.calls(model)
    assert call.path == f"/v1beta/models/{model}:streamGenerateContent" and call.headers["x-goog-api-key"] == "gk-test-gemini"
    assert call.body["contents"] == [{"role": "user", "parts": [{"text": "say hello"}]}]
    assert call.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    (step,) = await steps(client, turn.run_id)
    assert step["status"] == "success" and step["provider_name"] == "google" and step["model"] == model
    assert step["prompt_tokens"] == 20 and step["reasoning_tokens"] == 3
    trace = step["trace"]
    assert trace["request"] == call.body
    assert trace["response"]["text"] == "Hello wörld!" and trace["response"]["provider_finish_reason"] == "STOP"
    assert trace["response"]["id"] and trace["response"]["model"] == model
    assert trace["ttft_ms"] > 0 and trace["attempts"] == 1


@pytest.mark.parametrize("signature_at", ["first", "last"], ids=["gemini-2.5", "gemini-3"])
async def test_gemini_thoughts_stream_as_reasoning_and_their_signature_goes_back(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, signature_at: str
) -> None:
    model = unique("gemini")
    sig = fg.signature()
    fake_provider.script(
        model,
        fp.Stream(fg.gemini_text(model, ["Paris", " it is."], thoughts=["The user", " asks."], signature=sig, signature_at=signature_at)),  # type: ignore[arg-type]
        fp.Stream(fg.gemini_text(model, ["Lyon."])),
    )
    conv = await conversation(client, f"google/{model}")
    first = await send(client, conv, "capital?")
    reasoning = first.of("reasoning_message")
    assert "".join(r["reasoning"] for r in reasoning) == "The user asks." and first.text == "Paris it is."
    assert [r["signature"] for r in reasoning if r.get("signature")] == [sig]
    second = await send(client, conv, "and the second city?")
    assert second.text == "Lyon." and not second.errors, second.errors  # the fake checks the signature came back

    _, after = calls(fake_provider, model, 2)
    model_turn = after.body["contents"][1]
    assert model_turn["role"] == "model" and model_turn["parts"][0] == {"text": "The user asks.", "thought": True}
    signed = [p for p in model_turn["parts"] if "thoughtSignature" in p]
    assert signed == ([{"text": "Paris", "thoughtSignature": sig}] if signature_at == "first" else [{"text": "", "thoughtSignature": sig}])


async def test_gemini_parallel_calls_run_and_the_second_step_is_accepted(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gemini")
    sig = fg.signature()
    calls_ = [fg.Call("add", {"a": 2, "b": 3}, signature=sig), fg.Call("add", {"a": 4, "b": 5}), fg.Call("explode", {"reason": "no"}, id="srv-1")]
    fake_provider.script(model, fp.Stream(fg.gemini_calls(model, calls_, thoughts=["Two sums."])), fp.Stream(fg.gemini_text(model, ["5 and 9."])))
    agent = (await client.post("/v1/agents", json={"name": "g", "model": f"google/{model}", "tools": ["add", "explode"]})).json()
    conv = (await client.post("/v1/conversations", params={"agent_id": agent["id"]})).json()["id"]

    turn = await send(client, conv, "add 2+3 and 4+5")

    returns = turn.returns()
    assert [(r["status"], r["tool_return"]) for r in returns][:2] == [("success", "5"), ("success", "9")]
    assert returns[2]["status"] == "error" and returns[2]["tool_call_id"] == "srv-1"
    ids = [r["tool_call_id"] for r in returns]
    assert len(set(ids)) == 3 and all(i.startswith("gemini-") for i in ids[:2])
    assert turn.text == "5 and 9." and turn.stop_reason == "end_turn" and not turn.errors
    _, second = calls(fake_provider, model, 2)
    model_turn, answers = second.body["contents"][1:3]
    assert model_turn["parts"][1] == {"functionCall": {"name": "add", "args": {"a": 2, "b": 3}}, "thoughtSignature": sig}
    assert [p["functionResponse"]["name"] for p in answers["parts"]] == ["add", "add", "explode"]
    assert answers["parts"][0]["functionResponse"]["response"] == {"output": "5"}
    assert answers["parts"][2]["functionResponse"]["id"] == "srv-1" and "error" in answers["parts"][2]["functionResponse"]["response"]
    assert [s["status"] for s in await steps(client, turn.run_id)] == ["success", "success"]


async def test_gemini_approval_round_trip_through_letta_client(convoy: Convoy, fake_provider: fp.FakeProvider) -> None:
    from letta_client import AsyncLetta

    model = unique("gemini")
    sig = fg.signature()
    fake_provider.script(
        model,
        fp.Stream(fg.gemini_calls(model, [fg.Call("transfer", {"amount": 1, "to": "amy"}, signature=sig)])),
        fp.Stream(fg.gemini_text(model, ["Done."])),
    )
    letta = AsyncLetta(base_url=convoy.url, api_key="unused", max_retries=0)
    agent = await letta.agents.create(name="gemini-approval", model=f"google/{model}", tools=["transfer"])
    conv = await letta.conversations.create(agent_id=agent.id)
    first = [c async for c in await letta.conversations.messages.create(conv.id, messages=[{"role": "user", "content": "pay"}])]
    (request,) = [c for c in first if c.message_type == "approval_request_message"]
    assert request.tool_call.name == "transfer" and json.loads(request.tool_call.arguments or "") == {"amount": 1, "to": "amy"}
    assert first[-2].stop_reason == "requires_approval"
    second = [
        c
        async for c in await letta.conversations.messages.create(
            conv.id, messages=[{"type": "approval", "approval_request_id": request.id, "approve": True}]
        )
    ]
    returned = next(c for c in second if c.message_type == "tool_return_message")
    assert returned.tool_return == "sent 1 to amy" and returned.status == "success"
    assert second[-2].stop_reason == "end_turn", second
    _, after = calls(fake_provider, model, 2)
    assert after.body["contents"][-1]["parts"] == [{"functionResponse": {"name": "transfer", "response": {"output": "sent 1 to amy"}}}]


@pytest.mark.parametrize(
    ("frames", "stop_reason", "status", "error_type"),
    [
        (lambda m: fg.gemini_text(m, ["cut", " short"], finish="MAX_TOKENS"), "max_tokens_exceeded", "completed", None),
        *(
            (lambda m, f=f: fg.gemini_text(m, ["partial"], finish=f), "llm_api_error", "failed", "llm_content_filter")
            for f in ("SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII")
        ),
        (lambda m: fg.gemini_blocked(m, "PROHIBITED_CONTENT"), "llm_api_error", "failed", "llm_content_filter"),
        (lambda m: fg.gemini_calls(m, [fg.Call("add")], finish="MALFORMED_FUNCTION_CALL"), "invalid_llm_response", "failed", "llm_invalid_response"),
        (lambda m: fg.gemini_text(m, ["never", " ends"], finish=None), "llm_api_error", "failed", "llm_unavailable"),
    ],
    ids=["MAX_TOKENS", "SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "blockReason", "MALFORMED_FUNCTION_CALL", "no-finish"],
)
async def test_gemini_finish_reasons_are_surfaced(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, frames: Any, stop_reason: str, status: str, error_type: str | None
) -> None:
    model = unique("gemini")
    fake_provider.script(model, fp.Stream(frames(model)), repeat=True)
    turn = await one_turn(client, f"google/{model}")
    assert turn.stop_reason == stop_reason and turn.run["status"] == status and turn.done, turn.items
    if error_type:
        assert [e["error_type"] for e in turn.errors] == [error_type]
        assert turn.run["metadata"]["error"]["error_type"] == error_type
    else:
        assert not turn.errors and turn.text == "cut short"


# -- errors, retries, deadlines, cancellation -----------------------------------------------------

FAST_RETRY = {"retry-after-ms": "10"}


@pytest.mark.parametrize(
    ("provider", "reply", "error_type", "attempts"),
    [
        ("openai", fp.openai_error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"), "llm_authentication", 1),
        ("openai", fp.openai_error(429, "Rate limit reached", "requests", "rate_limit_exceeded", headers=FAST_RETRY), "llm_rate_limit", 2),
        ("openai", fp.openai_error(500, "The server had an error", "server_error", headers=FAST_RETRY), "llm_unavailable", 2),
        ("openai", fp.openai_error(503, "Service unavailable", "server_error", headers=FAST_RETRY), "llm_unavailable", 2),
        ("openai", fp.openai_context_length_error(), "llm_context_window_exceeded", 1),
        ("openai", fp.openai_error(400, "Invalid value for 'x'", "invalid_request_error"), "llm_bad_request", 1),
        ("anthropic", fp.anthropic_error(529, "overloaded_error", "Overloaded", headers=FAST_RETRY), "llm_unavailable", 2),
        ("anthropic", fp.anthropic_error(401, "authentication_error", "invalid x-api-key"), "llm_authentication", 1),
        ("anthropic", fp.anthropic_prompt_too_long(), "llm_context_window_exceeded", 1),
        ("google", fg.gemini_rate_limited(), "llm_rate_limit", 2),
        ("google", fg.gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), "llm_unavailable", 2),
        ("google", fg.gemini_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), "llm_timeout", 2),
        ("google", fg.gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"), "llm_authentication", 1),
        ("google", fg.gemini_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."), "llm_authentication", 1),
        ("google", fg.gemini_context_too_long(), "llm_context_window_exceeded", 1),
        ("google", fg.gemini_error(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config'."), "llm_bad_request", 1),
    ],
    ids=[
        "openai-401", "openai-429", "openai-500", "openai-503", "openai-context", "openai-400", "anthropic-529", "anthropic-401",
        "anthropic-context", "google-429", "google-503", "google-504", "google-bad-key", "google-403", "google-context", "google-400",
    ],
)  # fmt: skip
async def test_http_errors_map_to_typed_errors(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, provider: str, reply: fp.Status, error_type: str, attempts: int
) -> None:
    model = unique(provider)
    fake_provider.script(model, reply, repeat=True)
    turn = await one_turn(client, f"{provider}/{model}")
    assert turn.of("stop_reason")[0]["stop_reason"] == "llm_api_error"
    assert [e["error_type"] for e in turn.errors] == [error_type] and turn.done
    assert turn.errors[0]["message"] and turn.errors[0]["run_id"] == turn.run_id
    assert turn.run["status"] == "failed" and turn.run["metadata"]["error"]["error_type"] == error_type
    assert len(fake_provider.calls(model)) == attempts, "the SDK retries exactly the retryable statuses"


GOOD = {"openai": fp.chat_text, "openai-responses": fp.responses_text, "anthropic": fp.anthropic_text, "google": fg.gemini_text}
# Not JSON, JSON of the wrong shape, and a 200 that is not an event stream at all (a gateway's page).
GARBAGE = [
    pytest.param("openai", fp.Stream([b"data: {this is not json\n\n", b"data: [DONE]\n\n"]), id="chat-not-json"),
    pytest.param("openai-responses", fp.Stream([b"event: response.created\ndata: nope\n\n"]), id="responses-not-json"),
    pytest.param("anthropic", fp.Stream([b"event: message_start\ndata: {oops\n\n"]), id="anthropic-not-json"),
    pytest.param(
        "openai", fp.Stream([b'data: {"unexpected": ["shape"]}\n\n', b"data: [DONE]\n\n"]), id="chat-wrong-shape"
    ),
    pytest.param(
        "anthropic",
        fp.Stream([b'event: message_start\ndata: {"type": "message_start", "message": 7}\n\n']),
        id="anthropic-wrong-shape",
    ),
    pytest.param(
        "openai", fp.Stream([b"<html><body>Bad gateway</body></html>"], content_type="text/html"), id="chat-html-200"
    ),
    pytest.param("openai", fp.Status(200, {"hello": "not a completion"}), id="chat-json-200"),
    pytest.param(
        "anthropic", fp.Stream([b"<html>maintenance</html>"], content_type="text/html"), id="anthropic-html-200"
    ),
    pytest.param("google", fp.Stream([b"data: {not json\r\n\r\n"]), id="gemini-not-json"),
    pytest.param("google", fp.Stream([b'data: {"candidates": 7}\r\n\r\n']), id="gemini-wrong-shape"),
    pytest.param("google", fp.Stream([b"<html>maintenance</html>"], content_type="text/html"), id="gemini-html-200"),
    pytest.param("google", fp.Status(200, {"candidates": []}), id="gemini-json-200"),
]


@pytest.mark.parametrize(("provider", "reply"), GARBAGE)
async def test_a_provider_answering_garbage_fails_the_run_typed_and_the_conversation_goes_on(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, provider: str, reply: fp.Reply
) -> None:
    model = unique(provider)
    fake_provider.script(model, reply, repeat=True)
    conv = await conversation(client, f"{provider}/{model}")
    turn = await send(client, conv)
    assert turn.done and turn.of("stop_reason")[-1]["stop_reason"] == "invalid_llm_response"
    assert [e["error_type"] for e in turn.errors] == ["llm_invalid_response"]
    assert turn.run["status"] == "failed" and turn.run["metadata"]["error"]["error_type"] == "llm_invalid_response"
    assert len(fake_provider.calls(model)) == 1, "an unreadable answer is not asked for again"
    healthy = unique(provider)
    fake_provider.script(healthy, fp.Stream(GOOD[provider](healthy, ["fine"])))
    assert (await send(client, conv, override_model=f"{provider}/{healthy}")).text == "fine"


async def test_an_unreachable_provider_is_unavailable(client: httpx.AsyncClient) -> None:
    turn = await one_turn(client, "unreachable/any-model")
    assert [e["error_type"] for e in turn.errors] == ["llm_unavailable"] and turn.run["status"] == "failed"
    assert "connection" in turn.errors[0]["detail"].lower()
    (step,) = await steps(client, turn.run_id)
    assert step["model_endpoint"].startswith("http://127.0.0.1:") and step["status"] == "failed"


async def test_a_retried_failure_before_the_first_token_duplicates_nothing(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("claude")
    fake_provider.script(
        model,
        fp.Stream(fp.anthropic_error_event(model, [])),  # overloaded before any token
        fp.Stream(fp.anthropic_text(model, ["Once", " only."])),
    )
    turn = await one_turn(client, f"anthropic/{model}")
    assert turn.text == "Once only." and turn.run["status"] == "completed"
    assert len(fake_provider.calls(model)) == 2
    (step,) = await steps(client, turn.run_id)
    assert step["trace"]["attempts"] == 2


async def test_a_connection_cut_before_the_first_token_is_retried_and_after_it_is_not(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    early, late = unique("gpt"), unique("gpt")
    fake_provider.script(
        early, fp.Stream(fp.cut_after(fp.chat_text(early, ["x"]), 1)), fp.Stream(fp.chat_text(early, ["recovered"]))
    )
    fake_provider.script(late, fp.Stream(fp.cut_after(fp.chat_text(late, ["Some", " text", " more"]), 3)), repeat=True)

    recovered = await one_turn(client, f"openai/{early}")
    assert recovered.text == "recovered" and recovered.run["status"] == "completed"

    broken = await one_turn(client, f"openai/{late}", stream_tokens=True)
    assert broken.text == "Some text" and [e["error_type"] for e in broken.errors] == ["llm_unavailable"]
    assert len(fake_provider.calls(late)) == 1


async def test_deadlines_first_token_and_idle(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    silent, stalls = unique("gpt"), unique("claude")
    fake_provider.script(silent, fp.Hang(30), repeat=True)
    frames = fp.anthropic_text(stalls, ["quick", " then", " stall"])
    fake_provider.script(stalls, fp.Stream([*frames[:5], fp.Pause(30), *frames[5:]]), repeat=True)

    hung, stalled = await asyncio.gather(
        one_turn(client, f"openai/{silent}", stream_tokens=True), one_turn(client, f"anthropic/{stalls}", stream_tokens=True)
    )

    assert [e["error_type"] for e in hung.errors] == ["llm_timeout"] and hung.run["status"] == "failed"
    assert "first token" in hung.errors[0]["detail"]
    assert [e["error_type"] for e in stalled.errors] == ["llm_timeout"] and stalled.text
    assert "no token for" in stalled.errors[0]["detail"]
    assert len(fake_provider.calls(stalls)) == 1


CANCELLABLE = {"openai": fp.chat_text, "google": fg.gemini_text}


@pytest.mark.parametrize("provider", sorted(CANCELLABLE))
async def test_cancel_closes_the_upstream_stream(client: httpx.AsyncClient, fake_provider: fp.FakeProvider, provider: str) -> None:
    model = unique(provider)
    fake_provider.script(model, fp.Stream(fp.paced(CANCELLABLE[provider](model, [f"w{i} " for i in range(200)]), 0.05)))
    conv = await conversation(client, f"{provider}/{model}")
    payload = {"messages": [{"role": "user", "content": "long"}], "background": True, "stream_tokens": True}
    async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json=payload) as source:
        async for event in source.aiter_sse():
            doc = json.loads(event.data)
            if doc.get("message_type") == "assistant_message":
                run_id = doc["run_id"]
                break
    (call,) = fake_provider.calls(model)
    assert not call.disconnected.is_set()
    reply = await client.post(f"/v1/runs/{run_id}/cancel")
    assert reply.status_code == 200, reply.text
    assert await asyncio.to_thread(call.disconnected.wait, 5), "the provider connection must close on cancel"
    assert not call.finished.is_set()

    async def settled() -> dict[str, Any] | None:
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        return run if run["status"] != "running" else None

    run = await eventually(settled, 5, interval_s=0.05, message=f"run {run_id} to end")
    assert run["status"] == "cancelled"


# -- handles and precedence -----------------------------------------------------------------------


async def test_model_precedence_request_then_conversation_then_agent(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    agent_model, conv_model, request_model = unique("a"), unique("c"), unique("r")
    for model in (agent_model, conv_model, request_model):
        fake_provider.script(model, fp.Stream(fp.chat_text(model, [model])), repeat=True)
    agent = (await client.post("/v1/agents", json={"name": "p", "model": f"openai/{agent_model}"})).json()
    plain = (await client.post("/v1/conversations", params={"agent_id": agent["id"]})).json()["id"]
    pinned = (
        await client.post("/v1/conversations", params={"agent_id": agent["id"]}, json={"model": f"compat/{conv_model}"})
    ).json()["id"]
    assert (await send(client, plain)).text == agent_model
    assert (await send(client, pinned)).text == conv_model
    assert (await send(client, pinned, override_model=f"anthropic/{request_model}")).errors  # scripted as chat: unreadable
    assert fake_provider.calls(request_model)[0].path == "/v1/messages"


async def test_unknown_providers_are_refused_before_anything_is_stored(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/agents", json={"name": "p", "model": "nosuch/model"})
    assert reply.status_code == 400 and "known providers" in reply.text and "CONVOY_PROVIDERS" in reply.text
    conv = await conversation(client, "echo/echo")
    reply = await client.post(
        f"/v1/conversations/{conv}/messages", json={"messages": [{"role": "user", "content": "x"}], "override_model": "nope"}
    )
    assert reply.status_code == 400 and "provider/model" in reply.text


async def test_letta_client_reads_every_new_item_type(convoy: Convoy, fake_provider: fp.FakeProvider) -> None:
    from letta_client import AsyncLetta

    model = unique("claude")
    fake_provider.script(
        model,
        fp.Stream(fp.anthropic_tool_use(model, [("toolu_7", "calc", '{"x": 1}')], text=["Calling."])),
        fp.Stream(fp.anthropic_thinking(model, ["hmm"], ["Done."], signature="s1")),
    )
    letta = AsyncLetta(base_url=convoy.url, api_key="unused", max_retries=0)
    agent = await letta.agents.create(name="sdk", model=f"anthropic/{model}")
    conv = await letta.conversations.create(agent_id=agent.id)
    stream = await letta.conversations.messages.create(conv.id, messages=[{"role": "user", "content": "go"}])
    seen = [chunk async for chunk in stream]
    types = [type(c).__name__ for c in seen]
    for expected in ("AssistantMessage", "ToolCallMessage", "ToolReturnMessage", "ReasoningMessage", "LettaStopReason"):
        assert expected in types, types
    run_id = seen[0].run_id
    sdk_steps = [step async for step in letta.runs.steps.list(run_id)]  # pages through `after`
    assert [s.status for s in sdk_steps] == ["success", "success"]
    assert sdk_steps[0].provider_name == "anthropic" and sdk_steps[1].model == model
