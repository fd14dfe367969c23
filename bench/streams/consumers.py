"""What every consumer records (``Samples``: each chunk's latency) and the bus consumer, a
``TailerPool`` subscription in the driver. The HTTP SSE consumers run in client processes of their
own (``bench.streams.sse``); the baseline's poller is ``bench.streams.baseline.poll_xrange``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.streams.plan import BUS_GET_TIMEOUT_S, MEASURED, WARMUP, Target
from runtime.stream.tailer import TailerPool


@dataclass
class Samples:
    """What the readers of one phase received."""

    latencies_ns: list[int] = field(default_factory=list)
    received: int = 0
    finished: int = 0

    def take(self, payload: bytes, now_ns: int) -> None:
        measured = payload.startswith(MEASURED)
        if not measured and not payload.startswith(WARMUP):
            return  # the accept ping, stop_reason, usage_statistics
        self.received += 1
        if measured:
            start = len(MEASURED)
            self.latencies_ns.append(now_ns - int(payload[start : payload.index(b",", start)]))

    def merge(self, other: Samples) -> None:
        """Add what another reader (a client process) received."""
        self.latencies_ns += other.latencies_ns
        self.received += other.received
        self.finished += other.finished


async def read_bus(pool: TailerPool, target: Target, samples: Samples) -> None:
    """One subscription on a ``TailerPool``: what an API replica's SSE handler gets, minus HTTP."""
    sub = pool.subscribe(target.stream_key, after=1)
    try:
        while True:
            batch = await sub.get(timeout_s=BUS_GET_TIMEOUT_S)
            now_ns = time.perf_counter_ns()
            for item in batch or ():
                if item.terminal:
                    samples.finished += 1
                    return
                samples.take(item.payload, now_ns)
    finally:
        sub.close()
