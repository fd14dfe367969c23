"""A setting ``convoy`` cannot use is named in one line, never answered with a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({"CONVOY_HOSTS": "0"}, ["serve"], "CONVOY_HOSTS: Input should be greater than or equal to 1 (got '0')"),
        ({"CONVOY_PORT": "abc"}, ["serve"], "CONVOY_PORT: Input should be a valid integer"),
        ({}, ["serve", "--port", "70000"], "CONVOY_PORT: Input should be less than or equal to 65535 (got 70000)"),
        ({"CONVOY_PROVIDERS": "{bad"}, ["keys", "list"], 'error parsing value for field "providers"'),
        ({"CONVOY_LOG_LEVEL": "verbose"}, ["chat"], "CONVOY_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ],
    ids=["hosts", "port", "port-flag", "providers", "log-level"],
)
def test_a_bad_setting_is_named_in_one_line(env: dict[str, str], args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and says in done.stderr, done.stderr
    assert done.stderr.startswith("convoy: bad setting: ")


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_port_in_use_is_refused_at_once_before_anything_starts(command: str, tmp_path: Path) -> None:
    """The API's port is bound first: a port another process holds is a one-line error before Redis
    or Ray start (nothing is left in the home), not a bind failure after them."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "CONVOY_HOME": str(tmp_path / "home")}
        if command == "api":
            env["CONVOY_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached: the port comes first
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", command, "--port", str(port)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"convoy: cannot listen on 127.0.0.1:{port}: Address already in use"), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "redis").exists(), "the embedded Redis was started before the port was checked"
