"""Letta's own server pins ``letta-client`` 1.7.x, and most programs written for Letta run on
that line; the suite runs on the newest (pyproject). This runs the Letta tests again under the
oldest supported SDK, installed beside the suite's (``pip install --target``, no dependencies:
both lines share them) and put first on the path of a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OLDEST_SUPPORTED = "1.7.12"
LETTA_TESTS = [
    "tests/e2e/test_letta_client.py",
    "tests/integration/test_agent_routes.py",
    "tests/integration/test_letta_parity.py",
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_letta_tests_pass_under_letta_client_1_7(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(sdk),
            f"letta-client=={OLDEST_SUPPORTED}",
        ],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(sdk), os.environ.get("PYTHONPATH")]))}
    version = subprocess.run(
        [sys.executable, "-c", "import letta_client; print(letta_client.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert version.stdout.strip() == OLDEST_SUPPORTED, "the child must import the older SDK, not the suite's"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", *LETTA_TESTS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert run.returncode == 0, f"under letta-client {OLDEST_SUPPORTED}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    print(run.stdout.strip().splitlines()[-1])
