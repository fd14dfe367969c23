"""``convoy bench idle``: what ``convoy serve`` costs at rest, process by process.

``convoy serve`` runs in a subprocess with a private home (``bench.serve``), by this interpreter or
by ``--python`` (another venv: the code before a change, for a before/after in one session). Once
it answers ``/v1/health`` and has settled (``--settle-s``: Ray's daemons and the hosts finish
starting, imports done), every process of its tree is sampled each second for ``--seconds``: CPU
(user + system, in % of one core over the window), wakeups (context switches per second) and
memory (RSS, and PSS, which divides shared pages among the processes mapping them; both averaged
over the window). The tree is the server
and all its descendants (the embedded Redis, Ray's daemons, the raylet's workers and agents), plus
any process that names the local Ray's session directory without descending from the server (Ray's
daemons started in a session of their own) and its descendants. Each process is named from its
command line (``raylet``, ``gcs_server``, ``conversation host``...); a process that appears during
the window is counted from its start, one that ends from its last sample.

Figures: one line per process, the totals, and the totals against issue 22's targets (< 2% of a
core, <= 0.6 GB RSS). An idle process's CPU is what its wakeups cost, and what a wakeup costs
depends on the machine: on a quiet one, cores sleep deeper and wake slower, and the same server
measured up to ~30% more CPU than beside other work. So each process's wakeups per second (its
threads' context switches) are printed too, which do not depend on that, and so is the machine's
busy share over the window: compare CPU figures only between runs on an equally busy machine.
Nothing is asserted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import MIB, Progress, Report, machine_busy_s, process_memory
from bench.serve import Serve

SAMPLE_INTERVAL_S = 1.0
PROGRESS_EVERY_S = 10.0
CPU_TARGET_PCT = 2.0
RSS_TARGET_BYTES = 600 * 1000**2  # 0.6 GB (572 MiB)
SWITCHES = ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
SESSION_DIR = re.compile(r"--session[-_]dir=(\S+)")
# Ray names its worker processes ``ray::<actor class>``.
RAY_WORKERS = {
    "ConversationHost": "conversation host",
    "DashboardAgent": "dashboard agent",
    "RuntimeEnvAgent": "runtime-env agent",
    "IDLE": "idle ray worker",
}
# Other processes, by a piece of their command line (first match wins).
KNOWN = (
    ("cli.main serve", "convoy serve (API)"),
    ("gcs_server", "gcs_server"),
    ("raylet/raylet", "raylet"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ("dashboard/dashboard.py", "dashboard head"),
    ("dashboard/agent.py", "dashboard agent"),
    ("log_monitor.py", "log monitor"),
    ("runtime_env/agent", "runtime-env agent"),
    ("default_worker.py", "ray worker (starting)"),
    ("valkey-server", "redis (embedded)"),
    ("redis-server", "redis"),
)


@dataclass(frozen=True)
class IdleOptions:
    seconds: float = 30.0
    settle_s: float = 10.0
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)  # more settings for the server


@dataclass(frozen=True)
class Stat:
    ppid: int
    start_ticks: int  # since boot
    cpu_s: float


@dataclass
class Seen:
    """One process over the window."""

    pid: int
    name: str
    first_cpu_s: float
    last_cpu_s: float
    first_switches: int
    last_switches: int
    rss: list[int] = field(default_factory=list)
    pss: list[int] = field(default_factory=list)


def _stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return Stat(ppid=int(fields[1]), start_ticks=int(fields[19]), cpu_s=(int(fields[11]) + int(fields[12])) / ticks)


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_name(argv: list[str]) -> str:
    """What a process is, from its command line."""
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        kind = argv[0].removeprefix("ray::").split()[0] if argv[0] != "ray::" else "?"
        return RAY_WORKERS.get(kind, f"ray worker {kind}")
    line = " ".join(argv)
    for needle, name in KNOWN:
        if needle in line:
            return name
    return Path(argv[0]).name


def context_switches(pid: int) -> int:
    """Times the threads of process ``pid`` have been switched out so far (voluntarily, mostly:
    each is a wakeup that went back to sleep); 0 when it is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/status") as status:
                total += sum(int(line.split()[1]) for line in status if line.startswith(SWITCHES))
    return total


def _uptime_ticks() -> int:
    with open("/proc/uptime") as uptime:
        return int(float(uptime.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def server_tree(root: int) -> dict[int, Stat]:
    """The server's processes: ``root`` and its descendants, plus the processes naming its Ray
    session directory that do not descend from it, and theirs."""
    stats: dict[int, Stat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            stats[int(entry)] = found
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)

    def below(top: int) -> set[int]:
        found, todo = set(), [top]
        while todo:
            pid = todo.pop()
            if pid in stats and pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, ()))
        return found

    tree = below(root)
    sessions = {m.group(1) for pid in tree if (m := SESSION_DIR.search(" ".join(command_line(pid))))}
    if sessions:
        for pid in set(stats) - tree:
            line = " ".join(command_line(pid))
            if any(session in line for session in sessions):
                tree |= below(pid)
    return {pid: stats[pid] for pid in tree}


def _sample(root: int, window_start_ticks: int, seen: dict[int, Seen]) -> None:
    for pid, stat in server_tree(root).items():
        record = seen.get(pid)
        switches = context_switches(pid)
        if record is None:
            name = "convoy serve (API)" if pid == root else process_name(command_line(pid))
            started_within = stat.start_ticks >= window_start_ticks
            record = seen[pid] = Seen(
                pid, name, 0.0 if started_within else stat.cpu_s, stat.cpu_s, 0 if started_within else switches, switches
            )
        record.last_cpu_s = stat.cpu_s
        record.last_switches = switches
        memory = process_memory(pid)
        if memory["rss_bytes"]:
            record.rss.append(memory["rss_bytes"])
            record.pss.append(memory["pss_bytes"])


def measure(root: int, seconds: float, say: Progress) -> tuple[list[Seen], float, float]:
    """Every process of the server's tree over ``seconds``; also the window's length and the
    machine's busy share (in cores) over it."""
    seen: dict[int, Seen] = {}
    start_ticks = _uptime_ticks()
    t0, busy0 = time.monotonic(), machine_busy_s()
    _sample(root, start_ticks, seen)
    next_progress = PROGRESS_EVERY_S
    while (elapsed := time.monotonic() - t0) < seconds:
        time.sleep(min(SAMPLE_INTERVAL_S, seconds - elapsed))
        _sample(root, start_ticks, seen)
        if time.monotonic() - t0 >= next_progress:
            say(f"{next_progress:.0f}/{seconds:g} s measured, {len(seen)} processes")
            next_progress += PROGRESS_EVERY_S
    span = time.monotonic() - t0
    return [s for s in seen.values() if s.rss], span, (machine_busy_s() - busy0) / span


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _code_location(python: str, cwd: Path) -> str:
    """Where the interpreter imports Convoy from (the code the server runs)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [python, "-c", "import cli, pathlib; print(pathlib.Path(cli.__file__).parent.parent)"],
            capture_output=True, text=True, cwd=cwd, timeout=60, check=True,
        )
        return done.stdout.strip()
    return "unknown"


def _add_figures(report: Report, processes: list[Seen], span_s: float, machine_cores: float) -> None:
    report.section(
        f"convoy serve at rest: {len(processes)} processes over {span_s:.0f} s"
        " (cpu: % of one core; wakeups: context switches per second; memory: mean MiB)"
    )
    ordered = sorted(processes, key=lambda s: (-_mean(s.rss), s.name))
    for s in ordered:
        cpu = 100 * (s.last_cpu_s - s.first_cpu_s) / span_s
        wakeups = (s.last_switches - s.first_switches) / span_s
        report.add(
            f"{s.name} (pid {s.pid})",
            f"cpu {cpu:5.2f}%   wakeups {wakeups:6.0f}   rss {_mean(s.rss) / MIB:6.1f}   pss {_mean(s.pss) / MIB:6.1f}",
        )
    cpu_pct = 100 * sum(s.last_cpu_s - s.first_cpu_s for s in processes) / span_s
    wakeups = sum(s.last_switches - s.first_switches for s in processes) / span_s
    rss = sum(_mean(s.rss) for s in processes)
    pss = sum(_mean(s.pss) for s in processes)
    report.add("total", f"cpu {cpu_pct:5.2f}%   wakeups {wakeups:6.0f}   rss {rss / MIB:6.1f}   pss {pss / MIB:6.1f}")
    report.section("against issue 22's targets")
    report.add(f"cpu, % of a core (target < {CPU_TARGET_PCT:g})", f"{cpu_pct:.2f}  {'met' if cpu_pct < CPU_TARGET_PCT else 'NOT met'}")
    report.add(
        f"rss, MiB (target <= 0.6 GB = {RSS_TARGET_BYTES / MIB:.0f} MiB)",
        f"{rss / MIB:.0f}  {'met' if rss <= RSS_TARGET_BYTES else 'NOT met'}",
    )
    report.add("machine busy meanwhile, % of a core (all its work)", f"{100 * machine_cores:.0f} of {100 * (os.cpu_count() or 1)}")


def run(options: IdleOptions) -> int:
    say = Progress("idle")
    report = Report()
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-idle-"))
    serve = Serve(home, env=options.env, python=options.python)
    complete = False
    try:
        report.add("server's interpreter", options.python)
        report.add("server's code", _code_location(options.python, home))
        for key, value in sorted(options.env.items()):
            report.add(f"server setting {key}", value)
        say(f"starting convoy serve ({options.python})")
        started = time.monotonic()
        serve.start()
        assert serve.pid is not None
        say(f"healthy after {time.monotonic() - started:.1f} s; settling {options.settle_s:g} s")
        time.sleep(options.settle_s)
        say(f"measuring {options.seconds:g} s")
        processes, span_s, machine_cores = measure(serve.pid, options.seconds, say)
        _add_figures(report, processes, span_s, machine_cores)
        complete = True
    finally:
        say("stopping convoy serve")
        serve.stop()
        shutil.rmtree(home, ignore_errors=True)
        report.print(complete=complete)
    return 0
