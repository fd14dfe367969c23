"""Hostile input (issue 7): whatever a client sends, the answer is a 4xx a person can act on, never
a 500, and a refused request writes nothing. Every test talks to the session's real server; the
last one lets schemathesis loose on its OpenAPI schema.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from api.validation import AGENT_ID, CONVERSATION_ID
from runtime.settings import Settings
from tests.conftest import Convoy, redis_snapshot, wait_until

MAX_BODY_BYTES: int = Settings.model_fields["max_request_bytes"].default
MAX_HEADER_BYTES: int = Settings.model_fields["max_header_bytes"].default
JSON = {"content-type": "application/json"}
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def http(convoy: Convoy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=convoy.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def target(http: httpx.Client) -> dict[str, str]:
    """An agent and a conversation for hostile requests to aim at."""
    agent = http.post("/v1/agents", json={"name": "hostile"}).json()["id"]
    conversation = http.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
    return {"agent": agent, "conversation": conversation}


def message_of(reply: httpx.Response) -> str:
    """The human-readable part of an error answer, in either shape (Convoy's or OpenAI's)."""
    doc = reply.json()
    if "error" in doc and isinstance(doc["error"], dict):
        return str(doc["error"]["message"])
    return str(doc.get("message") or doc["detail"])


def refused(
    http: httpx.Client, store: redis.Redis, method: str, url: str, status: int, needle: str, **kwargs: Any
) -> httpx.Response:
    """Send one request; it must get ``status`` with ``needle`` in its message, and write nothing."""
    before = redis_snapshot(store)
    reply = http.request(method, url, **kwargs)
    assert reply.status_code == status, reply.text
    assert needle.lower() in message_of(reply).lower(), message_of(reply)
    assert redis_snapshot(store) == before
    return reply


def openai_shaped(reply: httpx.Response) -> dict[str, Any]:
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert reply.headers["x-should-retry"] == "false"
    return dict(error)


def padded(prefix: bytes, suffix: bytes, size: int) -> bytes:
    """``prefix + "x"... + suffix``, exactly ``size`` bytes."""
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


def chunked(body: bytes, chunk_bytes: int = 64 * 1024) -> Iterable[bytes]:
    """A generator body: httpx sends it with ``Transfer-Encoding: chunked`` and no length."""
    for start in range(0, len(body), chunk_bytes):
        yield body[start : start + chunk_bytes]


def chat_body(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def nested(depth: int) -> Any:
    doc: Any = "bottom"
    for level in range(depth):
        doc = {"k": doc} if level % 2 else [doc]
    return doc


# -- size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_413_and_writes_nothing(
    http: httpx.Client, store: redis.Redis, target: dict[str, str], framing: str
) -> None:
    body = padded(b'{"input": "', b'"}', MAX_BODY_BYTES + 1)
    url = f"/v1/conversations/{target['conversation']}/messages"
    content = body if framing == "content-length" else chunked(body)
    reply = refused(http, store, "POST", url, 413, "too large", content=content, headers=JSON)
    assert str(MAX_BODY_BYTES) in reply.json()["detail"] and reply.json()["code"] == "request_too_large"

    chat = padded(json.dumps(chat_body(target["agent"], ""))[:-4].encode(), b'"}]}', MAX_BODY_BYTES + 1)
    content = chat if framing == "content-length" else chunked(chat)
    reply = refused(http, store, "POST", "/v1/chat/completions", 413, "too large", content=content, headers=JSON)
    assert openai_shaped(reply)["code"] == "request_too_large"
    assert http.get("/v1/health").status_code == 200  # the connection or the next one still works


def test_a_body_at_the_limit_is_not_refused_for_its_size(http: httpx.Client, store: redis.Redis) -> None:
    body = padded(b'{"name": "big", "description": "', b'"}', MAX_BODY_BYTES)
    refused(http, store, "POST", "/v1/agents", 422, "description: String should have at most", content=body, headers=JSON)


def test_streamed_answers_pass_the_limits_unbuffered(http: httpx.Client, target: dict[str, str]) -> None:
    """The limits read the request, never the response: the first item arrives while the run goes on."""
    words = "word " * 1000  # about 2 s through the echo model at 2 ms a word
    url = f"/v1/conversations/{target['conversation']}/messages"
    with http.stream("POST", url, json={"input": words}) as sse:
        lines = sse.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: {")).removeprefix("data: "))
        assert http.get(f"/v1/runs/{first['run_id']}").json()["status"] not in TERMINAL
        assert any(line == "data: [DONE]" for line in lines)


def test_oversized_headers_are_431(http: httpx.Client, store: redis.Redis) -> None:
    reply = refused(http, store, "GET", "/v1/agents", 431, "headers too large", headers={"x-junk": "j" * MAX_HEADER_BYTES})
    assert str(MAX_HEADER_BYTES) in reply.json()["detail"]


def test_an_overlong_url_is_refused_by_the_http_server(convoy: Convoy) -> None:
    host, port = convoy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /v1/agents?x={'a' * 70_000} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64).decode(errors="replace")
    assert head.startswith("HTTP/1.1 400"), head


# -- encoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body", "where"),
    [
        ("/v1/agents", rb'{"name": "a\ud800"}', "name"),
        ("/v1/agents", rb'{"name": "x", "metadata": {"k": ["fine", "\uDFFF"]}}', "metadata.k.1"),
        ("/v1/agents", rb'{"name": "x", "metadata": {"\ud83d": 1}}', "metadata.\\ud83d"),
        ("/v1/conversations/{conversation}/messages", rb'{"input": "hi \ud83d there"}', "input"),
        ("/v1/conversations/{conversation}/messages", rb'{"input": "two highs \ud83d\ud83d"}', "input"),
        ("/v1/conversations/{conversation}/messages", rb'{"input": "reversed \ude00\ud83d"}', "input"),
        (
            "/v1/conversations/{conversation}/messages",
            rb'{"input": "x", "client_tools": [{"name": "t", "parameters": {"description": "\udc00"}}]}',
            "client_tools.0.parameters.description",
        ),
        ("/v1/chat/completions", rb'{"model": "{agent}", "messages": [{"role": "user", "content": "\ud800"}]}', "messages.0.content"),
    ],
)
def test_lone_surrogate_escapes_are_400_and_write_nothing(
    http: httpx.Client, store: redis.Redis, target: dict[str, str], url: str, body: bytes, where: str
) -> None:
    """Python's json accepts them; UTF-8 cannot encode them (they used to be a 500 at the first write)."""
    url = url.format(**target)
    body = body.replace(b"{agent}", target["agent"].encode())
    reply = refused(http, store, "POST", url, 400, "lone UTF-16 surrogate", content=body, headers=JSON)
    assert message_of(reply).startswith(f"{where}: ")


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": "\xff"}',
        b'{"input": "overlong \xc0\xaf"}',
        b'{"input": "cut short \xe2\x82"}',
        b'{"input": "encoded surrogate \xed\xa0\x80"}',
        '{"input": "utf-16"}'.encode("utf-16"),
    ],
)
@pytest.mark.parametrize("route", ["letta", "openai"])
def test_a_body_that_is_not_utf8_is_400(
    http: httpx.Client, store: redis.Redis, target: dict[str, str], body: bytes, route: str
) -> None:
    url = f"/v1/conversations/{target['conversation']}/messages" if route == "letta" else "/v1/chat/completions"
    reply = refused(http, store, "POST", url, 400, "not valid UTF-8", content=body, headers=JSON)
    assert "offset" in message_of(reply)
    if route == "openai":
        openai_shaped(reply)


# -- nesting, numbers, JSON itself -----------------------------------------------------------------


def test_json_nested_beyond_the_parser_is_400_not_500(http: httpx.Client, store: redis.Redis, target: dict[str, str]) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    url = f"/v1/conversations/{target['conversation']}/messages"
    refused(http, store, "POST", url, 400, "nested too deeply", content=b'{"input": "x", "extra": ' + deep + b"}", headers=JSON)
    refused(http, store, "POST", "/v1/agents", 400, "nested too deeply", content=b'{"metadata": ' + deep + b"}", headers=JSON)
    body = b'{"model": "%s", "messages": %s}' % (target["agent"].encode(), deep)
    openai_shaped(refused(http, store, "POST", "/v1/chat/completions", 400, "recursion limit", content=body, headers=JSON))


def test_free_form_json_is_bounded(http: httpx.Client, store: redis.Redis, target: dict[str, str]) -> None:
    url = f"/v1/conversations/{target['conversation']}/messages"
    refused(http, store, "POST", "/v1/agents", 422, "nested deeper than 32 levels", json={"metadata": {"m": nested(32)}})
    refused(http, store, "POST", "/v1/agents", 422, "more than 10000 values", json={"metadata": {"m": [0] * 10_001}})
    refused(http, store, "POST", "/v1/agents", 422, "key longer than 256", json={"metadata": {"k" * 257: 1}})
    tool = {"name": "t", "parameters": {"type": "object", "properties": nested(40)}}
    refused(http, store, "POST", url, 422, "client_tools.0.parameters: is nested deeper", json={"input": "x", "client_tools": [tool]})


def test_metadata_32_levels_deep_is_stored_and_read_back(http: httpx.Client) -> None:
    """Regression: metadata nested ~200 deep was stored, then broke every GET /v1/agents with a 500
    (Redis payloads are parsed with a nesting limit)."""
    metadata = {"m": nested(31)}
    created = http.post("/v1/agents", json={"name": "deep", "metadata": metadata})
    assert created.status_code == 200, created.text
    assert http.get(f"/v1/agents/{created.json()['id']}").json()["metadata"] == metadata
    listed = http.get("/v1/agents", params={"limit": 1000})
    assert listed.status_code == 200 and created.json()["id"] in {a["id"] for a in listed.json()}


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(http: httpx.Client, store: redis.Redis, literal: bytes) -> None:
    body = b'{"name": "x", "metadata": {"n": %s}}' % literal
    refused(http, store, "POST", "/v1/agents", 422, f"holds {literal.decode()}, which is not a JSON number", content=body, headers=JSON)


def test_a_number_python_will_not_parse_is_400(http: httpx.Client, store: redis.Redis) -> None:
    body = b'{"name": "x", "metadata": {"n": ' + b"9" * 5000 + b"}}"
    reply = refused(http, store, "POST", "/v1/agents", 400, "could not be parsed", content=body, headers=JSON)
    assert "digits" in message_of(reply) and "sys." not in message_of(reply)


@pytest.mark.parametrize(
    ("body", "headers", "needle"),
    [
        (b"{not json", JSON, "not valid JSON"),
        (b'{"input": "x",}', JSON, "not valid JSON"),
        (b"[1, 2]", JSON, "expected a JSON object, got an array"),
        (b'"hello"', JSON, "expected a JSON object, got a string"),
        (b"null", JSON, "expected a JSON object, got null"),
        (b"", JSON, "a JSON object is required"),
        (b'{"input": "x"}', {}, "Content-Type: application/json"),
        (b'{"input": "x"}', {"content-type": "text/plain"}, "Content-Type: application/json"),
        (b'{"input": 5}', JSON, "input"),
        (b'{"input": "x", "streaming": "maybe"}', JSON, "streaming"),
        (b'{"messages": [{"role": "user", "content": []}]}', JSON, "content"),
    ],
)
def test_malformed_json_and_wrong_types_are_422_with_a_readable_message(
    http: httpx.Client, store: redis.Redis, target: dict[str, str], body: bytes, headers: dict[str, str], needle: str
) -> None:
    url = f"/v1/conversations/{target['conversation']}/messages"
    reply = refused(http, store, "POST", url, 422, needle, content=body, headers=headers)
    assert message_of(reply).startswith("invalid request: ")


# -- bounds ----------------------------------------------------------------------------------------

LONG_NAME = "n" * 257


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": ""}, "name"),
        ({"name": LONG_NAME}, "name"),
        ({"model": "m" * 257}, "model"),
        ({"system": "s" * 200_001}, "system"),
        ({"tags": ["t"] * 65}, "tags"),
        ({"tags": [LONG_NAME]}, "tags.0"),
        ({"tools": ["t"] * 129}, "tools"),
        ({"tools": ["add", "add"]}, "must be unique"),
        ({"memory_blocks": [{"label": "b", "value": ""}] * 65}, "memory_blocks"),
        ({"memory_blocks": [{"label": "a b", "value": ""}]}, "label"),
        ({"memory_blocks": [{"label": "b", "value": "v"}, {"label": "b", "value": "w"}]}, "must be unique"),
        ({"memory_blocks": [{"label": "b", "value": "vv", "limit": 1}]}, "over its limit of 1"),
        ({"memory_blocks": [{"label": "b", "value": "", "limit": 0}]}, "limit"),
        ({"context_window_limit": -1}, "context_window_limit"),
        ({"context_window_limit": 10**12}, "context_window_limit"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_tokens": 8000, "context_window_limit": 8000}, "must be smaller than context_window_limit"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
    ],
)
def test_agent_fields_are_bounded(http: httpx.Client, store: redis.Redis, body: dict[str, Any], needle: str) -> None:
    refused(http, store, "POST", "/v1/agents", 422, needle, json=body)


@pytest.mark.parametrize(
    ("stored", "patch", "needle"),
    [
        ({"max_tokens": 4096}, {"context_window_limit": 4000}, "max_tokens (4096) must be smaller than context_window_limit (4000)"),
        ({"context_window_limit": 8000}, {"max_tokens": 8000}, "max_tokens (8000) must be smaller"),
        ({"context_window_limit": 8000}, {"model_settings": {"max_output_tokens": 9000}}, "model_settings.max_output_tokens (9000)"),
    ],
    ids=["window-under-max-tokens", "max-tokens-over-window", "settings-over-window"],
)
def test_an_update_is_checked_as_the_agent_it_would_store(
    http: httpx.Client, store: redis.Redis, stored: dict[str, Any], patch: dict[str, Any], needle: str
) -> None:
    agent = http.post("/v1/agents", json={"name": "patched", **stored})
    assert agent.status_code == 200, agent.text
    refused(http, store, "PATCH", f"/v1/agents/{agent.json()['id']}", 400, needle, json=patch)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": [{"role": "user", "content": "x"}] * 257}, "messages"),
        ({"input": [{"type": "text", "text": "x"}] * 257}, "input"),
        ({"input": "x" * 1_000_001}, "input"),
        ({"input": ""}, "needs text"),
        ({"input": " \n\t "}, "only whitespace"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}]}]}, "only whitespace"),
        ({"input": [{"type": "text", "text": ""}]}, "needs text"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.message: a message needs text"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.message.role"),
        ({"messages": [{"role": "user", "content": "x", "otid": LONG_NAME}]}, "otid"),
        ({"input": "x", "max_steps": 0}, "max_steps"),
        ({"input": "x", "max_steps": 10**9}, "max_steps"),
        ({"input": "x", "client_tools": [{"name": f"t{i}"} for i in range(129)]}, "client_tools"),
        ({"input": "x", "client_tools": [{"name": "bad name!"}]}, "client_tools.0.name"),
        ({"input": "x", "client_tools": [{"name": "t"}, {"name": "t"}]}, "must be unique"),
        ({"input": "x", "client_tools": [{"name": "t", "parameters": {"type": "string"}}]}, "type 'object'"),
        ({"input": "x", "include_return_message_types": ["assistant_message"] * 33}, "include_return_message_types"),
        ({"input": "x", "override_model": "nowhere/model"}, "unknown model provider"),
        ({"messages": [{"type": "approval"}]}, "approve"),
        ({"messages": [{"role": "user", "content": "x"}, {"type": "approval", "approve": True}]}, "must come first"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "role 'assistant'"),
        ({"input": "x", "return_logprobs": True}, "log probabilities"),
    ],
)
def test_message_fields_are_bounded(
    http: httpx.Client, store: redis.Redis, target: dict[str, str], body: dict[str, Any], needle: str
) -> None:
    url = f"/v1/conversations/{target['conversation']}/messages"
    status = 400 if "override_model" in body else 422
    refused(http, store, "POST", url, status, needle, json=body)


def test_a_small_context_window_still_answers_and_an_overflow_is_a_400(http: httpx.Client) -> None:
    agent = http.post("/v1/agents", json={"name": "cramped", "context_window_limit": 1000}).json()["id"]
    reply = http.post(f"/v1/agents/{agent}/messages", json={"input": "hello"})
    assert reply.status_code == 200, reply.text  # a quarter of the window is kept for the answer
    assert reply.json()["messages"][-1]["content"] == "hello"
    system = "x" * 3000  # about 1000 tokens: the system prompt alone overflows the window
    agent = http.post("/v1/agents", json={"name": "overflow", "context_window_limit": 1000, "system": system}).json()["id"]
    reply = http.post(f"/v1/agents/{agent}/messages", json={"input": "hello"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["error_type"] == "context_window_overflow"
    assert reply.headers["x-should-retry"] == "false"


def test_a_send_to_a_deleted_conversation_is_404_and_leaves_no_trace(http: httpx.Client, store: redis.Redis) -> None:
    """The API knows the conversation from before (its id says its tenant and agent for good), so
    only the accept step finds it gone: its refusal must undo everything the send wrote, the
    conversation's place among the recently messaged ones included."""
    agent = http.post("/v1/agents", json={"name": "gone"}).json()["id"]
    conversation = http.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
    assert http.post(f"/v1/conversations/{conversation}/messages", json={"input": "hi", "streaming": False}).status_code == 200
    assert http.delete(f"/v1/conversations/{conversation}").status_code == 200
    refused(http, store, "POST", f"/v1/conversations/{conversation}/messages", 404, "not found", json={"input": "again", "streaming": False})
    listed = http.get("/v1/conversations", params={"agent_id": agent, "order_by": "last_message_at"})
    assert listed.status_code == 200 and listed.json() == []


def test_a_last_event_id_of_unicode_digits_is_refused(http: httpx.Client) -> None:
    run = f"run-{'0' * 8}-0000-4000-8000-{'0' * 12}"
    reply = http.get(f"/v1/runs/{run}/stream", headers=[(b"Last-Event-ID", "²".encode("latin-1"))])
    assert reply.status_code in (400, 422), reply.text


def test_ids_cursors_and_limits_are_checked(http: httpx.Client, store: redis.Redis, target: dict[str, str]) -> None:
    conversation, agent = target["conversation"], target["agent"]
    run = f"run-{'0' * 8}-0000-4000-8000-{'0' * 12}"
    for url in ("/v1/agents/not-an-id", "/v1/conversations/conv-1", f"/v1/runs/{agent}", "/v1/agents/agent-%00"):
        refused(http, store, "GET", url, 422, "should match pattern")
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": -5}, {"limit": "ten"}, {"limit": 10**40}, {"after": "x"}):
        refused(http, store, "GET", "/v1/agents", 422, "query.", params=params)
        refused(http, store, "GET", "/v1/runs", 422, "query.", params=params)
    refused(http, store, "GET", f"/v1/conversations/{conversation}/messages", 422, "order", params={"order": "up"})
    for after in (-1, 2**53 + 1, 1.5, "first"):
        refused(http, store, "POST", f"/v1/runs/{run}/stream", 422, "starting_after", json={"starting_after": after})
        refused(http, store, "POST", f"/v1/conversations/{conversation}/stream", 422, "starting_after", json={"starting_after": after})
    refused(http, store, "GET", f"/v1/runs/{run}/stream", 422, "starting_after", params={"starting_after": -1})
    refused(http, store, "GET", f"/v1/runs/{run}/stream", 400, "Last-Event-ID", headers={"Last-Event-ID": "abc"})
    refused(http, store, "POST", f"/v1/conversations/{conversation}/stream", 422, "poll_interval", json={"poll_interval": -1})
    refused(http, store, "POST", f"/v1/agents/{agent}/messages/cancel", 422, "run_ids", json={"run_ids": ["nope"]})
    url = f"/v1/conversations/{conversation}/messages"
    refused(http, store, "POST", url, 422, "idempotency-key", json={"input": "x"}, headers={"Idempotency-Key": "k" * 257})


def test_unknown_routes_are_404_and_wrong_methods_405(http: httpx.Client, store: redis.Redis) -> None:
    reply = refused(http, store, "GET", "/v1/nothing/here", 404, "no route GET /v1/nothing/here")
    assert reply.headers["content-type"] == "application/json"
    reply = refused(http, store, "DELETE", "/v1/runs", 405, "DELETE is not allowed on /v1/runs; allowed: GET")
    assert reply.headers["allow"] == "GET"
    openai_shaped(refused(http, store, "GET", "/v1/chat/completions", 405, "allowed: POST"))
    openai_shaped(refused(http, store, "POST", "/v1/chat/nothing", 404, "no route POST /v1/chat/nothing"))


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "object"),
        (b"{}", 400, "model"),
        (b'{"model": "{agent}", "messages": []}', 400, "messages"),
        (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "{agent}", "messages": [{"role": "assistant", "content": "hi"}]}', 400, "last message"),
        (b'{"model": "{agent}", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        (b'{"model": "{agent}", "messages": [{"role": "user", "content": ""}]}', 400, "no text"),
        (b'{"model": "{agent}", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400, "text"),
        (b'{"model": "{agent}", "n": 2, "messages": [{"role": "user", "content": "hi"}]}', 400, "n:"),
        (b'{"model": "{agent}", "max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}', 400, "max_tokens"),
        (b'{"model": "{agent}", "temperature": 9, "messages": [{"role": "user", "content": "hi"}]}', 400, "temperature"),
        (b'{"model": "{agent}", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}', 400, "finite number"),
        (b'{"model": "{agent}", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "hi"}]}', 400, "tools"),
        (b'{"model": "agent-nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "does not exist"),
    ],
)
def test_the_openai_route_answers_in_openai_shape(
    http: httpx.Client, store: redis.Redis, target: dict[str, str], body: bytes, status: int, needle: str
) -> None:
    body = body.replace(b"{agent}", target["agent"].encode())
    openai_shaped(refused(http, store, "POST", "/v1/chat/completions", status, needle, content=body, headers=JSON))
    too_long_key = {**JSON, "Idempotency-Key": "k" * 257}
    reply = refused(
        http, store, "POST", "/v1/chat/completions", 400, "idempotency-key", json=chat_body(target["agent"]), headers=too_long_key
    )
    openai_shaped(reply)


# -- unicode that is fine must come back exactly as sent ----------------------------------------------

TEXTS = {
    "emoji": "emoji 👩🏽‍💻 🚀 and a flag 🇳🇴 ",
    "rtl": "مرحبا بالعالم and שלום עולם \u200fmixed\u200e",
    "combining": "e\u0301 n\u0303 a\u0308\u0304 Z\u0351\u0308\u0334 \u0915\u094d\u0937",
    "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠜎𠜱 𓀀 \U0010fffd",
    "nul": "a\u0000b \u0000",
    "controls": "tab\there\u0007 bell \u2028line \u2029para \ufeffbom \ufffd \r\nend",
}


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_unicode_round_trips_through_a_turn(http: httpx.Client, target: dict[str, str], name: str) -> None:
    text = TEXTS[name]
    conversation = target["conversation"]
    # ensure_ascii: every non-ASCII character escaped, astral ones as surrogate pairs.
    body = json.dumps({"input": text, "streaming": False}, ensure_ascii=True).encode()
    reply = http.post(f"/v1/conversations/{conversation}/messages", content=body, headers=JSON)
    assert reply.status_code == 200, reply.text
    answer = [m for m in reply.json()["messages"] if m["message_type"] == "assistant_message"]
    assert [m["content"] for m in answer] == [text]

    sse = http.post(f"/v1/conversations/{conversation}/messages", json={"input": text})
    assert sse.status_code == 200
    # SSE lines end at CR or LF only (U+2028 and friends are text): split the bytes, not the str.
    items = [json.loads(line[len(b"data: ") :]) for line in sse.content.split(b"\n") if line.startswith(b"data: {")]
    assert "".join(i["content"] for i in items if i["message_type"] == "assistant_message") == text

    chat = http.post("/v1/chat/completions", json=chat_body(conversation, text))
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == text

    history = http.get(f"/v1/conversations/{conversation}/messages", params={"order": "desc", "limit": 2}).json()
    assert [m.get("content") for m in history] == [text, text]
    agent = http.post("/v1/agents", json={"name": text, "tags": [text], "metadata": {text: [text]}}).json()
    again = http.get(f"/v1/agents/{agent['id']}").json()
    assert (again["name"], again["tags"], again["metadata"]) == (text, [text], {text: [text]})


# -- schemathesis ------------------------------------------------------------------------------------

FUZZ_EXAMPLES = 6  # per operation and phase: the whole run stays well under a minute on 2 cores
FUZZ_SEED = 20_261_122  # fixed, so a failure can be reproduced
FUZZ_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")


@dataclass
class FuzzReport:
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return (
            f"schemathesis: {len(self.per_operation)} operations, {self.requests} requests in {self.elapsed_s:.1f} s "
            f"(seed {FUZZ_SEED}); statuses {statuses}; {len(self.failures)} check failures"
        )


def fuzz(base_url: str, ids: dict[str, str]) -> FuzzReport:
    """Run schemathesis (examples, coverage, fuzzing and stateful phases) against the live schema.

    Well-formed ids it generates are replaced by real ones, so requests get past the 404 and reach
    the code behind it; malformed ids stay malformed. Nothing is deleted, so the ids stay valid.
    """
    import schemathesis
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import events, from_schema

    config = SchemathesisConfig.from_dict(
        {
            "seed": FUZZ_SEED,
            "generation": {"max-examples": FUZZ_EXAMPLES},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in FUZZ_CHECKS}},
            "request-timeout": 60,
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    report = FuzzReport()

    @schema.hook("map_case")
    def aim(_: Any, case: Any) -> Any:
        method = case.method.upper()
        if method == "DELETE":
            return case
        # An update may leave its agent unable to answer (say, a window smaller than its prompt):
        # updates go to an agent of their own, so the others keep reaching the turn code.
        real = {
            "agent_id": (AGENT_ID, ids["spare_agent" if method == "PATCH" else "agent"]),
            "conversation_id": (CONVERSATION_ID, ids["conversation"]),
        }
        for container in (case.path_parameters, case.query):
            for name, (pattern, value) in real.items():
                if isinstance((container or {}).get(name), str) and re.fullmatch(pattern, container[name]):
                    container[name] = value
        return case

    @schema.hook("after_call")
    def count(_: Any, case: Any, response: Any) -> None:
        report.statuses[response.status_code] += 1
        report.per_operation[case.operation.label] += 1

    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status.value != "failure" or node.failure_info is None:
                        continue
                    failure = node.failure_info.failure
                    report.failures.append(f"{event.recorder.label}: {node.name}: {failure.title}\n{node.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            report.failures.append(f"{type(event).__name__}: {event.info.title}: {event.info.message}")
    report.elapsed_s = time.monotonic() - started
    return report


def test_schemathesis_finds_no_server_error_and_no_nonconformance(
    convoy: Convoy, http: httpx.Client, target: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every operation of the OpenAPI schema, fuzzed over real HTTP: no 5xx, every answer as
    documented, and afterwards every run the fuzzer started ends."""
    known = {run["id"] for run in http.get("/v1/runs", params={"limit": 1000}).json()}
    spare = http.post("/v1/agents", json={"name": "fuzzed-by-updates"}).json()["id"]
    report = fuzz(convoy.url, {**target, "spare_agent": spare})
    with capsys.disabled():
        print(f"\n{report.summary()}")
    assert len(report.per_operation) >= 20 and report.requests > 500, report.summary()
    assert not report.failures, "\n\n".join([report.summary(), *report.failures[:20]])
    assert report.server_errors == 0, report.summary()

    def fuzzed_runs_ended() -> bool:
        runs = http.get("/v1/runs", params={"limit": 1000}).json()
        return all(run["status"] in TERMINAL for run in runs if run["id"] not in known)

    wait_until(fuzzed_runs_ended, 60, interval_s=0.5, message="every run the fuzzer started to end")
