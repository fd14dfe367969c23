"""The API replica under measure: ``convoy api`` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import free_port
from bench.streams.plan import API_POLL_S, API_START_TIMEOUT_S, API_STOP_TIMEOUT_S, LOG_TAIL_CHARS, PR_SET_PDEATHSIG
from runtime.errors import ConvoyError
from runtime.settings import Settings


class ApiReplica:
    """``convoy api`` in a subprocess, on a free loopback port, against our Redis and Ray.

    It dies with this process (parent-death signal) and in its own session, so a Ctrl-C reaches
    the driver only, which then stops it first, before Ray and Redis."""

    def __init__(self, settings: Settings, home: Path, ray_address: str) -> None:
        self._settings = settings
        self._home = home
        self._ray_address = ray_address
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = home / "api.log"
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> str:
        port = free_port()
        env = {
            **os.environ,
            "CONVOY_HOME": str(self._home),
            "CONVOY_REDIS_URL": self._settings.redis_url or "",
            "RAY_ADDRESS": self._ray_address,
            "CONVOY_RAY_NAMESPACE": self._settings.ray_namespace,
            "CONVOY_LOG_LEVEL": "WARNING",
        }
        boot = (
            "import ctypes, signal, sys\n"
            f"ctypes.CDLL('libc.so.6').prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
            "from cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        command = [sys.executable, "-c", boot, "api", "--host", "127.0.0.1", "--port", str(port)]
        with open(self._log, "wb") as log_file:
            self._proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + API_START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise ConvoyError(f"the API replica exited with code {self._proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/metrics").status_code == 200:
                        return
                time.sleep(API_POLL_S)
        raise ConvoyError(f"the API replica did not answer within {API_START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, then the lifespan's
        try:
            proc.wait(timeout=API_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the driver: start, measure, stop ---------------------------------------------------------------
