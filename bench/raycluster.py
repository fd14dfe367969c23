"""A real multi-node Ray cluster on this one machine, for the tests and ``convoy bench scale``
(``ray start --block`` per node).

Each node is one ``ray start --block`` subprocess in a session of its own, so every process that
node starts (GCS, raylet, agents, workers) is found by its session id, even once orphaned, and
nothing outside the test is ever touched. ``ray stop`` is not used: it stops every Ray process of
this user on the machine, including clusters other tests are running.

Mechanics that matter on one machine (found empirically, Ray 2.60):

- every node needs its own ports (node manager, object manager, agents, metrics); only the worker
  ports may overlap, since a worker retries until it binds. They are picked free before ``ray
  start`` binds them, so another process can take one meanwhile (an agent then fails to start and
  the node exits): a node that exits while it starts is started again on new ports, up to
  ``NODE_START_ATTEMPTS`` times, each failure's logs kept. A per-node ``--temp-dir`` is allowed
  (``ray start --help``: "Can be specified per node") and keeps each node's sockets and logs apart;
  it must stay short, as Unix socket paths are limited to 107 bytes.
- token authentication is on by default. The head turns it on by itself when it finds a token
  (``~/.ray/auth_token``), but a joining node and a driver given an explicit address do not
  (``ray.init``: "an explicit address never does"), so they need ``RAY_AUTH_MODE=token``. Each
  test cluster gets a token of its own (``RAY_AUTH_TOKEN``, which every process of the cluster
  inherits), so nothing depends on, or touches, the user's token file.
- on SIGTERM ``ray start --block`` first drains its node, waiting up to
  ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`` (30 s) for actors to leave; detached actors never do,
  so draining is turned off and a stop is what ``ray stop`` does: SIGTERM to every process.
- Ray binds to the machine's address; both nodes get the same IP, and a driver on this machine
  attaches to the head's raylet (``get_node_to_connect_for_driver`` prefers the head).
- each node's metrics agent serves Prometheus on its ``--metrics-export-port``; only the head's
  dashboard writes the service discovery file that lists them (``dashboard=True``; it is off
  otherwise, to start faster). The dashboard's and the autoscaler's own metrics ports are fixed by
  Ray (44227, 44217) unless ``DASHBOARD_METRIC_PORT`` / ``AUTOSCALER_METRIC_PORT`` say otherwise:
  each cluster gets free ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import free_port, wait_until

RAY = str(Path(sys.executable).parent / "ray")
NODE_START_TIMEOUT_S = 90.0
NODE_START_ATTEMPTS = 3  # a node that exits while it starts (a port taken meanwhile) is started again
NODE_STOP_TIMEOUT_S = 45.0
OBJECT_STORE_BYTES = 100 * 1024 * 1024


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _live(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def session_members(sid: int) -> set[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[3]) == sid:
                found.add(int(entry.name))
    return found


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _port_of(args: list[str], name: str) -> int:
    return int(next(a for a in args if a.startswith(f"--{name}=")).split("=", 1)[1])


def _ports() -> list[str]:
    # No Ray Client server port: that needs `ray[client]`, and Convoy depends on plain `ray`.
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    return [f"--{name}={free_port()}" for name in names]


class NodeExited(AssertionError):
    """A node's ``ray start`` ended while it was to be running."""


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    temp_dir: Path
    metrics_port: int
    seen: set[int] = field(default_factory=set)

    @property
    def sid(self) -> int:
        return self.process.pid  # start_new_session: the session leader is `ray start` itself

    def members(self) -> set[int]:
        live = session_members(self.sid)
        self.seen |= live
        return live

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_logs(self) -> list[Path]:
        """The stderr files of this node's Ray workers (where a host's log lines go)."""
        return sorted((self.temp_dir / "session_latest" / "logs").glob("worker-*.err"))

    def started(self) -> bool:
        if self.process.poll() is not None:
            raise NodeExited(f"ray node {self.name} exited ({self.process.returncode}):\n{self.log()}")
        return "Ray runtime started." in self.log()

    def raylet_pid(self) -> int:
        found = [p for p in self.members() if command_of(p).split(" ", 1)[0].endswith("/raylet")]
        assert len(found) == 1, f"expected one raylet on {self.name}, found {found}"
        return found[0]

    def hosts_process(self, pid: int) -> bool:
        """True when ``pid`` is a worker of this node's raylet (a worker's parent is its raylet)."""
        return pid in self.members() and parent_of(pid) == self.raylet_pid()

    def kill(self) -> float:
        """Lose this node at once, like a machine that vanishes; returns when all its processes are gone.

        Every process is frozen first (SIGSTOP, the raylet first), then SIGKILLed: none of them can
        report another's death, so the cluster learns of the loss only as it would of a lost
        machine (the GCS's health checks). Returns the time.monotonic() of the first signal."""
        killed_at = time.monotonic()
        deadline = killed_at + 30
        raylet = self.raylet_pid()
        while live := self.members():
            ordered = sorted(live, key=lambda p: p != raylet)
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in ordered:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            assert time.monotonic() < deadline, f"could not kill node {self.name}: {sorted(live)}"
            time.sleep(0.02)
        self.process.wait(timeout=10)
        return killed_at

    def stop(self) -> set[int]:
        """SIGTERM to ``ray start``, which SIGTERMs every process of its node (as ``ray stop`` does).

        Returns the pids of this node still alive after that (they are then SIGKILLed)."""
        self.members()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=NODE_STOP_TIMEOUT_S)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.members(), 20, interval_s=0.1, message=f"node {self.name} to stop")
        leftovers = {p for p in self.seen if _live(p)}
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        return leftovers


@dataclass
class RayCluster:
    head: RayNode
    address: str
    env: dict[str, str]
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def service_discovery(self) -> Path:
        """Prometheus' file-based service discovery of this cluster's metrics exporters, written by
        the head's dashboard (``start_cluster(dashboard=True)``): Ray's
        ``/tmp/ray/prom_metrics_service_discovery.json``, under the head's own temp dir."""
        return self.head.temp_dir / "prom_metrics_service_discovery.json"

    def client_env(self) -> dict[str, str]:
        """What a process joining as a driver (``convoy serve``) needs in its environment."""
        return {"RAY_ADDRESS": self.address, **{k: v for k, v in self.env.items() if k.startswith("RAY_AUTH_")}}

    def stop(self) -> dict[str, set[int]]:
        """Stop every node (workers first); the pids each one left behind, if any."""
        leftovers = {node.name: node.stop() for node in reversed(self.nodes)}
        for node in self.nodes:
            _keep_logs(node)  # for failures
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        return {name: pids for name, pids in leftovers.items() if pids}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CONVOY_"))}
    env.update(  # see the module docstring
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    )
    return env


def _start(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> RayNode:
    temp_dir = Path(tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp"))
    log_path = log_dir / f"ray-{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    metrics_port = _port_of(args, "metrics-export-port")
    return RayNode(name=name, process=process, log_path=log_path, temp_dir=temp_dir, metrics_port=metrics_port)


def start_cluster(log_dir: Path, *, head_cpus: int = 1, dashboard: bool = False) -> RayCluster:
    """A head node; with ``dashboard``, Ray's dashboard too (on a free loopback port), which writes
    the Prometheus service discovery file (``RayCluster.service_discovery``)."""
    env = _env()

    def head_args() -> list[str]:
        if dashboard:
            env.update({"DASHBOARD_METRIC_PORT": str(free_port()), "AUTOSCALER_METRIC_PORT": str(free_port())})
            ui = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"]
        else:
            ui = ["--include-dashboard=false"]
        return ["--head", f"--port={free_port()}", f"--num-cpus={head_cpus}", f"--object-store-memory={OBJECT_STORE_BYTES}", *ui, *_ports()]

    head = _start_node("head", head_args, env, log_dir)
    cluster = RayCluster(head=head, address="", env=env, nodes=[head])
    try:
        # "Ray runtime started" can be in the log a moment before the lines that give the address.
        found = wait_until(
            lambda: re.search(r"ray start --address='([^']+)'", head.log()),
            NODE_START_TIMEOUT_S,
            interval_s=0.1,
            message=f"the Ray head to print its address:\n{head.log()}",
        )
        cluster.address = found.group(1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def add_node(cluster: RayCluster, name: str, log_dir: Path, *, cpus: int = 1, resources: dict[str, float] | None = None) -> RayNode:
    def node_args() -> list[str]:
        return [
            f"--address={cluster.address}",
            f"--num-cpus={cpus}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--resources={json.dumps(resources or {})}",
            *_ports(),
        ]

    node = _start_node(name, node_args, cluster.env, log_dir)
    cluster.nodes.append(node)
    return node


def _start_node(name: str, args: Callable[[], list[str]], env: dict[str, str], log_dir: Path) -> RayNode:
    """A started node (``args`` gives its ``ray start`` arguments, ports picked anew each time). One
    that exits while it starts is started again, up to ``NODE_START_ATTEMPTS`` times (module
    docstring); each failed attempt's logs are kept as ``ray-<name>-failed-<n>*``."""
    for attempt in range(1, NODE_START_ATTEMPTS + 1):
        node = _start(name, args(), env, log_dir)
        try:
            wait_until(node.started, NODE_START_TIMEOUT_S, interval_s=0.1, message=f"Ray node {name} to start")
        except NodeExited:
            node.stop()
            _keep_logs(node, suffix=f"-failed-{attempt}")
            shutil.rmtree(node.temp_dir, ignore_errors=True)
            if attempt == NODE_START_ATTEMPTS:
                raise
            print(f"ray node {name} exited while it started (attempt {attempt}); starting it again on new ports", file=sys.stderr)
            continue
        except BaseException:
            node.stop()
            shutil.rmtree(node.temp_dir, ignore_errors=True)
            raise
        return node
    raise AssertionError("unreachable: the last attempt returns or raises")


def _keep_logs(node: RayNode, suffix: str = "") -> None:
    """The node's GCS and raylet logs, copied next to its own log (its temp dir is then removed);
    with ``suffix``, its own log too (a failed attempt's, which the next one's overwrites)."""
    logs = node.temp_dir / "session_latest" / "logs"
    for name in ("gcs_server.out", "raylet.out"):
        if (logs / name).exists():
            shutil.copy(logs / name, node.log_path.with_name(f"ray-{node.name}{suffix}-{name}"))
    if suffix:
        shutil.copy(node.log_path, node.log_path.with_name(f"ray-{node.name}{suffix}.log"))
