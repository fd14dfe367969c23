"""Fake LLM provider servers speaking the real streaming wire formats.

``FakeProvider`` is a real HTTP server (Starlette on uvicorn, in a daemon thread on 127.0.0.1) that
answers OpenAI Chat Completions, OpenAI Responses, Anthropic Messages and Gemini
``streamGenerateContent`` requests, so the real ``openai``/``anthropic``/``google-genai`` SDKs and
Convoy's provider adapters run unmodified against it. Replies are scripted per model name (the
``"model"`` field of the request body; for Gemini, the model in the path), so concurrent tests using
different model names never interfere, and every request is recorded as a ``Call``. Gemini requests
are also checked as the real API checks them (``tests/fakes/gemini.py``) and refused with its 400
when they are not what it takes.

The builders below generate byte streams in each provider's real format (ids, framing, usage
chunks, obfuscation/whitespace padding, ``ping`` events, sequence numbers), parameterised by content.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import random
import secrets
import socket
import string
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

# --------------------------------------------------------------------------------------------------
# Script vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Write nothing for ``seconds`` (the connection stays open) before the next frame."""

    seconds: float


@dataclass(frozen=True)
class Cut:
    """Reset the TCP connection (RST) mid-body: the client sees a broken stream, not a clean end."""


Frame = bytes | str | Pause | Cut
"""One script step: bytes/str are written as one transport chunk and flushed immediately."""


@dataclass(frozen=True)
class Stream:
    """A streamed (chunked) response whose body is ``frames``."""

    frames: Sequence[Frame]
    status: int = 200
    headers: Mapping[str, str] | None = None
    content_type: str = "text/event-stream"


@dataclass(frozen=True)
class Status:
    """A complete JSON response, typically a provider error (see ``openai_error``/``anthropic_error``)."""

    code: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Hang:
    """Accept the request, send nothing at all (not even headers) for ``seconds``, then close."""

    seconds: float


Reply = Stream | Status | Hang


@dataclass
class Call:
    """One request received by the fake, as the server saw it."""

    path: str
    headers: dict[str, str]
    body: Any
    started: float
    finished: threading.Event = field(default_factory=threading.Event)
    """Set when the scripted reply ran to its end (including a final ``Cut``)."""
    disconnected: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed the connection before the scripted reply finished."""


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------

_ROUTES = ("/chat/completions", "/responses", "/messages")
OAUTH_TOKEN = "ya29.convoy-fake-token"  # what the fake's /token grants any service account
_TRANSPORT = "convoy.fake.transport"


class _TransportH11(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY, exposing the transport to the app (for ``Cut``/``Hang``).

    Without TCP_NODELAY, Nagle's algorithm meets the client's delayed ACKs on reused connections and
    holds small frames back for tens of milliseconds (and a `Cut` would then drop them).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        app = self.app

        async def with_transport(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})[_TRANSPORT] = transport
            await app(scope, receive, send)

        self.app = with_transport


@dataclass
class _Script:
    replies: deque[Reply]
    repeat: bool


class FakeProvider:
    """A local HTTP server answering OpenAI-, Anthropic- and Gemini-style requests from per-model scripts.

    Routes match on the path suffix (``.../chat/completions``, ``.../responses``, ``.../messages``,
    ``.../models/{model}:streamGenerateContent``), so any base-URL prefix works, e.g.
    ``url + "/compat/v1"`` for an OpenAI-compatible named provider.
    """

    def __init__(self) -> None:
        from tests.fakes.gemini import GeminiLedger  # imports this module

        self._gemini = GeminiLedger()
        self._cond = threading.Condition()
        self._scripts: dict[str, _Script] = {}
        self._calls: dict[str | None, list[Call]] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> Self:
        """Serve on a free 127.0.0.1 port from a daemon thread; returns once it accepts connections."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app, http=_TransportH11, loop="asyncio", lifespan="off", log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-provider-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake provider failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving; in-flight replies are abandoned (their connections are closed)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._port is None:
            raise RuntimeError("fake provider not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for the ``openai`` SDK / ``OPENAI_BASE_URL``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the ``anthropic`` SDK / ``ANTHROPIC_BASE_URL`` (the SDK appends ``/v1/messages``)."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """Base URL for the ``google-genai`` SDK / ``GOOGLE_GEMINI_BASE_URL`` (it appends
        ``/v1beta/models/{model}:streamGenerateContent``)."""
        return self.url

    # -- scripting and recording -------------------------------------------------------------------

    def script(self, model: str, *replies: Reply, repeat: bool = False) -> None:
        """Queue ``replies`` for requests with ``"model": model``, one per request, in order.

        With ``repeat=True`` the last queued reply is served again for every further request.
        """
        with self._cond:
            script = self._scripts.setdefault(model, _Script(deque(), repeat))
            script.replies.extend(replies)
            script.repeat = repeat

    def calls(self, model: str | None) -> list[Call]:
        """Requests received so far for ``model`` (``None``: requests without a model), oldest first."""
        with self._cond:
            return list(self._calls.get(model, ()))

    def wait_calls(self, model: str | None, n: int, timeout_s: float = 5.0) -> list[Call]:
        """Block until at least ``n`` requests for ``model`` arrived; returns them.

        Blocking: from async code run it via ``asyncio.to_thread`` so the client's loop keeps going.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._calls.get(model, ())) >= n, timeout_s):
                got = len(self._calls.get(model, ()))
                raise AssertionError(f"expected {n} calls for model {model!r} within {timeout_s}s, got {got}")
            return list(self._calls[model])

    def _next_reply(self, path: str, model: str | None) -> Reply:
        script = self._scripts.get(model) if model is not None else None
        if script is None or not script.replies:
            return _fake_error(path, 500, f"no script for model {model}")
        if script.repeat and len(script.replies) == 1:
            return script.replies[0]
        return script.replies.popleft()

    async def _handle(self, request: Request) -> _Player:
        from tests.fakes.gemini import gemini_model, invalid_argument

        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        path = request.url.path
        gemini = gemini_model(path)
        model = gemini if gemini is not None else body.get("model") if isinstance(body, dict) else None
        call = Call(path=path, headers=dict(request.headers), body=body, started=time.monotonic())
        with self._cond:
            self._calls.setdefault(model, []).append(call)
            reply: Reply
            if gemini is not None:
                refused = self._gemini.check(gemini, body)
                if request.query_params.get("alt") != "sse":
                    refused = invalid_argument("this fake streams only server-sent events (alt=sse)")
                reply = refused or self._next_reply(path, model)
                if isinstance(reply, Stream):
                    self._gemini.issue(gemini, reply)
            elif path.endswith(_ROUTES):
                reply = self._next_reply(path, model)
            elif path == "/token":  # Google's OAuth token endpoint, for Vertex AI's service accounts
                reply = Status(200, {"access_token": OAUTH_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
            else:
                reply = _fake_error(path, 404, f"fake provider has no route {path}")
            self._cond.notify_all()
        return _Player(reply, call)


def _fake_error(path: str, code: int, message: str) -> Status:
    """The fake's own errors, in the error shape of the provider the path belongs to."""
    if path.endswith(":streamGenerateContent"):
        from tests.fakes.gemini import gemini_error

        return gemini_error(code, "INTERNAL" if code >= 500 else "NOT_FOUND", message)
    if path.endswith("/messages"):
        return anthropic_error(code, "api_error" if code >= 500 else "not_found_error", message)
    return openai_error(code, message, "server_error" if code >= 500 else "invalid_request_error")


class _Player:
    """ASGI response that plays one ``Reply`` while watching for the client going away."""

    def __init__(self, reply: Reply, call: Call) -> None:
        self._reply = reply
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport: asyncio.Transport = scope["extensions"][_TRANSPORT]
        play = asyncio.ensure_future(self._play(send, transport))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({play, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            play.cancel()
        if play.done() and not play.cancelled():
            play.result()
        if self._call.finished.is_set():
            if transport.is_closing():
                await watch  # let uvicorn register the closed connection before we return
            watch.cancel()
        else:
            self._call.disconnected.set()

    async def _play(self, send: Send, transport: asyncio.Transport) -> None:
        reply = self._reply
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            self._call.finished.set()
            transport.close()
            return
        if isinstance(reply, Status):
            payload = json.dumps(reply.body).encode()
            headers = {"content-type": "application/json", "content-length": str(len(payload))}
            await _start(send, reply.code, {**headers, **(reply.headers or {})})
            await send({"type": "http.response.body", "body": payload, "more_body": False})
            self._call.finished.set()
            return
        headers = {"content-type": reply.content_type, "cache-control": "no-cache"}
        await _start(send, reply.status, {**headers, **(reply.headers or {})})
        for frame in reply.frames:
            if isinstance(frame, Pause):
                await asyncio.sleep(frame.seconds)
            elif isinstance(frame, Cut):
                await _reset(transport)
                self._call.finished.set()
                return
            else:
                chunk = frame.encode() if isinstance(frame, str) else frame
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._call.finished.set()


_SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in the socket's send queue not yet sent


async def _reset(transport: asyncio.Transport, flush_timeout_s: float = 1.0) -> None:
    """Send a TCP RST once every byte written so far has left the socket.

    An RST discards the sender's unsent bytes, so without this wait the frames just before a ``Cut``
    could vanish; bytes already sent stay readable by the client before it sees the reset.
    """
    sock = transport.get_extra_info("socket")
    deadline = time.monotonic() + flush_timeout_s
    while (transport.get_write_buffer_size() or _unsent_bytes(sock)) and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unsent_bytes(sock: socket.socket) -> int:
    queued = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, queued)
    return queued[0]


async def _start(send: Send, status: int, headers: Mapping[str, str]) -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def _until_disconnect(receive: Receive) -> None:
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()


# --------------------------------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------------------------------


def openai_error(
    code: int,
    message: str,
    type: str,
    err_code: str | None = None,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Status:
    """An OpenAI error response: ``{"error": {"message", "type", "param", "code"}}`` plus ``x-request-id``."""
    body = {"error": {"message": message, "type": type, "param": param, "code": err_code}}
    return Status(code, body, {"x-request-id": "req_" + secrets.token_hex(16), **(headers or {})})


def openai_context_length_error(maximum: int = 128000, requested: int = 130000) -> Status:
    """OpenAI's 400 for an over-long prompt (``code: context_length_exceeded``)."""
    message = (
        f"This model's maximum context length is {maximum} tokens. However, your messages resulted in "
        f"{requested} tokens. Please reduce the length of the messages."
    )
    return openai_error(400, message, "invalid_request_error", "context_length_exceeded", param="messages")


def anthropic_error(code: int, type: str, message: str, *, headers: Mapping[str, str] | None = None) -> Status:
    """An Anthropic error response: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    request_id = "req_011" + _rand(21)
    body = {"type": "error", "error": {"type": type, "message": message}, "request_id": request_id}
    return Status(code, body, {"request-id": request_id, **(headers or {})})


def anthropic_prompt_too_long(tokens: int = 210000, maximum: int = 200000) -> Status:
    """Anthropic's 400 for an over-long prompt (``invalid_request_error``, "prompt is too long: ...")."""
    return anthropic_error(400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {maximum} maximum")


# --------------------------------------------------------------------------------------------------
# Shared builder helpers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token counts, written as-is into each provider's own usage fields.

    OpenAI: prompt/input tokens include ``cached_tokens``; completion/output tokens include
    ``reasoning_tokens``. Anthropic: ``input_tokens`` excludes the cache counts (``cached_tokens`` is
    ``cache_read_input_tokens``, ``cache_write_tokens`` is ``cache_creation_input_tokens``).
    """

    input_tokens: int = 12
    output_tokens: int = 7
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0


ToolCall = tuple[str, ...]
"""``(id, name, *argument_fragments)``; the fragments concatenate to the JSON arguments."""

_ALNUM = string.ascii_letters + string.digits
_JSON_SEPARATORS = (",", ":")


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _obfuscation(payload: Mapping[str, Any], width: int) -> str:
    """OpenAI's ``obfuscation`` padding: random characters that blur the length of each delta."""
    rng = random.Random(json.dumps(payload, sort_keys=True))
    n = width - len(json.dumps(payload)) % width
    return "".join(rng.choice(_ALNUM) for _ in range(max(n, 2)))


def _data(payload: Mapping[str, Any]) -> bytes:
    """``data: <json>\\n\\n`` (OpenAI Chat Completions framing)."""
    return b"data: " + json.dumps(payload, separators=_JSON_SEPARATORS).encode() + b"\n\n"


def _event(name: str, payload: Mapping[str, Any], pad: int = 0) -> bytes:
    """``event: <name>\\ndata: <json>\\n\\n``; ``pad`` spaces before the final ``}`` (Anthropic does that)."""
    text = json.dumps(payload, separators=_JSON_SEPARATORS, ensure_ascii=False)
    if pad:
        text = text[:-1] + " " * pad + "}"
    return f"event: {name}\ndata: {text}\n\n".encode()


# --------------------------------------------------------------------------------------------------
# OpenAI Chat Completions
# --------------------------------------------------------------------------------------------------

_DONE = b"data: [DONE]\n\n"


def _chat_stream(
    model: str,
    deltas: Iterable[dict[str, Any]],
    finish: str,
    usage: Usage | None,
    include_usage_chunk: bool,
    obfuscate: bool,
) -> list[Frame]:
    base = {
        "id": "chatcmpl-" + _rand(29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }

    def chunk(choices: list[dict[str, Any]], usage_field: dict[str, Any] | None) -> bytes:
        payload: dict[str, Any] = {**base, "choices": choices}
        if usage is not None:
            payload["usage"] = usage_field
        if obfuscate:
            payload["obfuscation"] = _obfuscation(choices[0]["delta"] if choices else payload, 11)
        return _data(payload)

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    usage_body = None
    if usage is not None:
        usage_body = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": usage.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    frames: list[Frame] = [chunk([choice(delta)], None) for delta in deltas]
    if include_usage_chunk:
        frames.append(chunk([choice({}, finish)], None))
        if usage_body is not None:
            frames.append(chunk([], usage_body))
    else:
        frames.append(chunk([choice({}, finish)], usage_body))
    frames.append(_DONE)
    return frames


def chat_text(
    model: str,
    pieces: Sequence[str],
    *,
    finish: str = "stop",
    reasoning: Sequence[str] = (),
    usage: Usage | None = Usage(),
    include_usage_chunk: bool = True,
    obfuscate: bool = True,
) -> list[Frame]:
    """A Chat Completions text stream (``finish``: "stop", "length", "content_filter", ...).

    ``reasoning`` pieces come first as ``delta.reasoning_content`` (vLLM/DeepSeek-style compatible
    servers). With ``usage`` every chunk carries ``"usage": null`` and a final ``choices: []`` chunk
    carries the counts (OpenAI with ``stream_options.include_usage``); ``include_usage_chunk=False``
    instead puts the counts on the finish chunk (what several compatible servers do). ``usage=None``
    is a stream without usage at all.
    """
    deltas = [{"role": "assistant", "content": "", "refusal": None}]
    deltas += [{"content": None, "reasoning_content": piece} for piece in reasoning]
    deltas += [{"content": piece} for piece in pieces]
    return _chat_stream(model, deltas, finish, usage, include_usage_chunk, obfuscate)


def chat_length(model: str, pieces: Sequence[str], *, usage: Usage | None = Usage()) -> list[Frame]:
    """A Chat Completions stream cut short by ``max_tokens`` (``finish_reason: "length"``)."""
    return chat_text(model, pieces, finish="length", usage=usage)


def chat_refusal(model: str, pieces: Sequence[str], *, usage: Usage | None = Usage()) -> list[Frame]:
    """A Chat Completions refusal: ``delta.refusal`` fragments with ``content: null``, finish "stop"."""
    deltas = [{"role": "assistant", "content": None, "refusal": ""}]
    deltas += [{"refusal": piece} for piece in pieces]
    return _chat_stream(model, deltas, "stop", usage, True, True)


def chat_tool_calls(
    model: str,
    calls: Sequence[ToolCall],
    *,
    content: Sequence[str] = (),
    interleave: bool = False,
    finish: str = "tool_calls",
    usage: Usage | None = Usage(),
) -> list[Frame]:
    """A Chat Completions stream of (parallel) tool calls, ``finish_reason: "tool_calls"`` (or
    ``finish="length"``: the token limit cut the last call's arguments).

    Each call opens with ``{index, id, type, function: {name, arguments: ""}}`` and continues with
    ``function.arguments`` fragments keyed only by ``index``. OpenAI sends calls one after the other;
    ``interleave=True`` round-robins the fragments across calls, which a correct client also handles.
    Optional ``content`` text precedes the calls (as compatible servers do).
    """
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None, "refusal": None}]
    deltas += [{"content": piece} for piece in content]
    streams: list[list[dict[str, Any]]] = []
    for index, (call_id, name, *fragments) in enumerate(calls):
        opening = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        tail = [{"index": index, "function": {"arguments": fragment}} for fragment in fragments]
        streams.append([opening, *tail])
    if interleave:
        ordered = [tc for row in _round_robin(streams) for tc in row]
    else:
        ordered = [tc for stream in streams for tc in stream]
    deltas += [{"tool_calls": [tc]} for tc in ordered]
    return _chat_stream(model, deltas, finish, usage, True, True)


def _round_robin(streams: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    depth = max((len(s) for s in streams), default=0)
    return [[s[i] for s in streams if i < len(s)] for i in range(depth)]


# --------------------------------------------------------------------------------------------------
# OpenAI Responses
# --------------------------------------------------------------------------------------------------


class _Responses:
    """Accumulates a Responses API event stream (``event:`` + ``data:`` with ``sequence_number``)."""

    def __init__(self, model: str) -> None:
        self.frames: list[Frame] = []
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self._base: dict[str, Any] = {
            "id": "resp_" + secrets.token_hex(25),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "auto",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": {},
        }
        self.emit("response.created", response=self._base)
        self.emit("response.in_progress", response=self._base)

    def emit(self, type_: str, **fields: Any) -> None:
        payload = {"type": type_, "sequence_number": self._seq, **fields}
        if "delta" in fields:
            payload["obfuscation"] = _obfuscation({"delta": fields["delta"]}, 16)
        self._seq += 1
        self.frames.append(_event(type_, payload))

    def reasoning(self, summary: Sequence[Sequence[str]]) -> None:
        item_id, index = "rs_" + secrets.token_hex(25), len(self.output)
        self.emit(
            "response.output_item.added", output_index=index, item={"id": item_id, "type": "reasoning", "summary": []}
        )
        parts = []
        for summary_index, pieces in enumerate(summary):
            where = {"item_id": item_id, "output_index": index, "summary_index": summary_index}
            text = "".join(pieces)
            self.emit("response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""})
            for piece in pieces:
                self.emit("response.reasoning_summary_text.delta", **where, delta=piece)
            self.emit("response.reasoning_summary_text.done", **where, text=text)
            self.emit("response.reasoning_summary_part.done", **where, part={"type": "summary_text", "text": text})
            parts.append({"type": "summary_text", "text": text})
        self._item_done({"id": item_id, "type": "reasoning", "summary": parts})

    def message(self, pieces: Sequence[str], status: str = "completed") -> None:
        item_id, index = "msg_" + secrets.token_hex(25), len(self.output)
        item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        self.emit("response.output_item.added", output_index=index, item=item)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        self.emit("response.content_part.added", **where, part=_output_text(""))
        for piece in pieces:
            self.emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        text = "".join(pieces)
        self.emit("response.output_text.done", **where, text=text, logprobs=[])
        self.emit("response.content_part.done", **where, part=_output_text(text))
        self._item_done({**item, "status": status, "content": [_output_text(text)]})

    def function_call(self, call: ToolCall, *, cut: bool = False) -> None:
        """``cut``: the token limit stopped it mid-arguments (no ``arguments.done``; the item ends
        ``incomplete``)."""
        call_id, name, *fragments = call
        item_id, index = "fc_" + secrets.token_hex(25), len(self.output)
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }
        self.emit("response.output_item.added", output_index=index, item=item)
        for fragment in fragments:
            self.emit("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=fragment)
        arguments = "".join(fragments)
        if not cut:
            self.emit("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        self._item_done({**item, "status": "incomplete" if cut else "completed", "arguments": arguments})

    def _item_done(self, item: dict[str, Any]) -> None:
        self.emit("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)

    def end(self, type_: str, status: str, usage: Usage | None, **fields: Any) -> list[Frame]:
        response = {**self._base, "status": status, "output": self.output, **fields}
        if usage is not None:
            response["usage"] = {
                "input_tokens": usage.input_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                "total_tokens": usage.input_tokens + usage.output_tokens,
            }
        self.emit(type_, response=response)
        return self.frames


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def responses_text(model: str, pieces: Sequence[str], *, usage: Usage = Usage()) -> list[Frame]:
    """A Responses stream with one assistant message, ending in ``response.completed``."""
    stream = _Responses(model)
    stream.message(pieces)
    return stream.end("response.completed", "completed", usage)


def responses_reasoning_summary(
    model: str, summary: Sequence[Sequence[str]], pieces: Sequence[str], *, usage: Usage = Usage()
) -> list[Frame]:
    """A reasoning item streaming its summary parts (each a list of deltas), then a text message."""
    stream = _Responses(model)
    stream.reasoning(summary)
    stream.message(pieces)
    return stream.end("response.completed", "completed", usage)


def responses_function_call(
    model: str, calls: Sequence[ToolCall], *, incomplete: str | None = None, usage: Usage = Usage()
) -> list[Frame]:
    """One ``function_call`` output item per call: ``added`` (call_id, name), argument deltas, ``done``.

    ``incomplete`` (e.g. ``"max_output_tokens"``): the last call is cut mid-arguments and the stream
    ends in ``response.incomplete`` with that reason."""
    stream = _Responses(model)
    for i, call in enumerate(calls):
        stream.function_call(call, cut=incomplete is not None and i == len(calls) - 1)
    if incomplete is not None:
        return stream.end("response.incomplete", "incomplete", usage, incomplete_details={"reason": incomplete})
    return stream.end("response.completed", "completed", usage)


def responses_incomplete(
    model: str, pieces: Sequence[str], *, reason: str = "max_output_tokens", usage: Usage = Usage()
) -> list[Frame]:
    """A message cut short, ending in ``response.incomplete`` with ``incomplete_details.reason``."""
    stream = _Responses(model)
    stream.message(pieces, status="incomplete")
    return stream.end("response.incomplete", "incomplete", usage, incomplete_details={"reason": reason})


def responses_failed(
    model: str, *, code: str = "server_error", message: str = "The server had an error while processing your request."
) -> list[Frame]:
    """A stream that ends in ``response.failed`` carrying ``response.error`` (no output)."""
    stream = _Responses(model)
    return stream.end("response.failed", "failed", None, error={"code": code, "message": message})


def responses_error_event(
    model: str,
    *,
    code: str = "insufficient_quota",
    message: str = "You exceeded your current quota.",
    nested: bool = True,
) -> list[Frame]:
    """A top-level ``error`` event, then ``response.failed``.

    ``nested=True`` is the shape observed on the wire, ``{"type": "error", "error": {type, code, message,
    param}}``; ``nested=False`` is the documented one, ``{"type": "error", code, message, param}``.
    """
    stream = _Responses(model)
    if nested:
        stream.emit("error", error={"type": code, "code": code, "message": message, "param": None})
    else:
        stream.emit("error", code=code, message=message, param=None)
    return stream.end("response.failed", "failed", None, error={"code": code, "message": message})


# --------------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------------


class _Anthropic:
    """Accumulates an Anthropic Messages event stream (``event: X\\ndata: {...}``).

    Like the real API (not the documentation examples), payloads carry stray whitespace before their
    closing brace, and a ``ping`` follows the first ``content_block_start``.
    """

    def __init__(self, model: str, usage: Usage) -> None:
        self.frames: list[Frame] = []
        self._index = 0
        self._usage = usage
        self._input_usage = {
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
        }
        message = {
            "id": "msg_01" + _rand(22),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                **self._input_usage,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage.cache_write_tokens,
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": 1,
                "service_tier": "standard",
            },
        }
        self.emit("message_start", {"type": "message_start", "message": message})

    def emit(self, name: str, payload: Mapping[str, Any]) -> None:
        self.frames.append(_event(name, payload, pad=(len(self.frames) * 7) % 13))

    def block(
        self, content_block: Mapping[str, Any], deltas: Sequence[Mapping[str, Any]], *, stop: bool = True
    ) -> None:
        index = self._index
        start = {"type": "content_block_start", "index": index, "content_block": content_block}
        self.emit("content_block_start", start)
        if index == 0:
            self.frames.append(_event("ping", {"type": "ping"}))
        for delta in deltas:
            self.emit("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        if stop:
            self.emit("content_block_stop", {"type": "content_block_stop", "index": index})
        self._index += 1

    def text(self, pieces: Sequence[str], *, stop: bool = True) -> None:
        self.block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces], stop=stop)

    def tool_use(self, call: ToolCall) -> None:
        call_id, name, *fragments = call
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *fragments]]
        self.block({"type": "tool_use", "id": call_id, "name": name, "input": {}}, deltas)

    def end(self, stop_reason: str) -> list[Frame]:
        usage = {**self._input_usage, "output_tokens": self._usage.output_tokens}
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        self.emit("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        self.emit("message_stop", {"type": "message_stop"})
        return self.frames


def anthropic_text(
    model: str, pieces: Sequence[str], *, stop_reason: str = "end_turn", usage: Usage = Usage()
) -> list[Frame]:
    """A Messages text stream (``stop_reason``: end_turn, max_tokens, refusal, stop_sequence, ...)."""
    stream = _Anthropic(model, usage)
    stream.text(pieces)
    return stream.end(stop_reason)


def anthropic_thinking(
    model: str,
    thinking: Sequence[str],
    pieces: Sequence[str],
    *,
    signature: str = "EqQBCgIYAhIM" + "a1b2c3d4e5f6" * 6,
    usage: Usage = Usage(),
) -> list[Frame]:
    """Extended thinking: a ``thinking`` block (``thinking_delta``s then one ``signature_delta``), then text."""
    stream = _Anthropic(model, usage)
    deltas = [{"type": "thinking_delta", "thinking": p} for p in thinking]
    stream.block(
        {"type": "thinking", "thinking": "", "signature": ""},
        [*deltas, {"type": "signature_delta", "signature": signature}],
    )
    stream.text(pieces)
    return stream.end("end_turn")


def anthropic_redacted_thinking(model: str, data: str, pieces: Sequence[str], *, usage: Usage = Usage()) -> list[Frame]:
    """A ``redacted_thinking`` block (opaque ``data`` in the start event, no deltas), then text."""
    stream = _Anthropic(model, usage)
    stream.block({"type": "redacted_thinking", "data": data}, [])
    stream.text(pieces)
    return stream.end("end_turn")


def anthropic_tool_use(
    model: str,
    calls: Sequence[ToolCall],
    *,
    text: Sequence[str] = (),
    stop_reason: str = "tool_use",
    usage: Usage = Usage(),
) -> list[Frame]:
    """Optional text, then one ``tool_use`` block per call streamed as ``input_json_delta`` fragments."""
    stream = _Anthropic(model, usage)
    if text:
        stream.text(text)
    for call in calls:
        stream.tool_use(call)
    return stream.end(stop_reason)


def anthropic_error_event(
    model: str,
    pieces: Sequence[str],
    *,
    error_type: str = "overloaded_error",
    message: str = "Overloaded",
    usage: Usage = Usage(),
) -> list[Frame]:
    """Some text, then a mid-stream ``event: error``; the stream ends there (no block stop, no message_stop)."""
    stream = _Anthropic(model, usage)
    stream.text(pieces, stop=False)
    stream.emit("error", {"type": "error", "error": {"type": error_type, "message": message}})
    return stream.frames


# --------------------------------------------------------------------------------------------------
# Transport mutators
# --------------------------------------------------------------------------------------------------


def split_frames(frames: Sequence[Frame], every: int) -> list[Frame]:
    """Re-chunk the byte stream into ``every``-byte writes, ignoring line/event/UTF-8 boundaries.

    ``Pause``/``Cut`` keep their position; bytes between them are concatenated and re-split.
    """
    out: list[Frame] = []
    pending = b""

    def flush() -> None:
        out.extend(pending[i : i + every] for i in range(0, len(pending), every))

    for frame in frames:
        if isinstance(frame, (Pause, Cut)):
            flush()
            pending = b""
            out.append(frame)
        else:
            pending += frame.encode() if isinstance(frame, str) else frame
    flush()
    return out


KEEPALIVE = b": keep-alive\n\n"


def with_keepalives(frames: Sequence[Frame], comment: bytes = KEEPALIVE) -> list[Frame]:
    """Insert an SSE comment line before every frame (apply to whole-event frames, before splitting)."""
    out: list[Frame] = []
    for frame in frames:
        out += [comment, frame]
    return out


def paced(frames: Sequence[Frame], seconds: float) -> list[Frame]:
    """Insert ``Pause(seconds)`` between consecutive frames."""
    out: list[Frame] = []
    for frame in frames:
        if out:
            out.append(Pause(seconds))
        out.append(frame)
    return out


def cut_after(frames: Sequence[Frame], n: int) -> list[Frame]:
    """The first ``n`` frames, then ``Cut()``: the connection breaks mid-stream."""
    return [*frames[:n], Cut()]
