"""``convoy serve`` in a subprocess, for the benchmarks that measure a whole server (``providers``,
``soak``, ``idle``).

The server gets a private home (its own embedded Redis, local Ray, hosts and API), none of the
caller's ``CONVOY_...``, Google or ``RAY_ADDRESS`` settings (only ``env``'s), and runs from that
home as its working directory: Ray puts its driver's working directory on its workers' import path,
so a server started from a source checkout would import that checkout's code even when run by
another interpreter (``python``: another venv, e.g. the code before a change, for a before/after
in one session). It is started in a session of its own, so a Ctrl-C at the benchmark's terminal
reaches the benchmark only, which stops the server itself (SIGINT, as a user would).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from bench import free_port
from runtime.errors import ConvoyError

SERVE_START_TIMEOUT_S = 180.0
SERVE_STOP_TIMEOUT_S = 60.0
GOOGLE_SETTINGS = ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION")


class Serve:
    """``convoy serve`` with a private ``home``; ``upstream_url``: a fake provider declared as provider
    ``bench`` and as the Gemini endpoint; ``env``: more settings for it; ``python``: the interpreter
    that runs it (default: this one)."""

    def __init__(
        self,
        home: Path,
        upstream_url: str | None = None,
        env: Mapping[str, str] | None = None,
        *,
        python: str = sys.executable,
    ) -> None:
        self._home = home
        self._upstream = upstream_url
        self._env = dict(env or {})
        self._python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        """The server's process (it also runs the API); None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def redis_url(self) -> str:
        """The URL of the server's embedded Redis (its home's ``redis/url``, written while it runs)."""
        return (self._home / "redis" / "url").read_text().strip()

    def start(self) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOY_", "RAY_ADDRESS", *GOOGLE_SETTINGS))}
        env.update({"CONVOY_HOME": str(self._home), "CONVOY_LOG_LEVEL": "WARNING"})
        if self._upstream is not None:
            env.update(
                {
                    "CONVOY_PROVIDERS": json.dumps({"bench": {"base_url": f"{self._upstream}/v1"}}),
                    "GEMINI_API_KEY": "bench",
                    "GOOGLE_GEMINI_BASE_URL": self._upstream,
                }
            )
        env.update(self._env)
        log = (self._home / "serve.log").open("wb")
        self._proc = subprocess.Popen(
            [self._python, "-m", "cli.main", "serve", "--port", str(port)],
            env=env,
            cwd=self._home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise ConvoyError(f"convoy serve exited with code {self._proc.returncode}: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/v1/health").status_code == 200:
                        return
                time.sleep(0.2)
        raise ConvoyError(f"convoy serve did not become healthy in {SERVE_START_TIMEOUT_S:g} s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self._home / "serve.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=SERVE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
