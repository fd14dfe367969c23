"""What ``convoy bench scale`` deploys on this machine for one phase, as an operator would across
machines: Redis (one server, or a Redis Cluster of N primaries), a two-node Ray cluster, ``convoy
serve`` (the conversation hosts and the first API replica) joining it, and a second API replica
(``convoy api``). Every process is ours and is stopped at the end; its pid is known by kind, for
the CPU and memory figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench.raycluster import RayCluster, add_node, free_port, start_cluster
from bench.rediscluster import LocalCluster
from runtime.errors import ConvoyError
from runtime.store import keyspace
from runtime.store.embedded import EmbeddedRedis

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
NODE_CPUS = 2  # Ray's accounting per node; the hosts take none (they are async actors)


@dataclass
class Replica:
    """One Convoy process: ``convoy serve`` or ``convoy api``."""

    command: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ConvoyError(f"convoy {self.command} exited ({self.process.returncode}): {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/v1/health").status_code == 200:
                        return
                time.sleep(0.2)
        raise ConvoyError(f"convoy {self.command} did not become healthy in {START_TIMEOUT_S:g} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Deployment:
    """One phase's deployment; ``shards``: 1 is one Redis server, more a Redis Cluster."""

    home: Path
    shards: int
    upstream_url: str
    hosts: int = 2
    env: dict[str, str] = field(default_factory=dict)
    single: EmbeddedRedis | None = None
    cluster: LocalCluster | None = None
    ray: RayCluster | None = None
    replicas: list[Replica] = field(default_factory=list)
    redis_url: str = ""

    def start(self, say: object) -> Deployment:
        self.home.mkdir(parents=True, exist_ok=True)
        say(f"{self.shards} shard(s): starting Redis")  # type: ignore[operator]
        if self.shards == 1:
            self.single = EmbeddedRedis(self.home / "single")
            self.redis_url = self.single.start()
        else:
            self.cluster = LocalCluster(self.home / "cluster", size=self.shards).start()
            self.redis_url = self.cluster.url
        say("starting a two-node Ray cluster")  # type: ignore[operator]
        self.ray = start_cluster(self.home, head_cpus=NODE_CPUS)
        add_node(self.ray, "worker", self.home, cpus=NODE_CPUS)
        say("starting convoy serve (hosts, API replica 1) and convoy api (replica 2)")  # type: ignore[operator]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOY_", "RAY_", "GOOGLE_"))}
        self.env = {
            **base,
            **self.ray.client_env(),
            "CONVOY_HOME": str(self.home / "convoy"),
            "CONVOY_REDIS_URL": self.redis_url,
            "CONVOY_HOSTS": str(self.hosts),
            "CONVOY_PROVIDERS": json.dumps({"bench": {"base_url": f"{self.upstream_url}/v1"}}),
            "CONVOY_LOG_LEVEL": "WARNING",
            "CONVOY_KEY_REQUESTS_PER_MINUTE": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.replicas.append(self._spawn("serve"))
        self.replicas[0].wait_healthy()
        self.replicas.append(self._spawn("api"))
        self.replicas[1].wait_healthy()
        return self

    def _spawn(self, command: str) -> Replica:
        port = free_port()
        log_path = self.home / f"{command}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", command, "--port", str(port)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Replica(command, process, f"http://127.0.0.1:{port}", log_path)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def store(self) -> redis.Redis:
        """A plain synchronous client of the deployment's Redis (a cluster client on a cluster)."""
        if self.cluster is not None:
            first = self.cluster.primaries[0]
            return redis.RedisCluster(host="127.0.0.1", port=first.port)  # type: ignore[return-value]
        return redis.Redis.from_url(self.redis_url)

    def pids(self) -> dict[str, list[int]]:
        """Pids by kind: ``api`` (the two replicas), ``host`` (the conversation hosts, from their
        heartbeats), ``redis`` (every server)."""
        store = self.store()
        try:
            beats = store.hgetall(keyspace.hosts())
        finally:
            store.close()
        hosts = sorted(int(json.loads(b)["pid"]) for b in beats.values())
        servers = self.cluster.pids if self.cluster is not None else [self.single.pid] if self.single and self.single.pid else []
        return {"api": [r.process.pid for r in self.replicas], "host": hosts, "redis": servers}

    def redis_used_bytes(self) -> int:
        """``used_memory`` of the data set, summed over every server."""
        if self.cluster is not None:
            return sum(int(p.client.info("memory")["used_memory"]) for p in self.cluster.primaries)
        store = self.store()
        try:
            return int(store.info("memory")["used_memory"])
        finally:
            store.close()

    def stop(self) -> None:
        for replica in reversed(self.replicas):
            with contextlib.suppress(Exception):
                replica.stop()
        if self.ray is not None:
            with contextlib.suppress(Exception):
                self.ray.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.single is not None:
            self.single.stop()
