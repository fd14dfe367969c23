"""``forever``: a loop that outlives its steps' failures, and ends when a step says its work is done."""

from __future__ import annotations

import asyncio

from redis.backoff import NoBackoff

from runtime.background import forever


async def test_a_step_that_returns_none_ends_the_loop_after_the_failures_before_it() -> None:
    calls: list[int] = []

    async def start() -> None:
        calls.append(len(calls))
        if len(calls) < 3:
            raise RuntimeError("not yet")

    await asyncio.wait_for(forever("start", start, retry=NoBackoff()), 5)
    assert calls == [0, 1, 2]


async def test_a_periodic_step_runs_until_cancelled() -> None:
    beats = 0

    async def beat() -> float:
        nonlocal beats
        beats += 1
        return 0.001

    loop = asyncio.create_task(forever("beat", beat))
    while beats < 5:
        await asyncio.sleep(0.001)
    loop.cancel()
    assert (await asyncio.gather(loop, return_exceptions=True))[0].__class__ is asyncio.CancelledError
