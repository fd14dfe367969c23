"""What a conversation's owner measures, and the one door it goes out through: a ``Recorder``.

The code that measures lives in ``runtime`` (the step loop times the model, the toolbox times each
tool) and in ``actors`` (runs ending, activations, mailboxes, leases); ``runtime`` knows nothing of
Ray, so it only calls a ``Recorder``. The base class records nothing (``QUIET``, every default); a
host plugs in ``actors.metrics.RayRecorder`` (Ray's own metrics system, served by each node's
metrics agent) and an API process a Prometheus one for the runs it ends itself (``api.metrics``).

Guarantees:

- **Labels are bounded.** Never an id (run, conversation, agent, tenant, tool call): only values
  from closed sets (statuses, stop reasons, error types, outcomes, deactivation reasons), the names
  of registered tools, provider names from the settings, and model names, of which a process keeps
  at most ``MAX_MODEL_LABELS`` (``ModelLabels``; any further model is ``"other"``, since a tenant
  chooses the name: ``echo/<anything>`` streams).
- **Nothing costs more than a few µs per token.** Only the inter-token gap is recorded per token
  (one histogram observation; measured ~4 µs in a Ray host, against ~360 µs of CPU the chunk's
  write costs); everything else is recorded once per step, tool call, run or activation.
- **Recording never changes what a run does.** A ``Recorder`` method must not raise or block.
"""

from __future__ import annotations

from typing import Literal

# A tool call's outcome: it ran and returned, or why it failed (``runtime.tools.registry``).
ToolFailure = Literal["timeout", "invalid_arguments", "unavailable"]
ToolOutcome = Literal["success", "error"] | ToolFailure
# Why an activation ended: idle for CONVOY_IDLE_PASSIVATE_S (passivated), fenced out by a newer
# owner, its lease found held by another owner, or a bug.
DeactivationReason = Literal["idle", "fenced", "lease_lost", "crashed"]

# Histogram buckets, in seconds (or items); the dashboard (deploy/grafana/convoy.json) reads them.
TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TOKEN_GAP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LONGEST_GAP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOOL_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0)
ACTIVATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
MAILBOX_DEPTH_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100)

MAX_MODEL_LABELS = 100
OTHER_MODEL = "other"
UNREGISTERED_TOOL = "unregistered"  # a call of a tool the agent does not have (a model's invention)


class ModelMeter:
    """One model response being streamed (``Recorder.model``): its first token, then its pace once
    it ended. This one records nothing.

    The pace is two points per response, not one per token: every point costs Ray's metrics agent
    CPU of its own, and a point per token took it ~0.7 ms of CPU per 50-token turn, against ~0.2 ms
    now (``convoy bench turns``; README, Measured)."""

    __slots__ = ()

    def first_token(self, seconds: float) -> None:
        """From the request (retries included) to the response's first content."""

    def paced(self, per_token_s: float, longest_gap_s: float) -> None:
        """A response with two content events or more, once it ended (completed, failed or
        cancelled): the mean time between two of its content events, and the longest."""


QUIET_METER = ModelMeter()


class Recorder:
    """Where measurements go; this one drops them (see the module docstring)."""

    def model(self, provider: str, model: str) -> ModelMeter:
        return QUIET_METER

    def provider_error(self, provider: str, error_type: str) -> None:
        """A model call failed with ``error_type`` (``runtime.errors``, ``llm_*``)."""

    def tool_call(self, tool: str, outcome: ToolOutcome, seconds: float) -> None:
        """A server tool ran (``tool``: its registered name, or ``UNREGISTERED_TOOL``)."""

    def run_ended(self, status: str, stop_reason: str) -> None:
        """A run reached its terminal status (counted once: by whoever wrote its end)."""

    def activated(self, seconds: float) -> None:
        """A conversation was activated here, in ``seconds`` (lease taken, worker started)."""

    def deactivated(self, reason: DeactivationReason) -> None:
        """An activation ended (``idle``: passivated)."""

    def conversations_active(self, count: int) -> None:
        """How many activations this process holds now."""

    def mailbox_depth(self, depth: int) -> None:
        """Entries in a conversation's mailbox (the one taken included) when its owner took one."""

    def leases_renewed(self, renewed: int, lost: int) -> None:
        """One renewal pass: leases extended (or taken back after a lapse), and leases found lost."""


QUIET = Recorder()


class ModelLabels:
    """The model label of a (provider, model): the model's name for the first ``limit`` pairs a
    process sees, ``OTHER_MODEL`` for any after them."""

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self._limit = limit
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, provider: str, model: str) -> str:
        key = (provider, model)
        if key in self._seen:
            return model
        if len(self._seen) >= self._limit:
            return OTHER_MODEL
        self._seen.add(key)
        return model
