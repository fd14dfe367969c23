"""The embedded Redis of ``convoy serve`` (``runtime.store.embedded``) in the homes users have, and its
one owner per data directory (``convoy keys`` included) through restarts and crashes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench import wait_until
from runtime.errors import EmbeddedRedisError
from runtime.store import keyspace
from runtime.store.embedded import EmbeddedRedis, recorded_url
from tests.conftest import alive


def test_a_home_whose_path_holds_spaces_and_quotes_serves_and_keeps_its_data(tmp_path: Path) -> None:
    """macOS's ``~/Library/Application Support`` is such a path; the server refused its
    configuration file (one argument per word) and Convoy could not start there."""
    home = tmp_path / 'Application Support' / 'my "convoy"'
    server = EmbeddedRedis(home)
    try:
        url = server.start()
        assert recorded_url(home) == url
        client = redis.Redis.from_url(url)
        try:
            assert client.set("kept", "yes")
        finally:
            client.close()
    finally:
        server.stop()
    assert (home / "redis" / "appendonlydir").is_dir(), "its data lives in the home"
    again = EmbeddedRedis(home)
    try:
        client = redis.Redis.from_url(again.start())
        try:
            assert client.get("kept") == b"yes", "the append-only file was found and replayed"
        finally:
            client.close()
    finally:
        again.stop()


# A ``convoy serve`` as far as its data directory goes: a supervised embedded Redis in a process of
# its own, so a test can freeze it (SIGSTOP) or crash it (SIGKILL). It stops when its stdin closes.
OWNER = """
import sys
from pathlib import Path
from runtime.store.embedded import EmbeddedRedis
server = EmbeddedRedis(Path(sys.argv[1]), supervised=True)
print(server.start(), flush=True)
sys.stdin.read()
server.stop()
"""
REPO = Path(__file__).resolve().parents[2]
CONVOY = Path(sys.executable).parent / "convoy"
CLI_TIMEOUT_S = 60.0
STARTED_OWN = "started the embedded Redis"


@contextlib.contextmanager
def owner_process(home: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A supervised embedded Redis owning ``home`` in a process of its own; yields it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(home)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        url = proc.stdout.readline().strip()  # bounded: start() gives up after START_TIMEOUT_S
        assert url.startswith("redis://"), f"the owner did not start (exit {proc.poll()})"
        yield proc, url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli_env(home: Path) -> dict[str, str]:
    """The environment of a ``convoy`` command a user runs for ``home`` (no CONVOY_REDIS_URL)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")} | {"CONVOY_HOME": str(home)}


def convoy_keys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONVOY), "keys", *args], env=cli_env(home), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def answers(url: str) -> bool:
    with contextlib.closing(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)) as client:
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False


def test_a_second_start_while_serve_restarts_its_redis_is_refused_and_serve_recovers(tmp_path: Path) -> None:
    """Regression: in the pause before the supervisor starts a killed server again nothing was
    recorded as running, so ``convoy keys`` started a second server on the directory. It rewrote
    server.conf with its own port and removed the records when it stopped; the supervisor's next
    server listened on that port, its health check pinged the old URL, gave up after 15 s, killed
    it and started another: forever, every API request 503 until ``convoy serve`` restarted."""
    home = tmp_path / "home"
    serve = EmbeddedRedis(home, supervised=True)
    intruder = EmbeddedRedis(home)
    try:
        url = serve.start()
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            client.set("kept", "yes")
        dead = serve.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        wait_until(lambda: recorded_url(home) is None, 5, 0.002, "the killed server to be gone")
        with pytest.raises(EmbeddedRedisError, match=f"process {os.getpid()}"):
            intruder.start()  # the restart gap (0.5 s): serve still owns the directory
        wait_until(lambda: recorded_url(home) == url and answers(url), 10, 0.02, "serve's Redis to answer again")
        assert serve.pid != dead and serve.restarts == 1
        assert f"port {url.rsplit(':', 1)[1].split('/')[0]}" in (home / "redis" / "server.conf").read_text()
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            assert client.get("kept") == b"yes", "the same data directory, replayed"
    finally:
        intruder.stop()
        serve.stop()


def test_keys_revoke_while_serve_restarts_its_redis_waits_and_revokes_in_serves_redis(tmp_path: Path) -> None:
    """Regression (a security hole): ``convoy keys revoke`` while serve's Redis was away ran in a
    server of its own on the same directory, so serve could go on accepting the revoked key. Now it
    waits for serve's server and revokes there. serve is frozen while its server is dead, so the
    gap lasts until the command has said it waits."""
    home = tmp_path / "home"
    with owner_process(home) as (owner, url):
        created = convoy_keys(home, "create", "--tenant", "acme")
        assert created.returncode == 0 and STARTED_OWN not in created.stdout, created.stdout + created.stderr
        key_id = created.stdout.split("created ", 1)[1].split()[0]
        server = int((home / "redis" / "server.pid").read_text())
        os.kill(owner.pid, signal.SIGSTOP)  # its supervisor starts nothing until SIGCONT (owner_process thaws it)
        os.kill(server, signal.SIGKILL)
        wait_until(lambda: recorded_url(home) is None, 5, 0.01, "the killed server to be gone")
        output = tmp_path / "revoke.out"
        with output.open("wb") as sink:
            revoke = subprocess.Popen([str(CONVOY), "keys", "revoke", key_id], env=cli_env(home), stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "waiting for" in output.read_text() or revoke.poll() is not None, CLI_TIMEOUT_S, 0.02, "revoke to wait")
            os.kill(owner.pid, signal.SIGCONT)
            assert revoke.wait(timeout=CLI_TIMEOUT_S) == 0, output.read_text()
        finally:
            if revoke.poll() is None:
                revoke.kill()
                revoke.wait()
        said = output.read_text()
        assert STARTED_OWN not in said and f"revoked {key_id}" in said, said
        wait_until(lambda: recorded_url(home) == url and answers(url), 10, 0.02, "serve's Redis to answer again")
        listing = convoy_keys(home, "list")
        assert listing.returncode == 0 and key_id not in listing.stdout, listing.stdout + listing.stderr
        assert STARTED_OWN not in listing.stdout


def test_a_crashed_owner_leaves_the_directory_free_once_its_server_has_ended(tmp_path: Path) -> None:
    """flock is dropped by the kernel: a SIGKILLed owner's server ends (parent-death signal), and then
    the directory is free for the next owner, which replaces what the dead one had recorded."""
    home = tmp_path / "home"
    with owner_process(home) as (owner, url):
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            client.set("kept", "yes")
        server = int((home / "redis" / "server.pid").read_text())
        owner.kill()
        owner.wait()
        wait_until(lambda: not alive(server), 15, 0.02, "the crashed owner's server to end")
    successor = EmbeddedRedis(home)
    try:
        again = successor.start()
        assert recorded_url(home) == again and (home / "redis" / "server.pid").read_text().strip() == str(successor.pid)
        with contextlib.closing(redis.Redis.from_url(again)) as client:
            assert client.get("kept") == b"yes"
    finally:
        successor.stop()
    assert not (home / "redis" / "url").exists() and not (home / "redis" / "server.pid").exists()


def test_keys_with_no_serve_starts_a_server_for_itself_and_gives_the_directory_back(tmp_path: Path) -> None:
    """The first key of a server meant for a non-loopback address is made before it first starts."""
    home = tmp_path / "home"
    created = convoy_keys(home, "create", "--tenant", "acme")
    assert created.returncode == 0 and STARTED_OWN in created.stdout, created.stdout + created.stderr
    assert recorded_url(home) is None and not (home / "redis" / "url").exists()
    serve = EmbeddedRedis(home, supervised=True)
    try:
        with contextlib.closing(redis.Redis.from_url(serve.start())) as client:
            assert client.hlen(keyspace.api_keys()) == 1, "the key is in the data serve starts on"
    finally:
        serve.stop()
