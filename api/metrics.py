"""Prometheus metrics of an API process (served at ``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.metrics import Recorder
from runtime.stream.tailer import TailerPool

RUNS_ACCEPTED = Counter("convoy_runs_accepted_total", "Turns accepted into a conversation's mailbox.", ["mode"])
RUNS_DEDUPLICATED = Counter("convoy_runs_deduplicated_total", "Retried sends joined to the run they already started.")
SSE_STREAMS = Gauge("convoy_sse_streams_active", "SSE responses currently open.")
SSE_ITEMS = Counter("convoy_sse_items_total", "Stream items written to SSE clients.")
SSE_DISCONNECTS = Counter("convoy_sse_disconnects_total", "SSE clients gone before the end of their run.", ["mode"])
RUNS_ENDED = Counter(
    "convoy_runs_ended_total",
    "Runs this API process ended itself (cancelled while queued, orphans); their owners count the rest.",
    ["status", "stop_reason"],
)
HTTP_REQUESTS = Counter("convoy_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "convoy_http_request_seconds",
    "Time to the response's first byte.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class ApiRecorder(Recorder):
    """What the conversations' door measures in an API process (``actors.client``)."""

    def run_ended(self, status: str, stop_reason: str) -> None:
        RUNS_ENDED.labels(status, stop_reason).inc()


class TailerMetrics(Collector):
    """What the process's stream tailers are doing, read at each scrape."""

    def __init__(self, tailers: TailerPool) -> None:
        self._tailers = tailers

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "convoy_stream_subscriptions", "Run streams being tailed for SSE clients.", value=self._tailers.subscriptions
        )
        yield CounterMetricFamily(
            "convoy_stream_reads",
            "XREAD rounds of the stream tailers (new subscriptions, gaps, resumes, sweep steps; items "
            "that follow their cursor arrive by pub/sub and need none).",
            value=self._tailers.reads,
        )
