"""Sync tools run on threads of their own: a hung one never takes the event loop's default executor
(``getaddrinfo``, the SDKs' path to a new provider connection, runs there), and a full pool is an
error result, not a hang."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Iterator

import pytest

from runtime.tools.registry import ToolRegistry

HUNG_TIMEOUT_S = 0.2
PROMPT_S = 2.0  # what "at once" allows on a loaded 2-core machine
RELEASE_S = 30.0  # a hung tool gives up after this, should a test fail before releasing it


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of each test: the hung tools' threads then return."""
    event = threading.Event()
    yield event
    event.set()


def _registry(release: threading.Event, **options: int) -> ToolRegistry:
    registry = ToolRegistry(**options)

    @registry.register(timeout_s=HUNG_TIMEOUT_S)
    def fetch(url: str) -> str:
        """A blocking fetch from a server that never answers."""
        release.wait(RELEASE_S)
        return "late"

    @registry.register(timeout_s=PROMPT_S)
    def add(a: int, b: int) -> int:
        """Fast."""
        return a + b

    return registry


async def _prompt_getaddrinfo() -> float:
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo("localhost", 443), PROMPT_S)
    return time.perf_counter() - started


async def test_hung_sync_tools_leave_the_default_executor_and_other_sync_tools_alone(release: threading.Event) -> None:
    """Regression (G2): as many hung sync calls as the default executor has threads made every
    other sync tool time out without running, and blocked ``loop.getaddrinfo``."""
    registry = _registry(release)  # the registry as the process builds it: default threads
    default_executor_threads = min(32, (os.cpu_count() or 1) + 4)
    hung = await asyncio.gather(*(registry.run("fetch", '{"url": "http://x"}') for _ in range(default_executor_threads)))
    assert {r.text for r in hung} == {f"fetch timed out after {HUNG_TIMEOUT_S:g}s"}

    await _prompt_getaddrinfo()
    result = await registry.run("add", '{"a": 1, "b": 2}')
    assert (result.status, result.text) == ("success", "3")


async def test_a_full_pool_is_an_error_result_at_once_not_a_hang(release: threading.Event) -> None:
    registry = _registry(release, sync_threads=2)
    await asyncio.gather(*(registry.run("fetch", '{"url": "http://x"}') for _ in range(2)))

    started = time.perf_counter()
    result = await registry.run("add", '{"a": 1, "b": 2}')
    assert result.status == "error" and result.failure == "unavailable"
    assert "all 2 threads for sync tools are held by calls still running past their timeouts" in result.text
    assert time.perf_counter() - started < HUNG_TIMEOUT_S, "refused at once, without waiting for a thread"
    await _prompt_getaddrinfo()

    release.set()  # the hung calls return and give their threads back: sync tools run again
    deadline = time.perf_counter() + PROMPT_S
    while (result := await registry.run("add", '{"a": 1, "b": 2}')).status != "success" and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)  # polling a condition, with a bound
    assert result.text == "3"


async def test_a_call_that_finds_every_thread_busy_waits_within_its_timeout_and_never_runs_late(
    release: threading.Event,
) -> None:
    registry = _registry(release, sync_threads=1)
    ran: list[str] = []
    slow_started = threading.Event()

    @registry.register(timeout_s=PROMPT_S * 2)
    def slow() -> str:
        """Busy, within its timeout."""
        slow_started.set()
        release.wait(RELEASE_S)
        return "slow done"

    @registry.register(timeout_s=HUNG_TIMEOUT_S)
    def note() -> str:
        """Records that it ran."""
        ran.append("note")
        return "noted"

    busy = asyncio.create_task(registry.run("slow", "{}"))
    assert await asyncio.to_thread(slow_started.wait, PROMPT_S), "the pool's one thread is busy"
    queued = await registry.run("note", "{}")
    assert queued.failure == "timeout"
    assert queued.text == f"note did not start within its {HUNG_TIMEOUT_S:g}s: all 1 threads for sync tools were busy"
    release.set()
    assert (await busy).text == "slow done"
    assert (await registry.run("add", '{"a": 2, "b": 2}')).text == "4"
    assert ran == [], "a call given up before it started never runs"


async def test_a_sync_tool_sees_its_callers_context() -> None:
    """As with ``asyncio.to_thread``: what a tool logs carries the run it belongs to."""
    run = contextvars.ContextVar("run", default="none")
    registry = ToolRegistry()

    @registry.register
    def which() -> str:
        """Which run calls."""
        return run.get()

    run.set("run-1")
    assert (await registry.run("which", "{}")).text == "run-1"
