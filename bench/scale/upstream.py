"""The model behind ``convoy bench scale``: the one fake provider (``bench.upstream``), speaking OpenAI
Chat Completions, answering every request with ``tokens`` tokens at ``rate_hz``, each token's text
the wall-clock time (ns) at which it is written and a space, so a client on this machine knows each token's
latency when it reads it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from bench.upstream import Call, FakeProvider, Reply, Stream
from bench.upstream.openai_chat import chat_live

MODEL = "stamped"


class StampingUpstream:
    def __init__(self, tokens: int, rate_hz: float) -> None:
        self.tokens = tokens
        self.rate_hz = rate_hz
        self._fake = FakeProvider(respond=self._respond)
        self.url = ""
        # Per request, from its arrival to its first token's write: this upstream's own delay, which
        # a benchmark subtracts from a time to first token (its one thread serves every stream).
        self.first_token_delays_s: list[float] = []

    def start(self) -> StampingUpstream:
        self.url = self._fake.start().url
        return self

    def stop(self) -> None:
        self._fake.stop()

    def _respond(self, call: Call) -> Reply:
        return Stream(chat_live(str(call.body["model"]), self._stamps(time.perf_counter()), completion_tokens=self.tokens))

    async def _stamps(self, arrived: float) -> AsyncIterator[str]:
        interval, start = 1 / self.rate_hz, time.perf_counter()
        for i in range(self.tokens):
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
            if i == 0:
                self.first_token_delays_s.append(time.perf_counter() - arrived)
            yield f"{time.time_ns()} "
