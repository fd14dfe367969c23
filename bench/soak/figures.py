"""The soak's report: what was done and seen, then each invariant's verdict."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import KIB, MIB, Report, percentile
from bench.soak.bad import EXPECTED
from bench.soak.checks import RunFigures
from bench.soak.keyspace import KeyFigures
from bench.soak.ledger import INVARIANTS, Ledger
from bench.soak.memory import (
    REDIS,
    RESTART_WARMUP_S,
    MemorySample,
    Process,
    Tracker,
    allowed_growth,
)
from bench.soak.serverlog import LogSummary
from bench.soak.upstream import UpstreamCounts

if TYPE_CHECKING:
    from bench.soak import SoakOptions

DETAILS_SHOWN = 5
LOG_MESSAGES_SHOWN = 8


@dataclass(frozen=True)
class Outcome:
    options: SoakOptions
    ledger: Ledger
    planned_s: float
    workload_s: float
    runs: RunFigures
    memory: tuple[MemorySample, MemorySample]  # the warm-up sample, the last one
    processes: Tracker
    keys: KeyFigures
    history_inputs: int
    passivated_s: float
    upstream: UpstreamCounts


def add_figures(report: Report, outcome: Outcome) -> None:
    opts, ledger = outcome.options, outcome.ledger
    report.section(
        f"convoy bench soak   minutes={opts.minutes:g} clients={opts.clients} seed={opts.seed}"
        f" faults={f'every {opts.fault_every_s:g} s' if opts.faults else 'off'}"
        f" redis_outage={f'{opts.redis_outage_s:g} s' if opts.redis_outage_s else 'off'}"
        f"  cpus={os.cpu_count()}  load avg (1 min) at the end {os.getloadavg()[0]:.2f}"
    )
    ops = sum(ledger.ops.values())
    report.add("duration (s)", f"{outcome.workload_s:.1f} ({outcome.planned_s:g} planned, then the last operations)")
    report.add("operations", f"{ops} ({ops / outcome.workload_s:.1f}/s)")
    for op, count in ledger.ops.most_common():
        report.add(f"  {op}", str(count))
    _requests(report, ledger)
    _runs(report, outcome)
    _faults(report, outcome)
    _outage(report, outcome)
    _latency(report, ledger, opts.faults)
    _memory(report, outcome)
    _keys(report, outcome)


def _statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))


def _requests(report: Report, ledger: Ledger) -> None:
    report.section("requests by kind and status")
    for kind, counts in sorted(ledger.answers.items()):
        report.add(f"  {kind}", _statuses(counts))
    report.section("bad inputs tried (expected status -> answered)")
    for variant, counts in sorted(ledger.bad.items()):
        report.add(f"  {variant}", f"{EXPECTED.get(variant, '?')} -> {_statuses(counts)}")


def _runs(report: Report, outcome: Outcome) -> None:
    runs, ledger, up = outcome.runs, outcome.ledger, outcome.upstream
    report.section("runs and streams")
    report.add("messages accepted (seen by clients) / processed", f"{runs.accepted} / {runs.processed}")
    report.add("runs listed by the server", str(runs.listed))
    report.add("runs by final status", ", ".join(f"{s} {n}" for s, n in sorted(runs.by_status.items())))
    tally = ledger.streams
    report.add("streams read to the end / ended right", f"{tally.read} / {tally.ended}")
    report.add("streams left on purpose (then resumed to the end)", str(tally.abandoned))
    report.add("user messages found in histories", str(outcome.history_inputs))
    report.add("upstream: requests / tool calls / cut by Convoy", f"{up.requests} / {up.tool_calls} / {up.cut}")
    report.add(
        "conversations / all idle again (passivated) after",
        f"{len(ledger.conversations)} / {outcome.passivated_s:.1f} s",
    )


def _faults(report: Report, outcome: Outcome) -> None:
    opts, faults = outcome.options, outcome.ledger.faults
    if not opts.faults:
        report.section("faults: none injected (--no-faults)")
        return
    report.section(f"faults: a conversation host SIGKILLed every {opts.fault_every_s:g} s from the warm-up on")
    report.add("faults injected / survived", f"{len(faults)} / {sum(f.survived for f in faults)}")
    for number, fault in enumerate(faults, 1):
        back = f"pid {fault.new_pid} in {fault.recovered_s:5.1f} s" if fault.recovered_s is not None else "no new pid"
        probe = f"fresh turn done at {fault.probe_s:5.1f} s" if fault.probe_s is not None else f"FAILED: {fault.problem}"
        report.add(
            f"  fault {number} at {fault.at_s:5.1f} s: {fault.host}",
            f"pid {fault.pid} -> {back}; {probe}; it held {len(fault.held)} conversation(s)",
        )
    canaries = sum(1 for r in outcome.ledger.runs.values() if r.op == "fault canary")
    report.add("runs failed owner_lost", f"{outcome.runs.owner_lost} (the faults' canaries: {canaries})")


def _outage(report: Report, outcome: Outcome) -> None:
    outage, refusals = outcome.ledger.outage, outcome.ledger.store_refusals
    if outage is None:
        return
    report.section(f"redis outage: frozen {outage.seconds:g} s (SIGSTOP), then SIGKILL; convoy serve restarts it")
    report.add("  frozen at", f"{outage.at_s:5.1f} s into the workload, pid {outage.pid}")
    back = f"pid {outage.new_pid} {outage.back_s:.1f} s after the kill" if outage.back_s is not None else "no new pid"
    report.add("  Redis back", back)
    healthy = f"{outage.healthy_s:.1f} s after the kill" if outage.healthy_s is not None else "never"
    report.add("  API healthy again", healthy)
    probe = f"done {outage.probe_s:.1f} s after the kill" if outage.probe_s is not None else f"FAILED: {outage.problem}"
    report.add("  fresh turn", probe)
    report.add("  requests refused 503 store_unavailable, sent again", f"{sum(refusals.values())}")
    for request, count in refusals.most_common():
        report.add(f"    {request}", str(count))


def _latency(report: Report, ledger: Ledger, faults: bool) -> None:
    during = "   (turns that waited for a killed host to restart included)" if faults else ""
    report.section(f"latency (ms, p50 / p99 / max){during}")
    series = [(f"time to first text, {model} model", v) for model, v in sorted(ledger.ttft_ms.items())]
    series.append(("cancel request (until the run ended)", ledger.cancel_ms))
    for label, values in series:
        report.add(
            label,
            f"{percentile(values, 50):7.1f} / {percentile(values, 99):7.1f}"
            f" / {max(values, default=float('nan')):7.1f}   (n={len(values)})",
        )


def _memory(report: Report, outcome: Outcome) -> None:
    first, last = outcome.memory
    report.section(
        f"memory (RSS, MiB)   each process from its baseline to its last sample, growth"
        f" (warm-up -> end: {last.at_s - first.at_s:.0f} s, {last.runs - first.runs} runs)"
    )
    for proc in outcome.processes.processes.values():
        report.add(f"  {proc.label} pid {proc.pid}", _growth(proc))
    grown = last.redis_used_bytes - first.redis_used_bytes
    runs = max(1, last.runs - first.runs)
    used = f"{first.redis_used_bytes / MIB:7.1f} -> {last.redis_used_bytes / MIB:7.1f}"
    report.add("  redis used_memory (data set)", f"{used}   {grown / MIB:+6.1f}  {grown / runs / KIB:5.2f} KiB/run")


def _growth(proc: Process) -> str:
    if proc.baseline is None or proc.last is None:
        return f"(not judged: restarted, and sampled for less than {RESTART_WARMUP_S:g} s)"
    if proc.last.at_s == proc.baseline.at_s:
        return f"{proc.baseline.rss_bytes / MIB:7.1f}   (not judged: sampled once after its warm-up)"
    before, after = proc.baseline.rss_bytes, proc.last.rss_bytes
    runs = max(1, proc.last.runs - proc.baseline.runs)
    growth = f"{(after - before) / MIB:+6.1f}  {(after - before) / runs / KIB:5.2f} KiB/run"
    allowed = "(not judged: keeps runs 6 h)" if proc.label == REDIS else f"(allowed {allowed_growth(before) / MIB:.0f})"
    span = f"over {proc.last.at_s - proc.baseline.at_s:3.0f} s"
    return f"{before / MIB:7.1f} -> {after / MIB:7.1f}   {growth} {span} {allowed}"


def _keys(report: Report, outcome: Outcome) -> None:
    keys = outcome.keys
    report.section(f"redis keys at the end: {keys.total}")
    for kind, count in keys.kinds.most_common():
        report.add(f"  {kind}", str(count))
    report.add(
        "  run-index entries without a run (not judged)",
        f"{keys.dangling_index_entries} (left by refused and deduplicated sends)",
    )


def add_log(report: Report, summary: LogSummary) -> None:
    levels = ", ".join(f"{level} {n}" for level, n in summary.levels.most_common()) or "nothing"
    report.section(f"server log (WARNING and up): {levels}; {len(summary.other)} other line(s)")
    for message, count in summary.messages.most_common(LOG_MESSAGES_SHOWN):
        report.note(f"  {count:5d} x {message[:150]}")
    for line in summary.other[:DETAILS_SHOWN]:
        report.note(f"        {line[:150]}")


def add_verdicts(report: Report, ledger: Ledger, skipped: dict[str, str]) -> bool:
    """One PASS/FAIL line per invariant (with the first violations), SKIP for those in ``skipped``
    (name -> why); True if all held."""
    report.section("invariants")
    for name in INVARIANTS:
        found = ledger.violations.get(name, [])
        if name in skipped:
            report.note(f"  SKIP  {name}  ({skipped[name]})")
            continue
        report.note(f"  {'PASS' if not found else 'FAIL'}  {name}" + (f"  ({len(found)} violations)" if found else ""))
        for text in found[:DETAILS_SHOWN]:
            report.note(f"          - {text[:300]}")
    failed = sum(1 for name in INVARIANTS if ledger.violations.get(name))
    report.note(f"\nsoak: {'all invariants held' if not failed else f'{failed} invariant(s) violated'}")
    return not failed
