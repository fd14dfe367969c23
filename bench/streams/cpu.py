"""CPU accounting: what each kind of process used during a measured window, as a share of a core
and per chunk, net of what it uses when idle, and how long each kind's busiest thread was runnable
(on a CPU or waiting for one, ``bench.runnable_s``; a Ray actor's event loop is not its main thread). The client processes' own CPU (``CLIENTS``) is
shown apart and never counted as Convoy's, with a verdict: a client process on a CPU nearly all the
window is the limit of what is measured, not Convoy; one runnable all the window but given little
CPU waited for the machine's cores, as every other process then does."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench import machine_busy_s, process_cpu_s, runnable_s
from bench.clients import busiest

CLIENTS = "clients"
SATURATED = 0.9  # a client process runnable more than this share of the time may be what limits the figures


@dataclass(frozen=True)
class CpuSnapshot:
    at_s: float
    processes: dict[str, list[float]]  # CPU seconds so far of each process, by kind
    machine_busy_s: float
    runnable_s: dict[str, list[dict[int, float]]]  # seconds runnable so far of each thread, by kind


def cpu_snapshot(groups: dict[str, list[int]]) -> CpuSnapshot:
    found = {name: [process_cpu_s(pid) for pid in pids] for name, pids in groups.items()}
    runnable = {name: [runnable_s(pid) for pid in pids] for name, pids in groups.items()}
    return CpuSnapshot(time.monotonic(), found, machine_busy_s(), runnable)


def idle_share(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Each kind's CPU share (cores) between two snapshots."""
    span = max(1e-9, b.at_s - a.at_s)
    return {n: (sum(b.processes[n]) - sum(a.processes[n])) / span for n in a.processes}


def cpu_text(a: CpuSnapshot, b: CpuSnapshot, chunks: int, idle: dict[str, float]) -> list[str]:
    """CPU used between two snapshots: in % of one core (the machine has ``os.cpu_count()``), and
    in CPU microseconds per chunk of the window, per kind, net of what it uses when idle (the
    server's total leaves the client processes out); and the busiest process of each kind's share
    thread's share of the window spent runnable. Every kind near 100% runnable: the machine's cores were the
    limit; the client alone, on a CPU nearly all that time: the client was."""
    span = max(1e-9, b.at_s - a.at_s)
    used = {n: sum(b.processes[n]) - sum(a.processes[n]) for n in a.processes}
    machine = 100 * (b.machine_busy_s - a.machine_busy_s) / span
    shares = "  ".join(f"{n} {100 * v / span:.0f}" for n, v in used.items())
    rest = max(0.0, machine - 100 * sum(used.values()) / span)
    per_chunk_us = {n: max(0.0, 1e6 * (v - idle.get(n, 0.0) * span) / max(1, chunks)) for n, v in used.items()}
    server = {n: v for n, v in per_chunk_us.items() if n != CLIENTS}
    total_us = sum(server.values())
    runnable = {n: _busiest_thread(a.runnable_s[n], b.runnable_s[n], span) for n in a.runnable_s if a.runnable_s[n]}
    lines = [
        f"cpu, % of a core: {shares}  | machine {machine:.0f} of {100 * (os.cpu_count() or 1)}, rest {rest:.0f}",
        "runnable (on a CPU or waiting for one), % of the time, busiest thread: "
        + "  ".join(f"{n} {100 * v:.0f}" for n, v in runnable.items()),
        "cpu per chunk, us, net of idle: "
        + "  ".join(f"{n} {v:.0f}" for n, v in server.items())
        + f"  | server {total_us:.0f} us = {1e6 / max(1e-9, total_us):.0f} chunks/s per core",
    ]
    if CLIENTS in used:
        on_cpu = busiest(a.processes[CLIENTS], b.processes[CLIENTS], span)
        ready = runnable.get(CLIENTS, 0.0)
        if ready < SATURATED:
            verdict = "below saturation"
        elif on_cpu >= SATURATED:
            verdict = "saturated: the client is the limit"
        else:
            verdict = "waiting for a CPU: the machine's cores are the limit"
        lines.append(
            f"client: {len(a.processes[CLIENTS])} process(es), {per_chunk_us[CLIENTS]:.0f} us per chunk (not Convoy's);"
            f" busiest on a CPU {100 * on_cpu:.0f}% of the time, runnable {100 * ready:.0f}% ({verdict})"
        )
    return lines


def _busiest_thread(a: list[dict[int, float]], b: list[dict[int, float]], span_s: float) -> float:
    """The largest share of ``span_s`` one thread of these processes was runnable."""
    shares = (after[t] - before[t] for before, after in zip(a, b, strict=True) for t in before.keys() & after.keys())
    return max(shares, default=0.0) / span_s
