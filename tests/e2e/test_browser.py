"""A real browser (headless Chromium) resumes a dropped stream by itself with ``Last-Event-ID``.

The page opens an ``EventSource`` on ``GET /v1/runs/{id}/stream`` through a small front proxy
(served on the same origin as the page). The proxy drops the first connection mid-run, without a
clean end, the way a flaky network or a restarted load balancer does; the browser reconnects with
``Last-Event-ID`` and the page must end with the complete text, every seq_id exactly once. With
keys on, the page has no key at all: only a stream token in the stream's URL (``?token=``), which
the browser sends again when it reconnects.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped when absent outside CI.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import Convoy, KeyedConvoy, free_port, wait_until
from tests.e2e.conftest import CHROMIUM

DROP_AFTER_EVENTS = 40
WORDS = 400

PAGE = """<!doctype html><meta charset="utf-8"><title>convoy</title><pre id="out"></pre><script>
const seen = [], text = [];
let opens = 0;
const es = new EventSource("/v1/runs/RUN_ID/stream" + location.search);
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
        self.queries: list[str] = []
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
        self.queries.append(request.url.query)
        drop = len(self.connections) == 1
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}

        async def body() -> AsyncIterator[bytes]:
            async with httpx.AsyncClient(timeout=60) as client:
                url = f"{self.upstream}/v1/runs/{self.run_id}/stream?{request.url.query}"
                async with client.stream("GET", url, headers=headers) as upstream:
                    assert upstream.status_code == 200, await upstream.aread()
                    events = 0
                    async for chunk in upstream.aiter_raw():
                        yield chunk
                        events += chunk.count(b"\n\n")
                        if drop and events >= DROP_AFTER_EVENTS:
                            raise ConnectionAbortedError("dropping the connection mid-run")

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


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


def _background_run(client: httpx.Client, text: str) -> str:
    agent = client.post("/v1/agents", json={"name": "browser"}).json()
    conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]
    body = {"input": text, "background": True, "stream_tokens": True}
    with client.stream("POST", f"/v1/conversations/{conv}/messages", json=body) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
    return str(json.loads(first.removeprefix("data: "))["run_id"])


def _resume_through_a_dropping_proxy(upstream: str, run_id: str, query: str, tmp_path: Path) -> FrontProxy:
    proxy = FrontProxy(upstream, run_id)
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
            f"http://127.0.0.1:{port}/page{query}",
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
    return proxy


def _check_resumed_exactly_once(proxy: FrontProxy, text: str) -> None:
    result = proxy.result
    assert result is not None
    assert len(proxy.connections) >= 2 and proxy.connections[0] is None, "the browser reconnected"
    assert proxy.connections[1] is not None and int(proxy.connections[1]) > 0, "with Last-Event-ID"
    assert result["opens"] >= 2
    assert result["seen"] == list(range(1, len(result["seen"]) + 1)), "every seq_id exactly once, in order"
    assert result["text"] == text


def test_eventsource_resumes_a_dropped_stream_exactly_once(convoy: Convoy, browser_available: None, tmp_path: Path) -> None:
    text = " ".join(f"word{i}" for i in range(WORDS))
    with httpx.Client(base_url=convoy.url, timeout=60) as client:
        run_id = _background_run(client, text)
    _check_resumed_exactly_once(_resume_through_a_dropping_proxy(convoy.url, run_id, "", tmp_path), text)


def test_eventsource_resumes_with_keys_on_through_a_stream_token(
    keyed_convoy: KeyedConvoy, browser_available: None, tmp_path: Path
) -> None:
    """The page holds no key: the stream token in its URL is all the browser sends, on every reconnection."""
    text = " ".join(f"keyed{i}" for i in range(WORDS))
    with keyed_convoy.client(keyed_convoy.acme) as client:
        run_id = _background_run(client, text)
        token = client.post(f"/v1/runs/{run_id}/stream-token").json()["token"]
    proxy = _resume_through_a_dropping_proxy(keyed_convoy.url, run_id, f"?token={token}", tmp_path)
    _check_resumed_exactly_once(proxy, text)
    assert all(query == f"token={token}" for query in proxy.queries), proxy.queries
