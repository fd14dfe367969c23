"""A setting ``convoy`` cannot use is named in one line, never answered with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

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
