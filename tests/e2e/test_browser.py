"""A real browser (headless Chromium) resumes a dropped stream by itself with ``Last-Event-ID``.

The page opens an ``EventSource`` on ``GET /v1/runs/{id}/stream`` through a small front proxy
(served on the same origin as the page). The proxy drops the first connection mid-run, without a
clean end, the way a flaky network or a restarted load balancer does; the browser reconnects with
``Last-Event-ID`` and the page must end with the complete text, every seq_id exactly once.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped when absent outside CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import Convoy, free_port, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DROP_AFTER_EVENTS = 40
WORDS = 400

PAGE = """<!doctype html><meta charset="utf-8"><title>convoy</title><pre id="out"></pre><script>
const seen = [], text = [];
let opens = 0;
const es = new EventSource("/v1/runs/RUN_ID/stream");
es.onopen = () => { opens += 1; };
es.onmessage = (e) => {
  if (e.data === "[DONE]") {
    es.close();
    document.getElementById("out").textContent = text.join("");
    fetch("/result", {method: "POST", body: JSON.stringify({seen, text: text.join(""), opens})});
    return;
  }
  const item = JSON.parse(e.data);
  seen.push(item.seq_id);
  if (item.message_type === "assistant_message") text.push(item.content);
};
</script>"""


class FrontProxy:
    """Serves the page, collects its result, and forwards the stream, dropping it once."""

    def __init__(self, upstream: str, run_id: str) -> None:
        self.upstream = upstream
        self.run_id = run_id
        self.connections: list[str | None] = []
        self.result: dict[str, Any] | None = None
        self.app = Starlette(
            routes=[
                Route("/page", self.page),
                Route("/result", self.collect, methods=["POST"]),
                Route("/v1/runs/{run_id}/stream", self.stream),
            ]
        )

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE.replace("RUN_ID", self.run_id))

    async def collect(self, request: Request) -> Response:
        self.result = json.loads(await request.body())
        return JSONResponse({})

    async def stream(self, request: Request) -> Response:
        last_event_id = request.headers.get("last-event-id")
        self.connections.append(last_event_id)
        drop = len(self.connections) == 1
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}

        async def body() -> AsyncIterator[bytes]:
            async with httpx.AsyncClient(timeout=60) as client:
                url = f"{self.upstream}/v1/runs/{self.run_id}/stream"
                async with client.stream("GET", url, headers=headers) as upstream:
                    events = 0
                    async for chunk in upstream.aiter_raw():
                        yield chunk
                        events += chunk.count(b"\n\n")
                        if drop and events >= DROP_AFTER_EVENTS:
                            raise ConnectionAbortedError("dropping the connection mid-run")

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@pytest.fixture
def browser_available() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must install it")
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it")


def _serve(app: Starlette, port: int) -> Iterator[uvicorn.Server]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, message="front proxy to start")
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_eventsource_resumes_a_dropped_stream_exactly_once(convoy: Convoy, browser_available: None, tmp_path: Path) -> None:
    text = " ".join(f"word{i}" for i in range(WORDS))
    with httpx.Client(base_url=convoy.url, timeout=60) as client:
        agent = client.post("/v1/agents", json={"name": "browser"}).json()
        conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]
        body = {"input": text, "background": True, "stream_tokens": True}
        with client.stream("POST", f"/v1/conversations/{conv}/messages", json=body) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
        run_id = json.loads(first.removeprefix("data: "))["run_id"]

    proxy = FrontProxy(convoy.url, run_id)
    port = free_port()
    serving = _serve(proxy.app, port)
    next(serving)
    chromium = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"http://127.0.0.1:{port}/page",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: proxy.result is not None, 90, interval_s=0.1, message="the page to finish")
    finally:
        chromium.kill()
        chromium.wait()
        serving.close()

    result = proxy.result
    assert result is not None
    assert len(proxy.connections) >= 2 and proxy.connections[0] is None, "the browser reconnected"
    assert proxy.connections[1] is not None and int(proxy.connections[1]) > 0, "with Last-Event-ID"
    assert result["opens"] >= 2
    assert result["seen"] == list(range(1, len(result["seen"]) + 1)), "every seq_id exactly once, in order"
    assert result["text"] == text
