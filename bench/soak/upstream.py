"""The soak's model: an OpenAI-compatible Chat Completions server scripted by what it is asked.

- a request offering tools whose last message is the user's calls the first tool once (the
  soak offers a client tool, so the run stops with ``requires_approval``);
- otherwise it answers with one word per word of the last user message (at least
  ``MIN_REPLY_WORDS``), at ``rate_hz`` words per second, so a client decides how long a turn lasts.

It counts what happened, so the report can show that cancels reached the model: a response whose
connection Convoy closed before the end is ``cut``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from bench.providers import LocalServer

MIN_REPLY_WORDS = 3


@dataclass
class UpstreamCounts:
    requests: int = 0
    tool_calls: int = 0
    finished: int = 0
    cut: int = 0


@dataclass
class ScriptedUpstream:
    rate_hz: float
    counts: UpstreamCounts = field(default_factory=UpstreamCounts)
    url: str = ""
    _local: LocalServer | None = None

    def start(self) -> None:
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._local = LocalServer(app, name="soak-upstream")
        self.url = self._local.start()

    def stop(self) -> None:
        if self._local is not None:
            self._local.stop()

    async def _chat(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.counts.requests += 1
        last = body["messages"][-1]
        tools = body.get("tools") or []
        if tools and last["role"] == "user":
            self.counts.tool_calls += 1
            frames = _tool_call(body["model"], tools[0]["function"]["name"], f"call-{self.counts.requests}")
        else:
            words = max(MIN_REPLY_WORDS, len(str(last.get("content") or "").split()))
            frames = _text(body["model"], words, self.rate_hz)
        return StreamingResponse(self._counted(frames), media_type="text/event-stream")

    async def _counted(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for frame in frames:
                yield frame
            finished = True
        finally:
            if finished:
                self.counts.finished += 1
            else:
                self.counts.cut += 1


def _chunk(
    model: str, delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    doc = {
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": usage,
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _ending(model: str, finish: str, completion_tokens: int) -> list[bytes]:
    usage = {"prompt_tokens": 1, "completion_tokens": completion_tokens, "total_tokens": completion_tokens + 1}
    return [_chunk(model, {}, finish=finish), _chunk(model, None, usage=usage), b"data: [DONE]\n\n"]


async def _text(model: str, words: int, rate_hz: float) -> AsyncIterator[bytes]:
    yield _chunk(model, {"role": "assistant", "content": ""})
    start = time.perf_counter()
    for i in range(words):
        await asyncio.sleep(max(0.0, start + i / rate_hz - time.perf_counter()))
        yield _chunk(model, {"content": f"w{i} "})
    for frame in _ending(model, "stop", words):
        yield frame


async def _tool_call(model: str, name: str, call_id: str) -> AsyncIterator[bytes]:
    call = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    yield _chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]})
    yield _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "soak"}'}}]})
    for frame in _ending(model, "tool_calls", 1):
        yield frame
