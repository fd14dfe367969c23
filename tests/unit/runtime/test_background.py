"""``forever``: a loop that outlives its steps' failures, and ends when a step says its work is done."""

from __future__ import annotations

import asyncio
import contextlib

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
    async with asyncio.timeout(5):  # a loop that never beats fails here instead of hanging the suite
        while beats < 5:
            await asyncio.sleep(0.001)
    loop.cancel()
    assert (await asyncio.gather(loop, return_exceptions=True))[0].__class__ is asyncio.CancelledError


async def test_a_loop_whose_step_absorbed_its_cancellation_still_ends() -> None:
    """redis-py's cluster client can take a cancellation that lands mid-command for a dropped
    connection and send the command again: the step then returns as if nothing happened. Stopping
    a host cancels its loops and waits for them, so a loop that went on would hang that stop."""
    reading = asyncio.Event()
    reads = 0

    async def read() -> float:
        nonlocal reads
        reads += 1
        reading.set()
        # Absorbed: the client read again, and this time it answered.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)  # a blocking read
        return 0.0

    loop = asyncio.create_task(forever("doorbell", read))
    await asyncio.wait_for(reading.wait(), 5)
    loop.cancel()
    done, _ = await asyncio.wait({loop}, timeout=5)  # not wait_for: it would cancel the loop again
    assert loop in done, "the loop went on after it was cancelled"
    assert loop.cancelled() and reads == 1
