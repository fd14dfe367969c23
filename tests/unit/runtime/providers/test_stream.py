"""The stream deadlines (``runtime.providers.stream``): a provider that goes silent past the first-token
or the idle deadline fails the step; time the reader spends between events never counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from runtime.errors import LLMTimeoutError
from runtime.providers.events import LLMEvent, LLMRequest, TextDelta
from runtime.providers.stream import StreamPolicy, guarded

POLICY = StreamPolicy(first_token_s=0.3, idle_s=0.2, retries=0)
REQUEST = LLMRequest(model="m", system="")


def provider(gaps_s: list[float]) -> AsyncGenerator[LLMEvent, None]:
    """A provider that waits ``gaps_s[i]`` before its i-th token."""

    async def stream(_: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        for i, gap in enumerate(gaps_s):
            await asyncio.sleep(gap)
            yield TextDelta(text=f"t{i} ")

    return stream  # type: ignore[return-value]


async def read(gaps_s: list[float], reader_pause_s: float = 0.0) -> list[str]:
    got: list[str] = []
    async for event in guarded(provider(gaps_s), REQUEST, provider="p", policy=POLICY):
        assert isinstance(event, TextDelta)
        got.append(event.text)
        await asyncio.sleep(reader_pause_s)
    return got


async def test_a_provider_within_its_deadlines_streams_everything() -> None:
    assert await read([0.05, 0.1, 0.15, 0.1]) == ["t0 ", "t1 ", "t2 ", "t3 "]


async def test_a_reader_slower_than_the_idle_deadline_is_not_a_stalled_provider() -> None:
    assert await read([0.0] * 4, reader_pause_s=0.3) == ["t0 ", "t1 ", "t2 ", "t3 "]
    # Each wait after a slow read has the idle deadline from its own start.
    assert await read([0.0, 0.1, 0.1], reader_pause_s=0.3) == ["t0 ", "t1 ", "t2 "]


async def test_no_first_token_in_time_fails_with_a_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(LLMTimeoutError, match=r"no first token within 0\.3s"):
        await read([1.0])
    assert time.monotonic() - started < 0.9  # it did not wait for the token


async def test_a_gap_past_the_idle_deadline_fails_after_tokens_were_read() -> None:
    got: list[str] = []
    with pytest.raises(LLMTimeoutError, match=r"no token for 0\.2s"):
        async for event in guarded(provider([0.0, 0.1, 0.1, 1.0]), REQUEST, provider="p", policy=POLICY):
            assert isinstance(event, TextDelta)
            got.append(event.text)
    assert got == ["t0 ", "t1 ", "t2 "]


async def test_a_timeout_leaves_the_reading_task_usable() -> None:
    with pytest.raises(LLMTimeoutError):
        await read([1.0])
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # not cancelled by a stale request
