"""CPU accounting: what each process used during a measured window, as a share of a core and per
chunk, net of what it uses when idle."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


def _process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    at_s: float
    processes: dict[str, float]
    machine_busy_s: float


def cpu_snapshot(pids: dict[str, int | None]) -> CpuSnapshot:
    known = {name: _process_cpu_s(pid) for name, pid in pids.items() if pid is not None}
    return CpuSnapshot(time.monotonic(), known, _machine_busy_s())


def idle_share(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Each process's CPU share (cores) between two snapshots."""
    span = max(1e-9, b.at_s - a.at_s)
    return {n: (b.processes[n] - a.processes[n]) / span for n in a.processes}


def cpu_text(a: CpuSnapshot, b: CpuSnapshot, chunks: int, idle: dict[str, float]) -> tuple[str, str]:
    """CPU used between two snapshots: in % of one core (the machine has ``os.cpu_count()``), and
    in CPU microseconds per chunk of the window, per process, net of what it uses when idle."""
    span = max(1e-9, b.at_s - a.at_s)
    used = {n: b.processes[n] - a.processes[n] for n in a.processes}
    machine = 100 * (b.machine_busy_s - a.machine_busy_s) / span
    shares = "  ".join(f"{n} {100 * v / span:.0f}" for n, v in used.items())
    rest = max(0.0, machine - 100 * sum(used.values()) / span)
    per_chunk_us = {n: max(0.0, 1e6 * (v - idle.get(n, 0.0) * span) / max(1, chunks)) for n, v in used.items()}
    cost = "  ".join(f"{n} {v:.0f}" for n, v in per_chunk_us.items())
    total_us = sum(per_chunk_us.values())
    return (
        f"cpu, % of a core: {shares}  | machine {machine:.0f} of {100 * (os.cpu_count() or 1)}, rest {rest:.0f}",
        f"cpu per chunk, us, net of idle: {cost}  | all {total_us:.0f} us = {1e6 / max(1e-9, total_us):.0f} chunks/s per core",
    )


# -- the API replica ---------------------------------------------------------------------------------
