"""The model behind ``convoy bench scale``: the one fake provider (``bench.upstream``), speaking OpenAI
Chat Completions, answering every request with ``tokens`` tokens at ``rate_hz``, each token's text
the wall-clock time (ns) at which it is written and a space, so a client on this machine knows each token's
latency when it reads it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from bench.upstream import Call, FakeProvider, Reply, Stream

MODEL = "stamped"


class StampingUpstream:
    def __init__(self, tokens: int, rate_hz: float) -> None:
        self.tokens = tokens
        self.rate_hz = rate_hz
        self._fake = FakeProvider(respond=self._respond)
        self.url = ""

    def start(self) -> StampingUpstream:
        self.url = self._fake.start().url
        return self

    def stop(self) -> None:
        self._fake.stop()

    def _respond(self, call: Call) -> Reply:
        return Stream(self._chat(str(call.body["model"])))

    async def _chat(self, model: str) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, object], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
            doc = {
                "id": f"chatcmpl-{created}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
                "usage": usage,
            }
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        interval, start = 1 / self.rate_hz, time.perf_counter()
        for i in range(self.tokens):
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
            yield chunk({"content": f"{time.time_ns()} "})
        yield chunk({}, finish="stop")
        yield chunk({}, usage={"prompt_tokens": 1, "completion_tokens": self.tokens, "total_tokens": self.tokens + 1})
        yield b"data: [DONE]\n\n"
