"""The agent loop end to end: server tools, parallel calls, failures, approvals, client tools,
cancel during approval, max_steps, message filters, history and the context-window policy.

The model is the fake provider speaking OpenAI Chat (scripted per test under its own model name);
the server tools are ``tests/fakes/tools.py``, loaded by the session server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import httpx
import pytest
import redis

from actors.mailbox import Mailbox
from bench import upstream as fp
from bench.upstream import gemini as fg
from runtime.errors import InvalidRequestError
from runtime.ids import new_id
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.connection import connect
from tests.conftest import eventually, redis_snapshot
from tests.integration.test_providers import Turn, send, steps, unique


async def agent_conversation(client: httpx.AsyncClient, model: str, **agent: Any) -> str:
    body = {"name": "loop", "model": f"openai/{model}", "system": "Use tools.", **agent}
    reply = await client.post("/v1/agents", json=body)
    assert reply.status_code == 200, reply.text
    conv = await client.post("/v1/conversations", params={"agent_id": reply.json()["id"]})
    return conv.json()["id"]


def tool_messages(call: fp.Call) -> list[dict[str, Any]]:
    return [m for m in call.body["messages"] if m["role"] == "tool"]


def tool_returns(turn: Turn) -> dict[str, dict[str, Any]]:
    """Every tool result of a turn by call id, from Letta's ``tool_returns``."""
    return {r["tool_call_id"]: r for m in turn.of("tool_return_message") for r in m["tool_returns"]}


async def test_a_two_step_tool_turn(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("c1", "add", '{"a": 2,', ' "b": 3}')])),
        fp.Stream(fp.chat_text(model, ["2 + 3 = 5"])),
    )
    conv = await agent_conversation(client, model, tools=["add"])
    turn = await send(client, conv, "add 2 and 3")

    (returned,) = turn.of("tool_return_message")
    assert (returned["tool_call_id"], returned["status"], returned["tool_return"]) == ("c1", "success", "5")
    assert turn.text == "2 + 3 = 5" and turn.stop_reason == "end_turn"
    first, second = fake_provider.calls(model)
    (spec,) = first.body["tools"]
    assert spec["function"]["name"] == "add" and spec["function"]["description"] == "Add two integers."
    assert spec["function"]["parameters"]["properties"]["a"] == {"description": "first addend", "title": "A", "type": "integer"}
    assert tool_messages(second) == [{"role": "tool", "tool_call_id": "c1", "content": "5"}]
    assert [s["status"] for s in await steps(client, turn.run_id)] == ["success", "success"]

    history = (await client.get(f"/v1/conversations/{conv}/messages", params={"limit": 50, "order": "asc"})).json()
    assert [m["message_type"] for m in history] == [
        "system_message",
        "user_message",
        "tool_call_message",
        "tool_return_message",
        "assistant_message",
    ]


async def test_parallel_tools_failures_and_timeouts_are_results_not_crashes(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    calls = [
        ("p1", "add", '{"a": 1, "b": 1}'),
        ("p2", "explode", '{"reason": "kaboom"}'),
        ("p3", "sleepy", '{"seconds": 5}'),
        ("p4", "add", '{"a": "not a number"}'),
        ("p5", "rm_rf", "{}"),
    ]
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, calls)), fp.Stream(fp.chat_text(model, ["ok"])))
    conv = await agent_conversation(client, model, tools=["add", "explode", "sleepy"])
    turn = await send(client, conv)

    (call_message,) = turn.of("tool_call_message")
    assert [c["tool_call_id"] for c in call_message["tool_calls"]] == ["p1", "p2", "p3", "p4", "p5"], "one message, as Letta"
    assert call_message["tool_call"]["tool_call_id"] == "p1"
    (returned,) = turn.of("tool_return_message")
    assert (returned["tool_call_id"], returned["status"], returned["tool_return"]) == ("p1", "success", "2"), "the first, on top"
    results = tool_returns(turn)
    assert results["p1"]["status"] == "success" and results["p1"]["tool_return"] == "2"
    assert results["p2"]["status"] == "error" and "RuntimeError: kaboom" in results["p2"]["tool_return"]
    assert results["p3"]["status"] == "error" and "timed out" in results["p3"]["tool_return"]
    assert results["p4"]["status"] == "error" and "invalid arguments" in results["p4"]["tool_return"]
    assert results["p5"]["status"] == "error" and "not available" in results["p5"]["tool_return"]
    assert turn.run["status"] == "completed" and turn.text == "ok"
    assert [m["tool_call_id"] for m in tool_messages(fake_provider.calls(model)[1])] == ["p1", "p2", "p3", "p4", "p5"]


async def _ask_for_transfer(client: httpx.AsyncClient, fake_provider: fp.FakeProvider, model: str) -> tuple[str, Turn]:
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, [("t1", "transfer", '{"amount": 5, "to": "bob"}')])))
    conv = await agent_conversation(client, model, tools=["transfer", "add"])
    turn = await send(client, conv, "pay bob")
    assert turn.stop_reason == "requires_approval" and turn.run["status"] == "completed"
    (request,) = turn.of("approval_request_message")  # step streaming (Letta's default): the whole call
    assert request["tool_call"]["name"] == "transfer" and not turn.of("tool_call_message")
    assert json.loads(request["tool_call"]["arguments"]) == {"amount": 5, "to": "bob"}
    assert [c["tool_call_id"] for c in request["tool_calls"]] == ["t1"]
    return conv, turn


async def test_approve_runs_the_tool_and_blocks_other_messages_until_answered(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    conv, asked = await _ask_for_transfer(client, fake_provider, model)
    request_id = asked.of("approval_request_message")[0]["id"]

    blocked = await client.post(f"/v1/conversations/{conv}/messages", json={"input": "hello?"})
    assert blocked.status_code == 409 and blocked.json()["error_code"] == "PENDING_APPROVAL"
    assert blocked.json()["pending_request_id"] == request_id and blocked.headers["x-should-retry"] == "false"

    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Sent."])))
    approval = {"type": "approval", "approval_request_id": request_id, "approve": True}
    done = await send(client, conv, messages=[approval])
    (returned,) = done.of("tool_return_message")
    assert (returned["tool_call_id"], returned["status"], returned["tool_return"]) == ("t1", "success", "sent 5 to bob")
    assert done.text == "Sent." and done.stop_reason == "end_turn"
    again = await client.post(f"/v1/conversations/{conv}/messages", json={"messages": [approval], "streaming": False})
    assert again.status_code == 400 and "No tool call is currently awaiting approval" in again.text


async def test_deny_with_a_reason_tells_the_model(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    conv, _ = await _ask_for_transfer(client, fake_provider, model)
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Understood."])))
    denial = {"type": "approval", "approvals": [{"type": "approval", "tool_call_id": "t1", "approve": False, "reason": "too much"}]}
    turn = await send(client, conv, messages=[denial])
    (returned,) = turn.of("tool_return_message")
    assert returned["status"] == "error" and "denied" in returned["tool_return"] and "too much" in returned["tool_return"]
    assert tool_messages(fake_provider.calls(model)[-1])[-1]["content"] == returned["tool_return"]


async def test_client_tools_pause_for_the_clients_result(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("l1", "get_location", "{}")])),
        fp.Stream(fp.chat_text(model, ["You are in Paris."])),
    )
    conv = await agent_conversation(client, model)
    location = {"name": "get_location", "description": "Where the user is", "parameters": {"type": "object", "properties": {}}}
    asked = await send(client, conv, "where am I?", client_tools=[location])
    assert asked.stop_reason == "requires_approval"
    assert fake_provider.calls(model)[0].body["tools"][0]["function"]["name"] == "get_location"

    answer = {"type": "approval", "approvals": [{"type": "tool", "tool_call_id": "l1", "tool_return": "Paris", "status": "success"}]}
    done = await send(client, conv, messages=[answer], client_tools=[location])
    assert done.text == "You are in Paris."
    assert tool_messages(fake_provider.calls(model)[1]) == [{"role": "tool", "tool_call_id": "l1", "content": "Paris"}]


async def test_cancel_during_approval_frees_the_conversation(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    conv, _ = await _ask_for_transfer(client, fake_provider, model)
    reply = await client.post(f"/v1/conversations/{conv}/cancel")
    assert reply.status_code == 200, reply.text
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Fine, no transfer."])))
    turn = await send(client, conv, "never mind")
    assert turn.text == "Fine, no transfer." and turn.run["status"] == "completed"
    sent = fake_provider.calls(model)[-1].body["messages"]
    # the unanswered call got an error result, so the provider accepts the history
    assert sent[-2]["role"] == "tool" and sent[-2]["tool_call_id"] == "t1" and "no result" in sent[-2]["content"]
    assert sent[-1] == {"role": "user", "content": "never mind"}


async def test_max_steps_and_message_filters(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, [("m", "add", '{"a": 1, "b": 2}')])), repeat=True)
    conv = await agent_conversation(client, model, tools=["add"])
    turn = await send(client, conv, max_steps=3, include_return_message_types=["tool_return_message"])
    assert turn.stop_reason == "max_steps" and turn.run["status"] == "completed"
    assert {i["message_type"] for i in turn.items} == {"ping", "tool_return_message", "stop_reason", "usage_statistics"}
    assert len(turn.of("tool_return_message")) == 3 and turn.of("usage_statistics")[0]["step_count"] == 3


async def test_context_window_drops_old_turns_and_a_too_large_system_prompt_fails(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["ok"])), repeat=True)
    conv = await agent_conversation(client, model, context_window_limit=1_000, max_tokens=200)
    for i in range(6):
        await send(client, conv, f"message {i} " + "x" * 600)
    last = fake_provider.calls(model)[-1].body["messages"]
    assert last[0]["role"] == "system" and last[-1]["content"].startswith("message 5")
    assert not any(m["content"].startswith("message 0") for m in last[1:]), "the oldest turns are dropped"
    turn_steps = await steps(client, (await client.get("/v1/runs", params={"conversation_id": conv, "limit": 1})).json()[0]["id"])
    assert turn_steps[0]["trace"]["history_messages_dropped"] > 0

    big = await agent_conversation(client, model, context_window_limit=1_000, system="rules " * 2_000)
    failed = await send(client, big, "hi")
    assert failed.stop_reason == "context_window_overflow_in_system_prompt"
    assert [e["error_type"] for e in failed.errors] == ["context_window_overflow"] and failed.run["status"] == "failed"


# A response the output-token limit cuts inside a tool call, in each provider's wire format: a whole
# call to a server tool, then a call to a tool that needs approval, cut mid-arguments.
CUT_CALLS = {
    "openai": (lambda model, calls: fp.chat_tool_calls(model, calls, content=["Let me "], finish="length"), fp.chat_text),
    "openai-responses": (
        lambda model, calls: fp.responses_function_call(model, calls, incomplete="max_output_tokens"),
        fp.responses_text,
    ),
    "anthropic": (
        lambda model, calls: fp.anthropic_tool_use(model, calls, text=["Let me "], stop_reason="max_tokens"),
        fp.anthropic_text,
    ),
    # Gemini sends whole calls (the first signed), and MAX_TOKENS after them: cut all the same.
    "google": (
        lambda model, calls: fg.gemini_calls(
            model,
            [fg.Call("add", {"a": 1, "b": 2}, signature=fg.signature()), fg.Call("transfer", {"amount": 5})],
            text=["Let me "],
            finish="MAX_TOKENS",
        ),
        fg.gemini_text,
    ),
}


@pytest.mark.parametrize("stream_tokens", [False, True], ids=["steps", "tokens"])
@pytest.mark.parametrize("provider", sorted(CUT_CALLS))
async def test_a_tool_call_cut_by_the_token_limit_is_never_run_nor_sent_for_approval(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider, provider: str, stream_tokens: bool
) -> None:
    model = unique("cut")
    calls = [("c1", "add", '{"a": 1, "b": 2}'), ("c2", "transfer", '{"amount": 5, "to": "b')]
    cut, text = CUT_CALLS[provider]
    fake_provider.script(model, fp.Stream(cut(model, calls)), fp.Stream(text(model, ["fine"])))
    agent = await client.post("/v1/agents", json={"name": "cut", "model": f"{provider}/{model}", "tools": ["add", "transfer"]})
    conv = (await client.post("/v1/conversations", params={"agent_id": agent.json()["id"]})).json()["id"]

    turn = await send(client, conv, "pay bob", stream_tokens=stream_tokens)

    assert turn.stop_reason == "max_tokens_exceeded" and turn.run["status"] == "completed", turn.items
    assert not turn.errors and not turn.of("tool_return_message"), "no tool ran"
    assert len(fake_provider.calls(model)) == 1, "no second step"
    if not stream_tokens:  # whole messages: the cut calls are not shown at all
        assert not turn.of("tool_call_message") and not turn.of("approval_request_message")
    (step,) = await steps(client, turn.run_id)
    assert [c["name"] for c in step["trace"]["response"]["cut_tool_calls"]] == ["add", "transfer"]
    history = (await client.get(f"/v1/conversations/{conv}/messages")).json()
    assert {m["message_type"] for m in history} <= {"system_message", "user_message", "assistant_message"}, history
    # nothing waits for an approval: the next message is taken (no 409)
    assert (await send(client, conv, "and now?")).stop_reason == "end_turn"


async def test_an_input_of_several_messages_is_never_cut_and_one_that_cannot_fit_fails_at_once(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    """Regression: three user messages over the window were cut to the last one, and the model
    answered having seen a third of the question (the trace said ``history_messages_dropped: 2``)."""
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["ok"])), repeat=True)
    # a budget of 1,400 tokens: the three parts need ~1,530 at the policy's count, ~1,150 generously
    conv = await agent_conversation(client, model, context_window_limit=1_600, max_tokens=200)
    await send(client, conv, "old turn " + "o" * 900)
    parts = [{"role": "user", "content": f"part {i} " + "p" * 1_500} for i in range(3)]
    turn = await send(client, conv, messages=parts)
    assert turn.stop_reason == "end_turn"
    sent = [m["content"] for m in fake_provider.calls(model)[-1].body["messages"] if m["role"] == "user"]
    assert sent == [p["content"] for p in parts], "every part of the input reached the model, and no older turn"

    huge = [{"role": "user", "content": f"{i} " + "h" * 999_000} for i in range(3)]
    calls_before = len(fake_provider.calls(model))
    failed = await send(client, conv, messages=huge)
    assert failed.stop_reason == "error" and failed.run["status"] == "failed"
    (error,) = failed.errors
    assert error["error_type"] == "context_window_overflow_in_input" and "more than fit" in error["detail"], error
    assert len(fake_provider.calls(model)) == calls_before, "nothing was sent to the model"
    blocking = await client.post(f"/v1/conversations/{conv}/messages", json={"messages": huge[:1], "streaming": False})
    assert blocking.status_code == 400 and blocking.json()["error"]["error_type"] == "context_window_overflow_in_input"


async def test_the_input_stays_in_the_history_whatever_ends_the_turn(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    """Regression: a turn that failed in its first step left no trace of what was asked."""
    model = unique("gpt")
    fake_provider.script(model, fp.openai_error(400, "Invalid value for 'x'", "invalid_request_error"), fp.Hang(30))
    conv = await agent_conversation(client, model)
    failed = await send(client, conv, "first, failing")
    assert failed.run["status"] == "failed"
    cancelled = asyncio.create_task(send(client, conv, "second, cancelled"))
    await eventually(lambda: len(fake_provider.calls(model)) >= 2, 15, message="the second turn to reach the model")
    assert (await client.post(f"/v1/conversations/{conv}/cancel")).status_code == 200
    assert (await asyncio.wait_for(cancelled, 15)).run["status"] == "cancelled"
    history = (await client.get(f"/v1/conversations/{conv}/messages", params={"order": "asc"})).json()
    assert [m["content"] for m in history if m["message_type"] == "user_message"] == ["first, failing", "second, cancelled"]


async def test_unknown_tools_are_refused_at_creation(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/agents", json={"name": "x", "tools": ["add", "nope"]})
    assert reply.status_code == 400 and "nope" in reply.text and "add" in reply.text


async def test_letta_client_approves_a_tool_call(convoy: Any, fake_provider: fp.FakeProvider) -> None:
    from letta_client import AsyncLetta

    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("t9", "transfer", '{"amount": 1, "to": "amy"}')])),
        fp.Stream(fp.chat_text(model, ["Done."])),
    )
    letta = AsyncLetta(base_url=convoy.url, api_key="unused", max_retries=0)
    agent = await letta.agents.create(name="sdk-approval", model=f"openai/{model}", tools=["transfer"])
    conv = await letta.conversations.create(agent_id=agent.id)
    first = [c async for c in await letta.conversations.messages.create(conv.id, messages=[{"role": "user", "content": "pay"}])]
    deltas = [c for c in first if c.message_type == "approval_request_message"]
    request = deltas[0]
    assert request.tool_call.name == "transfer"
    assert json.loads("".join(d.tool_call.arguments or "" for d in deltas)) == {"amount": 1, "to": "amy"}
    second = [
        c
        async for c in await letta.conversations.messages.create(
            conv.id, messages=[{"type": "approval", "approval_request_id": request.id, "approve": True}]
        )
    ]
    returned = next(c for c in second if c.message_type == "tool_return_message")
    assert returned.tool_return == "sent 1 to amy" and returned.status == "success"
    assert second[-2].stop_reason == "end_turn"


async def test_tools_can_be_added_to_an_agent_later(client: httpx.AsyncClient, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["no tools"])), fp.Stream(fp.chat_text(model, ["tools"])))
    agent = (await client.post("/v1/agents", json={"name": "later", "model": f"openai/{model}"})).json()
    conv = (await client.post("/v1/conversations", params={"agent_id": agent["id"]})).json()["id"]
    await send(client, conv)
    reply = await client.patch(f"/v1/agents/{agent['id']}", json={"tools": ["add"]})
    assert reply.status_code == 200 and [t["name"] for t in reply.json()["tools"]] == ["add"]
    assert (await client.patch(f"/v1/agents/{agent['id']}", json={"tools": ["nope"]})).status_code == 400
    await send(client, conv)
    first, second = fake_provider.calls(model)
    assert "tools" not in first.body and [t["function"]["name"] for t in second.body["tools"]] == ["add"]


async def test_a_failure_in_a_later_step_keeps_the_steps_that_ran(
    client: httpx.AsyncClient, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("s1", "add", '{"a": 4, "b": 4}')])),
        fp.openai_error(400, "Invalid value for 'x'", "invalid_request_error"),
    )
    conv = await agent_conversation(client, model, tools=["add"])
    turn = await send(client, conv, "add, then fail")
    assert turn.run["status"] == "failed" and [e["error_type"] for e in turn.errors] == ["llm_bad_request"]
    history = (await client.get(f"/v1/conversations/{conv}/messages", params={"order": "asc"})).json()
    assert [m["message_type"] for m in history] == ["system_message", "user_message", "tool_call_message", "tool_return_message"]
    assert history[-1]["tool_return"] == "8", "the tool ran, so the history says so"


async def test_letta_client_denies_returns_a_client_tool_result_and_lists_history(
    convoy: Any, fake_provider: fp.FakeProvider
) -> None:
    from letta_client import AsyncLetta

    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("t1", "transfer", '{"amount": 9, "to": "eve"}')])),
        fp.Stream(fp.chat_text(model, ["Not sent."])),
        fp.Stream(fp.chat_tool_calls(model, [("l1", "get_location", "{}")])),
        fp.Stream(fp.chat_text(model, ["Paris it is."])),
    )
    letta = AsyncLetta(base_url=convoy.url, api_key="unused", max_retries=0)
    agent = await letta.agents.create(name="sdk-client-tools", model=f"openai/{model}", tools=["transfer"])
    conv = await letta.conversations.create(agent_id=agent.id)

    async def send_(**kw: Any) -> list[Any]:
        return [c async for c in await letta.conversations.messages.create(conv.id, **kw)]

    await send_(messages=[{"role": "user", "content": "pay eve"}])
    deny = {"type": "approval", "approvals": [{"type": "approval", "tool_call_id": "t1", "approve": False, "reason": "no"}]}
    denied = await send_(messages=[deny])
    returned = next(c for c in denied if c.message_type == "tool_return_message")
    assert returned.status == "error" and "no" in returned.tool_return

    location = {"name": "get_location", "parameters": {"type": "object", "properties": {}}}
    asked = await send_(messages=[{"role": "user", "content": "where am I?"}], client_tools=[location])
    assert asked[-2].stop_reason == "requires_approval"
    result = {"type": "tool", "tool_call_id": "l1", "tool_return": "Paris", "status": "success"}
    done = await send_(messages=[{"type": "approval", "approvals": [result]}], client_tools=[location])
    assert "".join(c.content for c in done if c.message_type == "assistant_message") == "Paris it is."

    history = (await letta.conversations.messages.list(conv.id, limit=100, order="asc")).items
    kinds = [m.message_type for m in history]
    assert kinds.count("approval_request_message") == 2 and kinds.count("approval_response_message") == 2
    assert kinds.count("tool_return_message") == 2 and kinds[:2] == ["system_message", "user_message"]


async def test_an_answer_whose_host_dies_mid_run_closes_its_approval(
    client: httpx.AsyncClient, store: redis.Redis, fake_provider: fp.FakeProvider
) -> None:
    """Found by ``convoy bench soak`` with faults: the answer's run, ended ``owner_lost`` by the
    host's next incarnation, left its approval answered-but-open, so every later message was
    accepted and then failed ``pending_approval``, and no answer was taken any more."""
    model = unique("gpt")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("l1", "get_location", "{}")])),
        fp.Hang(10),  # the answer's step: still waiting for its model when the host dies
        fp.Stream(fp.chat_text(model, ["Back again."])),
    )
    conv = await agent_conversation(client, model)
    location = {"name": "get_location", "description": "Where the user is", "parameters": {"type": "object", "properties": {}}}
    asked = await send(client, conv, "where am I?", client_tools=[location])
    assert asked.stop_reason == "requires_approval"

    answer = {"type": "approval", "approvals": [{"type": "tool", "tool_call_id": "l1", "tool_return": "Paris", "status": "success"}]}
    answering = asyncio.create_task(send(client, conv, messages=[answer], client_tools=[location]))
    await eventually(
        lambda: len(fake_provider.calls(model)) >= 2 or answering.done(), 15, interval_s=0.02, message="the answer's step"
    )
    assert len(fake_provider.calls(model)) >= 2, "the answer's step never reached the model"
    host = store.get(keyspace.lease(conv)).split("/")[0]
    os.kill(json.loads(store.hget(keyspace.hosts(), host))["pid"], signal.SIGKILL)

    died = await asyncio.wait_for(answering, 30)
    assert [e["error_type"] for e in died.errors] == ["owner_lost"] and died.run["status"] == "failed"
    assert not store.exists(keyspace.pending_approval(conv)), "the failed answer must close its approval"
    turn = await send(client, conv, "still there?")
    assert turn.text == "Back again." and turn.stop_reason == "end_turn"
    sent = fake_provider.calls(model)[-1].body["messages"]
    # the answer is on record (its input was kept before its step began), so the call has its result
    assert sent[-2] == {"role": "tool", "tool_call_id": "l1", "content": "Paris"}


async def test_an_answer_deciding_one_call_twice_is_refused_before_any_tool_runs(
    client: httpx.AsyncClient, store: redis.Redis, convoy: Any, fake_provider: fp.FakeProvider
) -> None:
    """Regression (G5): with b1 and b2 waiting, ``approvals: [b1, b1]`` passed the "all calls
    named" count; the turn ran the step's server call and b1, then failed ``invalid_approval`` on
    b2 and closed the approval, the tools' results on record nowhere."""
    model = unique("gpt")
    calls = [
        ("a1", "add", '{"a": 1, "b": 1}'),
        ("b1", "transfer", '{"amount": 1, "to": "ann"}'),
        ("b2", "transfer", '{"amount": 2, "to": "bob"}'),
    ]
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, calls)))
    conv = await agent_conversation(client, model, tools=["add", "transfer"])
    asked = await send(client, conv, "pay both")
    assert asked.stop_reason == "requires_approval"
    before = redis_snapshot(store)

    twice = {"type": "approval", "approvals": [{"type": "approval", "tool_call_id": "b1", "approve": True}] * 2}
    refused = await client.post(f"/v1/conversations/{conv}/messages", json={"messages": [twice], "streaming": False})
    assert refused.status_code == 422, refused.text
    assert "each pending tool call takes exactly one decision; decided more than once: ['b1']" in refused.json()["message"]
    # Any other way in meets the same refusal where the answer is accepted, atomically.
    redis_async = connect(Settings(redis_url=convoy.redis_url))
    try:
        with pytest.raises(InvalidRequestError, match="b1 is decided more than once"):
            await Mailbox(redis_async).accept(
                conv, new_id("run"), b"{}", on_busy="queue", run_fields={}, first_item=b"", stream_ttl_s=60, run_ttl_s=60,
                answers_approval="", answered_calls=("b1", "b1"), answers_all_calls=True,
            )
    finally:
        await redis_async.aclose()
    assert redis_snapshot(store) == before, "nothing was written for the refused answers"

    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Paid ann."])))
    whole = {
        "type": "approval",
        "approvals": [
            {"type": "approval", "tool_call_id": "b1", "approve": True},
            {"type": "approval", "tool_call_id": "b2", "approve": False, "reason": "not bob"},
        ],
    }
    done = await send(client, conv, messages=[whole])
    results = tool_returns(done)
    assert [(c, r["status"]) for c, r in results.items()] == [("a1", "success"), ("b1", "success"), ("b2", "error")]
    assert results["b1"]["tool_return"] == "sent 1 to ann" and "not bob" in results["b2"]["tool_return"]
    assert done.text == "Paid ann." and done.stop_reason == "end_turn"
    history = (await client.get(f"/v1/conversations/{conv}/messages", params={"limit": 50, "order": "asc"})).json()
    assert [m["message_type"] for m in history].count("tool_return_message") == 1, "the step's tools ran once"
