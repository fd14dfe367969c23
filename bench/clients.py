"""Client processes: the benchmarks' load comes from processes of their own, so the client is never
the bottleneck nor a cost counted as Convoy's (``convoy bench scale`` and ``convoy bench streams``).

``ClientProcesses`` spawns one process per share of the work (``split``: round-robin, so each share
is alike), each running a module-level ``target(*args, results)`` that puts exactly one result on
``results`` when it is done. Processes are spawned, not forked: the driver holds Ray, Redis
connections and threads a fork would copy half-alive. Each child dies with the driver (parent-death
signal), and ``stop`` (also on leaving a ``with``) ends the ones still running, so none outlives a
run, also one stopped early. By their ``pids``, a report reads the CPU each one used
(``bench.process_cpu_s``), to show the client's own cost apart from the server's, and how long each
was runnable (``bench.runnable_s``: on a CPU or waiting for one), to show the busiest process's
share of the time (``busiest``): near 100%, that client never waited for work and was the limit.
On a machine whose cores are all busy, CPU alone would not show it (a saturated process gets only
its share).

``sse_frames`` is how every benchmark client reads an SSE response: the complete frames of each
read of the socket, stamped when the read returned (a per-token latency is that stamp minus the
writer's). Frames are split by hand rather than by an SSE library: the stamp must be the read's,
and the client's CPU per frame is what keeps it from being the bottleneck.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from types import TracebackType
from typing import Any

import httpx

PR_SET_PDEATHSIG = 1
JOIN_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 10.0


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into at most ``parts`` non-empty shares."""
    return [share for share in (list(items[i::parts]) for i in range(max(1, parts))) if share]


def busiest(before: Sequence[float], after: Sequence[float], span_s: float) -> float:
    """The largest share of ``span_s`` one process used between two readings (``cpu_s`` or
    ``runnable_s``)."""
    return max((b - a for a, b in zip(before, after, strict=True)), default=0.0) / max(1e-9, span_s)


async def sse_frames(
    response: httpx.Response, clock: Callable[[], int] = time.perf_counter_ns
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """``(clock(), frames)`` for each read of ``response``'s body: the SSE frames it completed (a
    frame split over two reads comes with the second)."""
    tail = b""
    async for chunk in response.aiter_raw():
        now_ns = clock()
        frames = (tail + chunk).split(b"\n\n")
        tail = frames.pop()
        yield now_ns, frames


def _die_with_parent(target: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    target(*args)


class ClientProcesses:
    """Spawned client processes, one per share, and the queue their results come back on."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.results: Queue[Any] = self._ctx.Queue()
        self._processes: list[BaseProcess] = []

    def queue(self) -> Queue[Any]:
        """Another queue the processes can share with the driver (e.g. to say they are ready)."""
        return self._ctx.Queue()

    def start(self, target: Callable[..., None], argsets: Sequence[tuple[Any, ...]]) -> None:
        """One process per ``argsets`` entry, running ``target(*args, self.results)``."""
        for args in argsets:
            process = self._ctx.Process(target=_die_with_parent, args=(target, *args, self.results), daemon=True)
            process.start()
            self._processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def gather(self, timeout_s: float) -> list[Any]:
        """One result from each process (``queue.Empty`` if one is not there within ``timeout_s``
        of the previous), then the processes joined."""
        found = [self.results.get(timeout=timeout_s) for _ in self._processes]
        for process in self._processes:
            process.join(timeout=JOIN_TIMEOUT_S)
        return found

    def stop(self) -> None:
        """End the processes still running."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=JOIN_TIMEOUT_S)
        self._processes = []

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def counted(ticks: Queue[int], total: int, what: str, say: Callable[[str], None]) -> Iterator[None]:
    """While the body runs, say every ``PROGRESS_EVERY_S`` how far the client processes have got:
    each puts on ``ticks`` how many more it has done (``what``: e.g. "created")."""
    done = 0
    stop = threading.Event()
    started = time.monotonic()

    def report() -> None:
        nonlocal done
        next_at = started + PROGRESS_EVERY_S
        while not stop.is_set():
            with contextlib.suppress(queue.Empty):
                done += ticks.get(timeout=0.5)
            if time.monotonic() >= next_at:
                next_at += PROGRESS_EVERY_S
                rate = done / (time.monotonic() - started)
                say(f"{what} {done:,} of {total:,} ({rate:,.0f}/s)")

    thread = threading.Thread(target=report, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
