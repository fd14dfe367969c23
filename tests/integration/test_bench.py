"""The benchmark commands keep working (tiny runs; the figures themselves are not asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak.ledger import INVARIANTS

CONVOY = str(Path(sys.executable).parent / "convoy")
BENCH_TIMEOUT_S = 240


def _run(args: list[str], tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOY_", "RAY_ADDRESS"))}
    env["CONVOY_HOME"] = str(tmp_path)
    done = subprocess.run([CONVOY, "bench", *args], capture_output=True, text=True, env=env, timeout=BENCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    # Figures are not asserted, but a benchmark that could not do what it measures says so.
    assert "\nerrors (" not in done.stdout, done.stdout[-4000:]
    return done.stdout


@pytest.mark.slow
def test_bench_actors_prints_its_figures(tmp_path: Path) -> None:
    out = _run(
        ["actors", "--cold", "20", "--conversations", "60", "--step", "30", "--turns", "5", "--baseline", "1", "--hold-s", "0"],
        tmp_path,
    )
    for label in ("cold activation latency", "warm dispatch latency", "host RSS per conversation", "baseline / virtual actor"):
        assert label in out, out


@pytest.mark.slow
def test_bench_streams_prints_its_figures(tmp_path: Path) -> None:
    out = _run(
        [
            *("streams", "--streams", "1", "--rates", "20", "--many", "5", "--many-rate", "2"),
            *("--warmup-s", "0.5", "--measure-s", "1", "--client-processes", "2"),
        ],
        tmp_path,
    )
    for label in ("convoy, HTTP SSE", "convoy, bus only", "baseline, bus only", "baseline / convoy"):
        assert label in out, out
    # The SSE readers are spread over the client processes asked for (never more than the streams),
    # every stream ends in one of them, and their CPU is shown apart from the server's.
    assert re.search(r"client: 1 process\(es\), \d+ us per chunk \(not Convoy's\); busiest on a CPU \d+% of the time, runnable \d+%", out), out
    assert re.search(r"client: 2 process\(es\), \d+ us per chunk \(not Convoy's\); busiest on a CPU \d+% of the time, runnable \d+%", out), out
    assert out.count("streams ended 5/5") == 3, out


@pytest.mark.slow
def test_bench_providers_prints_its_figures(tmp_path: Path) -> None:
    out = _run(["providers", "--turns", "2", "--warmup", "0", "--tokens", "3", "--rate", "200"], tmp_path)
    for label in ("time to first token p50", "per-token lag p99", "accepted -> run started", "provider request -> first token"):
        assert label in out, out


@pytest.mark.slow
def test_bench_soak_holds_its_invariants_and_removes_its_home(tmp_path: Path) -> None:
    # 24 s of workload: faults at 4.8 s (right after the warm-up) and 14.8 s, one on each host (the
    # second waits for the end of the Redis outage, frozen 5 s from 12 s, then killed).
    out = _run(["soak", "--minutes", "0.4", "--clients", "4", "--fault-every-s", "10", "--redis-outage-s", "5"], tmp_path)
    for label in (
        "requests by kind and status",
        "bad inputs tried",
        "messages accepted (seen by clients) / processed",
        "runs by final status",
        "runs failed owner_lost",
        "time to first text",
        "memory (RSS, MiB)",
        "redis keys at the end",
    ):
        assert label in out, out
    faults = re.search(r"^faults injected / survived +(\d+) / (\d+)$", out, re.MULTILINE)
    assert faults is not None and int(faults.group(1)) >= 1, out
    assert faults.group(2) == faults.group(1), out
    assert re.search(r"^  fresh turn +done ", out, re.MULTILINE), out  # after the Redis outage
    for name in INVARIANTS:
        assert f"  PASS  {name}" in out, out
    assert "soak: all invariants held" in out, out
    home = re.search(r"^home (\S+) removed$", out, re.MULTILINE)
    assert home is not None and not Path(home.group(1)).exists(), out


@pytest.mark.slow
def test_bench_scale_prints_its_figures(tmp_path: Path) -> None:
    # The phase with the most parts (a Redis Cluster, a 2-node Ray cluster, 2 API replicas); a
    # phase of one server adds a minute to the suite and nothing the other benchmarks' tests miss.
    out = _run(
        ["scale", "--shards", "3", "--conversations", "20", "--streams", "4", "--tokens", "3", "--rate", "5", "--clients", "2", "--warmup-s", "0.5", "--measure-s", "2"],
        tmp_path,
    )
    assert "\n3 shard(s)\n" in out and "\n1 shard(s)\n" not in out, out
    for label in ("memory per idle conversation", "per-token latency, upstream -> client", "time to first token", "cpu per item, us"):
        assert out.count(label) == 1, out
    assert out.count("targets met") + out.count("targets NOT met") == 1, out


@pytest.mark.slow
def test_bench_turns_prints_each_run_and_before_against_after(tmp_path: Path) -> None:
    """One run of each side (``--against``: the same code here), each reported in full, then the
    medians and their ratio."""
    out = _run(
        [
            *("turns", "--concurrency", "3", "--tokens", "5", "--rate", "100", "--warmup-s", "0.3", "--measure-s", "1.5"),
            *("--burst", "10", "--against", sys.executable, "--rounds", "1", "--set", "CONVOY_STREAM_WRITE_WINDOW_MS=3"),
        ],
        tmp_path,
    )
    assert "-- run 1 of 2: before" in out and "-- run 2 of 2: after" in out, out
    assert re.search(r"server: before \S+, after \S+ CONVOY_STREAM_WRITE_WINDOW_MS=3 ", out), "the setting is the after side's"
    for label in ("server cpu per turn, ms", "time to first token, ms", "per-token latency", "server cpu per streamed token, us"):
        assert len(re.findall(rf"^{re.escape(label)}", out, re.MULTILINE)) == 2, out
    assert len(re.findall(r"turns ended in the window +[1-9]\d* ", out)) == 2, out
    # What Redis keeps of each turn (its stream, record and trace stay for the streams' TTL).
    kept = re.findall(r"^redis memory kept per turn, KiB +([\d.]+) ", out, re.MULTILINE)
    assert len(kept) == 2 and all(float(k) > 0 for k in kept), out
    # The first token's way, leg by leg, from the runs' own timestamps: in each steady phase and each burst.
    for leg in ("accepted -> taken by its owner", "taken -> model request", "model request -> first token"):
        assert len(re.findall(rf"^  {re.escape(leg)}, ms +p50 +\d+\.\d+ +p90 +\d+\.\d+ +\(the latest [1-9]\d* runs\)", out, re.MULTILINE)) == 4, out
    # Of a burst's first token, the upstream's own part: one per turn.
    assert len(re.findall(r"^  of which the upstream's own \(request in -> first token out\), ms +p50 .*\(n=10\)$", out, re.MULTILINE)) == 2, out
    # Every turn of each burst was accepted and reached its first token.
    assert out.count("burst: 10 turns sent at once") == 2, out
    assert len(re.findall(r"accepted \(response headers\), ms .*\(n=10\)", out)) == 2, out
    assert len(re.findall(r"\nfirst token, ms .*\(n=10\)", out)) == 2, out
    # What the burst took of the machine: the server's CPU and the load's own, which share its cores.
    shares = re.findall(r"^cpu from the instant to the last turn's end, s +server ([\d.]+) \(api [\d.]+ +host ([\d.]+) .*"
                        r"upstream ([\d.]+) +clients ([\d.]+) +\| over ([\d.]+) s", out, re.MULTILINE)
    assert len(shares) == 2, out
    assert all(float(v) > 0 for each in shares for v in each), shares
    assert "before / after, 1 runs each, alternated (B A)" in out, out
    for label in ("steady: server cpu per turn, ms", "steady: turns/s", "burst: accepted p50, ms", "burst: first token p99, ms"):
        line = re.search(rf"^{re.escape(label)} +median +([\d.]+) -> +([\d.]+) +after/before +([\d.]+) +\(", out, re.MULTILINE)
        assert line is not None, out
        assert all(float(g) > 0 for g in line.groups()), line.group(0)  # each side measured, and their ratio
    assert re.search(r"^errors +0$", out, re.MULTILINE), out


@pytest.mark.slow
def test_bench_layers_prints_a_hosts_cpu_per_token_layer_by_layer(tmp_path: Path) -> None:
    out = _run(["layers", "--streams", "2", "--tokens", "20", "--rate", "400", "--rounds", "2"], tmp_path)
    for layer in ("sdk", "adapter", "guarded", "assembler", "writer"):
        line = re.search(rf"^{layer}, us per token +median +([\d.]+) +adds +[+-][\d.]+ +\(([\d.]+), ([\d.]+)\)$", out, re.MULTILINE)
        assert line is not None, out
        assert all(float(v) > 0 for v in line.groups()), line.group(0)  # each round measured a CPU per token


@pytest.mark.slow
def test_bench_idle_prints_every_process_of_the_server(tmp_path: Path) -> None:
    out = _run(["idle", "--seconds", "2", "--settle-s", "0", "--set", "CONVOY_HOSTS=1"], tmp_path)
    # The server's own process, its Redis, Ray's daemons and the one host asked for, each named.
    for name in ("convoy serve (API)", "redis (embedded)", "gcs_server", "raylet", "conversation host"):
        assert re.search(rf"^{re.escape(name)} \(pid \d+\) +cpu +[\d.]+% +wakeups +\d+ +rss +[\d.]+ +pss +[\d.]+$", out, re.MULTILINE), out
    assert out.count("conversation host (pid") == 1, out
    assert "server setting CONVOY_HOSTS" in out, out
    assert re.search(r"^total +cpu", out, re.MULTILINE), out
    assert re.search(r"^cpu, % of a core \(target < 2\) +[\d.]+ +(met|NOT met)$", out, re.MULTILINE), out
