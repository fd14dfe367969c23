"""``convoy bench providers``: what Convoy adds between a model and the client, per provider API.

An upstream runs in this process (the one fake provider, ``bench.upstream``, in a thread) and streams a fixed number of tokens at a
fixed rate, stamping the moment it writes each one; it speaks OpenAI Chat Completions and Gemini's
``streamGenerateContent`` (CRLF-framed SSE). ``convoy serve`` runs in a subprocess with a private
home (its own Redis, Ray, hosts and API), the upstream declared as provider ``bench`` and as the
Gemini endpoint (``GOOGLE_GEMINI_BASE_URL``). For each turn the benchmark makes, per provider, the
same request twice, back to back:

- **direct**: the provider's SDK (``openai``, ``google-genai``) streams from the upstream;
- **convoy**: an HTTP client sends a message to a conversation whose agent uses ``bench/...`` or
  ``google/...`` and reads Convoy's SSE stream (the actor calls the upstream through its adapter,
  the chunks go through Redis and the API).

Figures: time to first token (request sent -> first text delta read) and per-token lag (upstream
write -> client read), p50/p99 for both paths and their difference, per provider, from the same
run. Each conversation grows by a turn per measured turn, as a real one does. Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import httpx2
from google import genai
from google.genai import types as genai_types
from openai import AsyncOpenAI

from bench import Progress, Report, percentile
from bench.clients import sse_frames
from bench.serve import Serve
from bench.upstream import Call, FakeProvider, Reply, Stream
from bench.upstream.openai_chat import chat_live
from runtime.errors import ConvoyError

MODEL = "fixed-rate"


@dataclass(frozen=True)
class ProvidersOptions:
    turns: int = 40
    tokens: int = 20
    rate_hz: float = 100.0
    warmup: int = 3
    python: str = sys.executable  # the interpreter that runs convoy serve (another checkout's venv: its code)


# -- the upstream -------------------------------------------------------------------------------------


class Upstream:
    """The one fake provider (``bench.upstream``), streaming ``tokens`` tokens at ``rate_hz`` to any
    request; token i of the request whose last user message is ``marker`` is written at
    ``written[marker][i]`` (perf_counter_ns). It speaks OpenAI Chat Completions and Gemini's
    ``streamGenerateContent``."""

    def __init__(self, tokens: int, rate_hz: float) -> None:
        self.tokens = tokens
        self.rate_hz = rate_hz
        self.written: dict[str, list[int]] = {}
        self._fake = FakeProvider(respond=self._respond)
        self.url = ""

    def start(self) -> None:
        self.url = self._fake.start().url

    def stop(self) -> None:
        self._fake.stop()

    def _respond(self, call: Call) -> Reply:
        body = call.body
        if call.path.endswith(":streamGenerateContent"):
            model = call.path.rsplit("/", 1)[-1].partition(":")[0]
            marker = str(body["contents"][-1]["parts"][-1]["text"])
            return Stream(self._gemini(model, marker))
        marker = str(body["messages"][-1]["content"])
        pieces = (f"t{i} " async for i in self._paced(marker))
        return Stream(chat_live(body["model"], pieces, completion_tokens=self.tokens, response_id=f"chatcmpl-{marker}"))

    async def _paced(self, marker: str) -> AsyncIterator[int]:
        """Token indexes at ``rate_hz``, each stamped as it is handed out (then written at once)."""
        stamps = self.written.setdefault(marker, [])
        interval, start = 1 / self.rate_hz, time.perf_counter()
        for i in range(self.tokens):
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
            stamps.append(time.perf_counter_ns())
            yield i

    async def _gemini(self, model: str, marker: str) -> AsyncIterator[bytes]:
        def chunk(text: str, finish: str | None = None) -> bytes:
            candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            usage: dict[str, int] = {"promptTokenCount": 1, "totalTokenCount": 1}
            if finish:
                candidate["finishReason"] = finish
                usage = {"promptTokenCount": 1, "candidatesTokenCount": self.tokens, "totalTokenCount": self.tokens + 1}
            doc = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": marker}
            return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"

        async for i in self._paced(marker):
            yield chunk(f"t{i} ")
        yield chunk("", finish="STOP")


# -- measuring ------------------------------------------------------------------------------------------


@dataclass
class Samples:
    ttft_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)

    def take(self, sent_ns: int, arrivals: list[int], written: list[int]) -> None:
        if not arrivals:
            raise ConvoyError("a turn produced no tokens")
        self.ttft_ms.append((arrivals[0] - sent_ns) / 1e6)
        self.lag_ms += [(a - w) / 1e6 for a, w in zip(arrivals, written, strict=False)]


async def _direct(client: AsyncOpenAI, marker: str) -> tuple[int, list[int]]:
    sent = time.perf_counter_ns()
    arrivals: list[int] = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": marker}], stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter_ns())
    return sent, arrivals


async def _direct_gemini(client: genai.client.AsyncClient, marker: str) -> tuple[int, list[int]]:
    sent = time.perf_counter_ns()
    arrivals: list[int] = []
    config = {"automatic_function_calling": {"disable": True}}  # as Convoy calls it
    async for chunk in await client.models.generate_content_stream(model=MODEL, contents=marker, config=config):
        content = chunk.candidates[0].content if chunk.candidates else None
        if content is not None and any(p.text for p in content.parts or ()):
            arrivals.append(time.perf_counter_ns())
    return sent, arrivals


@dataclass
class Measured:
    """One provider API measured both ways."""

    label: str
    handle: str
    direct: Samples = field(default_factory=Samples)
    convoy: Samples = field(default_factory=Samples)
    trips: dict[str, Trip] = field(default_factory=dict)  # run id -> its turn's trip, measured turns only


@dataclass(frozen=True)
class Trip:
    """One turn through Convoy, on the wall clock (to line up with the run's own timestamps)."""

    sent_s: float
    first_text_s: float


async def _convoy(
    client: httpx.AsyncClient, conversation_id: str, marker: str, trips: dict[str, Trip]
) -> tuple[int, list[int]]:
    # Token streaming: each token as it comes (the default, as in Letta, is one message per step).
    body = {"messages": [{"role": "user", "content": marker}], "stream_tokens": True}
    sent_wall = time.time()
    sent = time.perf_counter_ns()
    arrivals: list[int] = []
    run_id = ""
    async with client.stream("POST", f"/v1/conversations/{conversation_id}/messages", json=body) as response:
        if response.status_code != 200:
            raise ConvoyError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for now, frames in sse_frames(response):
            for frame in frames:
                if b'"assistant_message"' in frame:
                    if not arrivals:
                        trips[run_id] = Trip(sent_wall, time.time())
                    arrivals.append(now)
                elif b"event: error" in frame:
                    raise ConvoyError(f"the run failed: {frame.decode(errors='replace')[:300]}")
                elif not run_id and b'"run_id":"' in frame:
                    run_id = frame.split(b'"run_id":"', 1)[1].split(b'"', 1)[0].decode()
    return sent, arrivals


async def _measure(serve: Serve, upstream: Upstream, opts: ProvidersOptions, report: Report, say: Progress) -> None:
    openai_path = Measured("OpenAI Chat Completions (openai SDK)", f"bench/{MODEL}")
    gemini_path = Measured("Gemini streamGenerateContent (google-genai SDK)", f"google/{MODEL}")
    sdk = AsyncOpenAI(base_url=f"{upstream.url}/v1", api_key="bench", max_retries=0)
    # The transport Convoy's own client uses (runtime.providers.gemini.make_client), so both paths read
    # through the same HTTP client (with aiohttp installed the SDK would otherwise pick aiohttp).
    options = genai_types.HttpOptions(
        base_url=upstream.url,
        api_version="v1beta",
        retry_options=genai_types.HttpRetryOptions(attempts=1),
        async_client_args={"transport": httpx2.AsyncHTTPTransport()},
    )
    gemini = genai.Client(api_key="bench", http_options=options).aio
    async with httpx.AsyncClient(base_url=serve.url, timeout=60) as client:
        conversations = {}
        for path in (openai_path, gemini_path):
            agent = (await client.post("/v1/agents", json={"name": "bench", "model": path.handle})).json()
            conversations[path.label] = (await client.post("/v1/conversations", params={"agent_id": agent["id"]})).json()["id"]
        for turn in range(opts.warmup + opts.turns):
            measuring = turn >= opts.warmup
            for path, direct in ((openai_path, lambda m: _direct(sdk, m)), (gemini_path, lambda m: _direct_gemini(gemini, m))):
                conversation = conversations[path.label]
                for name, samples, call in (
                    ("direct", path.direct, direct),
                    ("convoy", path.convoy, lambda m: _convoy(client, conversation, m, path.trips if measuring else {})),  # noqa: B023 - called in this iteration
                ):
                    marker = f"{path.handle}-{name}-{turn}"
                    sent, arrivals = await call(marker)
                    if measuring:
                        samples.take(sent, arrivals, upstream.written[marker])
            if measuring and (turn - opts.warmup + 1) % 10 == 0:
                say(f"{turn - opts.warmup + 1}/{opts.turns} turns")
        breakdowns = {path.label: await _breakdown(client, path.trips) for path in (openai_path, gemini_path)}
    await sdk.close()
    await gemini.aclose()
    for path in (openai_path, gemini_path):
        report.section(
            f"{path.label}: {opts.turns} turns of {opts.tokens} tokens at {opts.rate_hz:g} tokens/s, direct SDK call vs through Convoy"
        )
        for label, d, c in (
            ("time to first token", path.direct.ttft_ms, path.convoy.ttft_ms),
            ("per-token lag", path.direct.lag_ms, path.convoy.lag_ms),
        ):
            for pct in (50, 99):
                dp, cp = percentile(d, pct), percentile(c, pct)
                report.add(f"{label} p{pct} (ms)", f"direct {dp:7.2f}   convoy {cp:7.2f}   added {cp - dp:+7.2f}")
        report.section(f"{path.label}: where Convoy's time to first token goes (runs and step traces; p50 / p99 ms)")
        for label, values in breakdowns[path.label].items():
            report.add(label, f"{percentile(values, 50):7.2f} / {percentile(values, 99):7.2f}")


async def _breakdown(client: httpx.AsyncClient, trips: dict[str, Trip]) -> dict[str, list[float]]:
    """Where each measured turn's time to first token went: the client's clock at both ends, the
    run's and its first step's timestamps in between (one machine, one wall clock)."""
    parts: dict[str, list[float]] = {
        "request sent -> accepted (HTTP, auth, validation, reads)": [],
        "accepted -> run started (dispatch)": [],
        "run started -> provider request (load, build)": [],
        "provider request -> first token (in the actor)": [],
        "first token -> client (chunk bus, SSE)": [],
    }
    for run_id, trip in trips.items():
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        steps = (await client.get(f"/v1/runs/{run_id}/steps")).json()
        if not steps or not run.get("started_at") or steps[0]["trace"]["ttft_ms"] is None:
            continue
        created = datetime.fromisoformat(run["created_at"]).timestamp()
        started = datetime.fromisoformat(run["started_at"]).timestamp()
        requested = datetime.fromisoformat(steps[0]["created_at"]).timestamp()
        first_token = requested + steps[0]["trace"]["ttft_ms"] / 1e3
        for label, begin, end in zip(
            parts, (trip.sent_s, created, started, requested, first_token), (created, started, requested, first_token, trip.first_text_s), strict=True
        ):
            parts[label].append((end - begin) * 1e3)
    return parts


def run(options: ProvidersOptions) -> int:
    say = Progress("bench")
    report = Report()
    for name in ("httpx", "httpx2", "google_genai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    home = Path(tempfile.mkdtemp(prefix="convoy-bench-providers-"))
    upstream = Upstream(tokens=options.tokens, rate_hz=options.rate_hz)
    serve: Serve | None = None
    complete = False
    try:
        say("starting the upstream and convoy serve")
        upstream.start()
        serve = Serve(home, upstream.url, python=options.python)
        serve.start()
        say(f"measuring {options.warmup} warm-up + {options.turns} turns")
        asyncio.run(_measure(serve, upstream, options, report, say))
        complete = True
    finally:
        if serve is not None:
            serve.stop()
        upstream.stop()
        shutil.rmtree(home, ignore_errors=True)
        report.print(complete=complete)
    return 0
