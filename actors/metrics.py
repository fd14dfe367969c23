"""The hosts' metrics, through Ray's own metrics system (``ray.util.metrics``).

Each host process records into Ray's core worker, which hands the points to its node's metrics
agent; the agent serves every process of its node at ``http://<node>:<metrics export port>/metrics``
(``ray start --metrics-export-port``; Ray's dashboard lists every node's address in its Prometheus
service discovery file, ``/tmp/ray/prom_metrics_service_discovery.json`` on the head). Ray exports
each name with a ``ray_`` prefix (``convoy_runs_ended_total`` is scraped as
``ray_convoy_runs_ended_total``) and adds its own labels (``WorkerId``, ``NodeAddress``,
``SessionName``...), so two hosts on a node are two series: sum them in queries. Points reach the
agent every few seconds (Ray's report interval, 10 s by default), not at once.

The metrics are created in the process that records them (a host actor), never in a driver.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

from runtime.metrics import (
    ACTIVATION_BUCKETS_S,
    LONGEST_GAP_BUCKETS_S,
    MAILBOX_DEPTH_BUCKETS,
    TOKEN_GAP_BUCKETS_S,
    TOOL_BUCKETS_S,
    TTFT_BUCKETS_S,
    DeactivationReason,
    ModelLabels,
    ModelMeter,
    Recorder,
    ToolOutcome,
)


class _RayModelMeter(ModelMeter):
    __slots__ = ("_longest", "_pace", "_tags", "_ttft")

    def __init__(self, ttft: Histogram, pace: Histogram, longest: Histogram, tags: dict[str, str]) -> None:
        self._ttft = ttft
        self._pace = pace
        self._longest = longest
        self._tags = tags

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds, self._tags)

    def paced(self, per_token_s: float, longest_gap_s: float) -> None:
        self._pace.observe(per_token_s, self._tags)
        self._longest.observe(longest_gap_s, self._tags)


class RayRecorder(Recorder):
    """Every ``Recorder`` measurement as a Ray metric (names in the README's Metrics section)."""

    def __init__(self) -> None:
        self._models = ModelLabels()
        self._meters: dict[tuple[str, str], _RayModelMeter] = {}
        self._runs = Counter(
            "convoy_runs_ended_total", "Runs ended by their owner, by final status and stop reason.", ("status", "stop_reason")
        )
        self._ttft = Histogram(
            "convoy_model_ttft_seconds",
            "Model request (retries included) to its first streamed content, per step.",
            list(TTFT_BUCKETS_S),
            ("provider", "model"),
        )
        self._pace = Histogram(
            "convoy_model_time_per_token_seconds",
            "A model response's mean time between two streamed content events, one point per response.",
            list(TOKEN_GAP_BUCKETS_S),
            ("provider", "model"),
        )
        self._longest = Histogram(
            "convoy_model_longest_gap_seconds",
            "A model response's longest time between two streamed content events (a stall), one point per response.",
            list(LONGEST_GAP_BUCKETS_S),
            ("provider", "model"),
        )
        self._provider_errors = Counter(
            "convoy_provider_errors_total", "Model calls that failed, by error type.", ("provider", "error_type")
        )
        self._tools = Histogram(
            "convoy_tool_call_seconds", "Server tool calls by outcome, and how long each took.", list(TOOL_BUCKETS_S), ("tool", "outcome")
        )
        self._active = Gauge("convoy_conversations_active", "Conversations active (activated) in this host process.")
        self._deactivated = Counter(
            "convoy_conversations_deactivated_total", "Activations ended, by reason (idle: passivated).", ("reason",)
        )
        self._activation = Histogram(
            "convoy_activation_seconds", "Activating a conversation: taking its lease and starting its worker.", list(ACTIVATION_BUCKETS_S)
        )
        self._mailbox = Histogram(
            "convoy_mailbox_depth",
            "Entries in a conversation's mailbox (the one taken included) when its owner took one.",
            [float(b) for b in MAILBOX_DEPTH_BUCKETS],
        )
        self._renewed = Counter("convoy_lease_renewals_total", "Conversation leases renewed (or taken back after a lapse).")
        self._lost = Counter("convoy_leases_lost_total", "Conversation leases found held by another owner at renewal.")

    def model(self, provider: str, model: str) -> ModelMeter:
        key = (provider, self._models(provider, model))  # bounded, and so is this cache
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = _RayModelMeter(self._ttft, self._pace, self._longest, {"provider": key[0], "model": key[1]})
        return meter

    def provider_error(self, provider: str, error_type: str) -> None:
        self._provider_errors.inc(1, {"provider": provider, "error_type": error_type})

    def tool_call(self, tool: str, outcome: ToolOutcome, seconds: float) -> None:
        self._tools.observe(seconds, {"tool": tool, "outcome": outcome})

    def run_ended(self, status: str, stop_reason: str) -> None:
        self._runs.inc(1, {"status": status, "stop_reason": stop_reason})

    def activated(self, seconds: float) -> None:
        self._activation.observe(seconds)

    def deactivated(self, reason: DeactivationReason) -> None:
        self._deactivated.inc(1, {"reason": reason})

    def conversations_active(self, count: int) -> None:
        self._active.set(count)

    def mailbox_depth(self, depth: int) -> None:
        self._mailbox.observe(depth)

    def leases_renewed(self, renewed: int, lost: int) -> None:
        if renewed:
            self._renewed.inc(renewed)
        if lost:
            self._lost.inc(lost)
