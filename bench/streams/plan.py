"""What a streams benchmark run is made of: its options, scenarios, targets and constants."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from runtime.errors import ConvoyError
from runtime.store import keyspace

# The baseline bus (Letta-style): batched writes, polled reads.


FLUSH_ITEMS = 50
FLUSH_AGE_S = 0.5
FLUSH_CHECK_S = 0.5
POLL_INTERVAL_S = 0.1
XRANGE_COUNT = 1000

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_RATIO = 100.0

IDLE_S = 3.0
START_MARGIN_S = 0.5  # the producer starts this long after the driver says go
OPEN_CONCURRENCY = 64  # SSE requests being opened at once, per client process
STREAMS_PER_CLIENT = 100  # by default, one client process per this many SSE streams, up to one per core
CLIENTS_READY_TIMEOUT_S = 120.0  # spawned, imported, every SSE request of its share open
CREATE_BATCH = 100
DRAIN_TIMEOUT_S = 30.0  # after the producer's end, every reader must have its terminal item by then
HTTP_TIMEOUT_S = 60.0
BUS_GET_TIMEOUT_S = 5.0
API_START_TIMEOUT_S = 90.0
API_STOP_TIMEOUT_S = 15.0
API_POLL_S = 0.2
LOG_TAIL_CHARS = 2000
TOKEN_TEXT = " token"
OWNER = "bench/producer"
PR_SET_PDEATHSIG = 1

Mode = Literal["convoy", "baseline"]
Path_ = Literal["http", "bus"]

# Every benchmark chunk's payload starts with its stamps, then the real encoded message follows.
MEASURED = b'{"bench_measured":true,"bench_sent_ns":'
WARMUP = b'{"bench_measured":false,"bench_sent_ns":'


@dataclass(frozen=True)
class StreamsOptions:
    """The knobs of one run (defaults live in the CLI, ``cli.main``)."""

    streams: int
    rates_hz: tuple[float, ...]
    many: int
    many_rate_hz: float
    warmup_s: float
    measure_s: float
    http: bool = True
    baseline: bool = True
    client_processes: int | None = None  # None: ``clients_for`` picks

    def __post_init__(self) -> None:
        if self.streams < 1 or self.many < 0 or self.warmup_s < 0 or self.measure_s <= 0:
            raise ConvoyError(
                "bench streams: --streams and --measure-s must be positive, --many and --warmup-s not negative"
            )
        if self.client_processes is not None and self.client_processes < 1:
            raise ConvoyError("bench streams: --client-processes must be 1 or more")

    def clients_for(self, streams: int) -> int:
        """Client processes reading ``streams`` SSE streams: as asked, else one per
        ``STREAMS_PER_CLIENT`` streams, at most one per core (a process beyond that only shares a
        core), never more than there are streams."""
        if self.client_processes is not None:
            return min(self.client_processes, streams)
        return max(1, min(math.ceil(streams / STREAMS_PER_CLIENT), os.cpu_count() or 1, streams))
        if any(rate <= 0 for rate in (*self.rates_hz, self.many_rate_hz)):
            raise ConvoyError("bench streams: rates must be positive")

    def scenarios(self) -> list[Scenario]:
        found = [Scenario(self.streams, rate) for rate in self.rates_hz]
        if self.many:
            found.append(Scenario(self.many, self.many_rate_hz))
        return found


@dataclass(frozen=True)
class Scenario:
    streams: int
    rate_hz: float

    @property
    def title(self) -> str:
        return (
            f"{self.rate_hz:g} chunks/s per stream, {self.streams} concurrent stream(s)"
            f"  ({self.streams * self.rate_hz:g} chunks/s in all)"
        )


def ms(ns: float) -> float:
    return ns / 1e6


# -- the producer: a Ray actor, like a conversation host --------------------------------------------


@dataclass(frozen=True)
class Target:
    """One run being streamed, with the fencing epoch its producer writes under."""

    conversation_id: str
    run_id: str
    entry_id: str
    epoch: int

    @property
    def stream_key(self) -> str:
        return keyspace.run_stream(self.conversation_id, self.run_id)


@dataclass(frozen=True)
class Plan:
    mode: Mode
    targets: list[Target]
    rate_hz: float
    warmup_s: float
    measure_s: float


@dataclass
class Produced:
    """What the producer did in one phase."""

    written: int = 0
    measured: int = 0
    late: int = 0  # ticks that fired more than one period late: the producer could not keep up
    errors: list[str] = field(default_factory=list)
