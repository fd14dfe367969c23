"""``FakeProvider``: one local HTTP server that answers as OpenAI, Anthropic and Gemini do.

It serves the tests, the benchmarks and the soak alike: requests to ``.../chat/completions``,
``.../responses``, ``.../messages`` and ``.../models/{model}:streamGenerateContent`` (any base-URL
prefix, e.g. ``/compat/v1`` for an OpenAI-compatible named provider) are answered from per-model
scripts (``script``) or, for a model with none, by a ``respond`` function given the request (the
soak's model, the benchmarks' paced streams); ``GET .../models`` lists ``listed_models``, as a
compatible server lists its own. Every request is recorded as a ``Call``. Gemini requests are also
checked as the real API checks them (``bench.upstream.gemini``) and refused with
its 400 when they are not what it takes.

The server is plain asyncio with ``h11`` for HTTP/1.1 (keep-alive, chunked bodies), in a daemon
thread of its own, so it owns its sockets: ``TCP_NODELAY`` on every connection (Nagle's algorithm
meeting a client's delayed ACKs would hold small frames back for tens of milliseconds), a ``Cut``
that resets the connection only once every byte written before it has left, and a client going
away noticed while a reply plays (``Call.disconnected``).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import h11

from bench.upstream.anthropic import anthropic_error
from bench.upstream.gemini import GeminiLedger, gemini_error, gemini_model, invalid_argument
from bench.upstream.openai_chat import openai_error
from bench.upstream.script import Call, Cut, Hang, Pause, Reply, Status, Stream

ROUTES = ("/chat/completions", "/responses", "/messages")
OAUTH_TOKEN = "ya29.convoy-fake-token"
LISTED_CREATED = 1_700_000_000  # the ``created`` of every model GET .../models lists  # what the fake's /token grants any service account
START_TIMEOUT_S = 10.0
READ_BYTES = 64 * 1024
CUT_FLUSH_TIMEOUT_S = 1.0
LISTEN_BACKLOG = 4096
_SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in a socket's send queue not yet sent

Respond = Callable[[Call], Reply]


@dataclass
class _Script:
    replies: deque[Reply]
    repeat: bool


class FakeProvider:
    """A local HTTP server answering OpenAI-, Anthropic- and Gemini-style requests (module docstring)."""

    def __init__(self, respond: Respond | None = None) -> None:
        self._respond = respond
        self.listed_models: list[str] = []  # what GET .../models answers (OpenAI's list shape)
        self._gemini = GeminiLedger()
        self._cond = threading.Condition()
        self._scripts: dict[str, _Script] = {}
        self._calls: dict[str | None, list[Call]] = {}
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        """Serve on a free 127.0.0.1 port from a daemon thread; returns once it accepts connections."""
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), name="fake-provider", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or self._port is None:
            raise RuntimeError("fake provider failed to start")
        return self

    def stop(self) -> None:
        """Stop serving; replies still playing are abandoned (their connections are closed)."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await _Connection(self, reader, writer).serve()
            finally:
                connections.discard(task)

        # A deep accept queue: asyncio's default (100) drops the connections a burst of clients opens
        # beyond it, and each one dropped is retried by its client only a second later.
        server = await asyncio.start_server(accepted, "127.0.0.1", 0, backlog=LISTEN_BACKLOG)
        self._port = int(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await self._stopping.wait()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    # -- where it is --------------------------------------------------------------------------------

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
        """Queue ``replies`` for requests for ``model``, one per request, in order. With
        ``repeat=True`` the last queued reply is served again for every further request."""
        with self._cond:
            script = self._scripts.setdefault(model, _Script(deque(), repeat))
            script.replies.extend(replies)
            script.repeat = repeat

    def calls(self, model: str | None) -> list[Call]:
        """Requests received so far for ``model`` (``None``: requests without a model), oldest first."""
        with self._cond:
            return list(self._calls.get(model, ()))

    def all_calls(self) -> list[Call]:
        """Every request received so far, of any model."""
        with self._cond:
            return [call for calls in self._calls.values() for call in calls]

    def wait_calls(self, model: str | None, n: int, timeout_s: float = 5.0) -> list[Call]:
        """Block until at least ``n`` requests for ``model`` arrived; returns them. From async code,
        run it in a thread (``asyncio.to_thread``) so the caller's loop keeps going."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._calls.get(model, ())) >= n, timeout_s):
                got = len(self._calls.get(model, ()))
                raise AssertionError(f"expected {n} calls for model {model!r} within {timeout_s}s, got {got}")
            return list(self._calls[model])

    def _reply_to(self, path: str, query: str, headers: dict[str, str], raw: bytes) -> tuple[Reply, Call]:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        gemini = gemini_model(path)
        model = gemini if gemini is not None else body.get("model") if isinstance(body, dict) else None
        call = Call(path=path, headers=headers, body=body, started=time.monotonic())
        with self._cond:
            self._calls.setdefault(model, []).append(call)
            reply: Reply
            if gemini is not None:
                refused = self._gemini.check(gemini, body)
                if parse_qs(query).get("alt") != ["sse"]:
                    refused = invalid_argument("this fake streams only server-sent events (alt=sse)")
                reply = refused or self._next_reply(call, model)
                if isinstance(reply, Stream) and isinstance(reply.frames, Sequence):
                    self._gemini.issue(gemini, reply)
            elif path.endswith(ROUTES):
                reply = self._next_reply(call, model)
            elif path.endswith("/models"):  # an OpenAI-compatible server's model list
                listed = [{"id": m, "object": "model", "created": LISTED_CREATED, "owned_by": "fake"} for m in self.listed_models]
                reply = Status(200, {"object": "list", "data": listed})
            elif path == "/token":  # Google's OAuth token endpoint, for Vertex AI's service accounts
                reply = Status(200, {"access_token": OAUTH_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
            else:
                reply = fake_error(path, 404, f"fake provider has no route {path}")
            self._cond.notify_all()
        return reply, call

    def _next_reply(self, call: Call, model: str | None) -> Reply:
        script = self._scripts.get(model) if model is not None else None
        if script is None or not script.replies:
            if self._respond is not None:
                return self._respond(call)
            return fake_error(call.path, 500, f"no script for model {model}")
        if script.repeat and len(script.replies) == 1:
            return script.replies[0]
        return script.replies.popleft()


def fake_error(path: str, code: int, message: str) -> Status:
    """The fake's own errors, in the error shape of the provider the path belongs to."""
    if path.endswith(":streamGenerateContent"):
        return gemini_error(code, "INTERNAL" if code >= 500 else "NOT_FOUND", message)
    if path.endswith("/messages"):
        return anthropic_error(code, "api_error" if code >= 500 else "not_found_error", message)
    return openai_error(code, message, "server_error" if code >= 500 else "invalid_request_error")


class _Connection:
    """One client connection: requests read one after the other (keep-alive), each answered by
    playing its reply while the connection is watched for the client going away."""

    def __init__(self, provider: FakeProvider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._provider = provider
        self._reader = reader
        self._writer = writer
        self._http = h11.Connection(h11.SERVER)
        self._headers: dict[str, str] = {}
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def serve(self) -> None:
        try:
            while True:
                request = await self._request()
                if request is None:
                    return
                target, raw = request
                split = urlsplit(target)
                reply, call = self._provider._reply_to(split.path, split.query, self._headers, raw)
                if not await self._answer(reply, call):
                    return
                if self._http.our_state is not h11.DONE or self._http.their_state is not h11.DONE:
                    return
                self._http.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            self._writer.close()

    async def _request(self) -> tuple[str, bytes] | None:
        """The next request's target and body; None once the client is gone."""
        target = ""
        body = bytearray()
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(READ_BYTES)
                self._http.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                target = event.target.decode()
                self._headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return target, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(self, reply: Reply, call: Call) -> bool:
        """Play ``reply``; whether the connection can take another request."""
        play = asyncio.ensure_future(self._play(reply, call))
        watch = asyncio.ensure_future(self._until_gone())
        try:
            await asyncio.wait({play, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            play.cancel()
            watch.cancel()
            await asyncio.gather(play, watch, return_exceptions=True)
        if play.done() and not play.cancelled() and play.exception() is None:
            return play.result()
        call.disconnected.set()
        return False

    async def _until_gone(self) -> None:
        """Read while a reply plays: EOF means the client left (anything else is kept for h11)."""
        while data := await self._reader.read(READ_BYTES):
            self._http.receive_data(data)

    async def _play(self, reply: Reply, call: Call) -> bool:
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            call.finished.set()
            return False
        if isinstance(reply, Status):
            payload = json.dumps(reply.body).encode()
            headers = {"content-type": "application/json", "content-length": str(len(payload)), **(reply.headers or {})}
            await self._send(h11.Response(status_code=reply.code, headers=_encoded(headers)))
            await self._send(h11.Data(data=payload))
            await self._send(h11.EndOfMessage())
            call.finished.set()
            return True
        headers = {"content-type": reply.content_type, "cache-control": "no-cache", **(reply.headers or {})}
        await self._send(h11.Response(status_code=reply.status, headers=_encoded(headers)))
        frames = reply.frames
        iterator = frames if isinstance(frames, AsyncIterable) else _iterate(frames)
        async for frame in iterator:
            if isinstance(frame, Pause):
                await asyncio.sleep(frame.seconds)
            elif isinstance(frame, Cut):
                await self._reset()
                call.finished.set()
                return False
            else:
                await self._send(h11.Data(data=frame.encode() if isinstance(frame, str) else frame))
        await self._send(h11.EndOfMessage())
        call.finished.set()
        return True

    async def _send(self, event: h11.Event) -> None:
        data = self._http.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _reset(self) -> None:
        """A TCP RST once every byte written so far has left the socket: an RST discards the
        sender's unsent bytes, so without this wait the frames just before a ``Cut`` could vanish."""
        transport = self._writer.transport
        sock = self._writer.get_extra_info("socket")
        deadline = time.monotonic() + CUT_FLUSH_TIMEOUT_S
        while (transport.get_write_buffer_size() or _unsent_bytes(sock)) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


async def _iterate(frames: Any) -> Any:
    for frame in frames:
        yield frame


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _unsent_bytes(sock: Any) -> int:
    queued = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, queued)
    return queued[0]
