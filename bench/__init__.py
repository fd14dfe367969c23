"""Benchmarks behind ``convoy bench ...``: they measure and print figures, and assert nothing.

Each benchmark is one module (``bench.actors``: what a conversation costs as a virtual actor;
``bench.streams``: what a chunk's trip from writer to client costs). This package holds what
they share: nearest-rank percentiles, a progress printer (stderr, so the figures on stdout stay
clean enough to paste), a report that prints what was measured also when a run stops early,
memory and CPU readings of a process and of the machine (Linux /proc; zeros elsewhere), a free
port and a bounded wait (also the tests'), and client processes (``bench.clients``).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
ERRORS_SHOWN = 5
LABEL_WIDTH = 52


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition, timeout_s: float, interval_s: float = 0.05, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it returns a truthy value (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def process_memory(pid: int | None = None) -> dict[str, int]:
    """``rss_bytes`` and ``pss_bytes`` of process ``pid`` (default: this one) from Linux
    ``smaps_rollup``; zeros elsewhere, or when the process is gone.

    RSS counts every shared page (Python, Ray's libraries) in full in each process; PSS divides a
    shared page among the processes mapping it, so PSS is the fairer cost of one more process.
    """
    found = {"rss_bytes": 0, "pss_bytes": 0}
    try:
        with open(f"/proc/{pid or 'self'}/smaps_rollup") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    found[f"{name.lower()}_bytes"] = int(rest.split()[0]) * KIB
    except OSError:
        pass
    return found


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; 0 when it is gone or unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runnable_s(pid: int) -> dict[int, float]:
    """Seconds each thread of process ``pid`` has been runnable so far, by thread id: on a CPU, or
    ready and waiting for one (Linux ``schedstat``). Over a window, a thread near 100% (an event
    loop's, say) never waited for work: saturated, even when a busy machine gave it little CPU.
    Empty when unknown."""
    found: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                on_cpu_ns, waiting_ns, _ = stat.read().split()
                found[int(tid)] = (int(on_cpu_ns) + int(waiting_ns)) / 1e9
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, whoever used them)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Progress:
    """Progress lines on stderr, stamped with the seconds since the benchmark started."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{self._name} {time.monotonic() - self._t0:6.1f}s] {text}", file=sys.stderr, flush=True)


@dataclass
class Report:
    """Figures in the order measured; printed at the end, also when the run stops early."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"{label:<{LABEL_WIDTH}} {value}")

    def note(self, text: str) -> None:
        self.lines.append(text)

    def section(self, title: str) -> None:
        self.lines.append(f"\n{title}")

    def print(self, *, complete: bool) -> None:
        print("\n".join(self.lines), flush=True)
        if self.errors:
            print(f"\nerrors ({len(self.errors)}, first {ERRORS_SHOWN}):", *self.errors[:ERRORS_SHOWN], sep="\n  ")
        if not complete:
            print("\n(stopped early: the figures above are partial)", flush=True)
