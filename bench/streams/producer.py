"""The producer: a Ray actor pinned to this node that writes every stream of a phase from one
event loop, as a conversation host does (Convoy's ``ChunkWriter``, or the baseline's writer)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass

import ray
import redis.asyncio as aioredis

from bench.streams.baseline import BatchedWriter, flush_stale
from bench.streams.plan import CREATE_BATCH, MEASURED, OWNER, TOKEN_TEXT, WARMUP, Plan, Produced, Target
from runtime import heap
from runtime.ids import segment_otid
from runtime.schemas.messages import AssistantMessage, UsageStatistics
from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.connection import connect
from runtime.store.fencing import Fence
from runtime.store.runs import RunStore
from runtime.stream import wire
from runtime.stream.items import last_seq
from runtime.stream.writer import ChunkWriter


@ray.remote(num_cpus=0)
class Producer:
    """Writes every stream of a phase from one process and one event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ray_nice = os.getpriority(os.PRIO_PROCESS, 0)
        _renice(0)
        self._phase: _ProducerPhase | None = None
        heap.freeze()  # as a conversation host does once it is set up (runtime.heap)

    def pid(self) -> tuple[int, int, int]:
        """Process id, niceness Ray gave it, niceness now."""
        return os.getpid(), self._ray_nice, os.getpriority(os.PRIO_PROCESS, 0)

    async def prepare(self, plan: Plan) -> None:
        """Take ownership of every run (created -> running) and open its writer, before any clock starts."""
        redis = connect(self._settings)
        runs = RunStore(redis, ttl_s=self._settings.stream_ttl_s, maxlen=self._settings.stream_maxlen)
        writers: list[ChunkWriter | BatchedWriter] = []
        for start in range(0, len(plan.targets), CREATE_BATCH):
            chunk = plan.targets[start : start + CREATE_BATCH]
            await asyncio.gather(*(runs.start(_fence(t), t.run_id) for t in chunk))
            if plan.mode == "convoy":
                writers += await asyncio.gather(*(self._chunk_writer(redis, t) for t in chunk))
            else:
                writers += [self._batched_writer(redis, t) for t in chunk]
        self._phase = _ProducerPhase(plan, redis, runs, writers)

    async def produce(self, start_ns: int) -> Produced:
        """Stream every run from ``start_ns`` (``perf_counter_ns``) for warm-up + measure, then end them."""
        phase, self._phase = self._phase, None
        assert phase is not None
        plan = phase.plan
        done = Produced()
        period_ns = int(1e9 / plan.rate_hz)
        warm_end_ns = start_ns + int(plan.warmup_s * 1e9)
        end_ns = warm_end_ns + int(plan.measure_s * 1e9)
        batched = [w for w in phase.writers if isinstance(w, BatchedWriter)]
        flusher = asyncio.create_task(flush_stale(batched)) if batched else None
        try:
            await asyncio.gather(
                *(
                    self._stream(
                        phase, t, w, start_ns + random.randrange(period_ns), period_ns, warm_end_ns, end_ns, done
                    )
                    for t, w in zip(plan.targets, phase.writers, strict=True)
                )
            )
        finally:
            if flusher is not None:
                flusher.cancel()
            await phase.redis.aclose()
        return done

    async def _chunk_writer(self, redis: aioredis.Redis, target: Target) -> ChunkWriter:
        """A run's writer, opened exactly as a conversation activation opens it."""
        return ChunkWriter(
            redis,
            stream_key=target.stream_key,
            epoch_key=keyspace.epoch(target.conversation_id),
            epoch=target.epoch,
            next_seq=await last_seq(redis, target.stream_key) + 1,
            maxlen=self._settings.stream_maxlen,
            ttl_s=self._settings.stream_ttl_s,
            patience_s=self._settings.store_outage_s,
            window_s=self._settings.stream_write_window_ms / 1000,
        )

    def _batched_writer(self, redis: aioredis.Redis, target: Target) -> BatchedWriter:
        settings = self._settings
        return BatchedWriter(redis, target.stream_key, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s)

    async def _stream(
        self,
        phase: _ProducerPhase,
        target: Target,
        writer: ChunkWriter | BatchedWriter,
        first_ns: int,
        period_ns: int,
        warm_end_ns: int,
        end_ns: int,
        done: Produced,
    ) -> None:
        """One run: a chunk every ``period_ns`` (never in bursts to catch up), then its end."""
        message_id = f"message-{target.run_id[4:]}"
        message = AssistantMessage(id=message_id, otid=segment_otid(message_id, 0), content=TOKEN_TEXT)
        message.run_id = target.run_id
        seq = 2  # the baseline's own count (its entry ids are Redis's); 1 is the accept ping
        next_ns = first_ns
        try:
            while True:
                delay_ns = next_ns - time.perf_counter_ns()
                if delay_ns > 0:
                    await asyncio.sleep(delay_ns / 1e9)
                tick_ns = time.perf_counter_ns()
                if tick_ns >= end_ns:
                    break
                if tick_ns - next_ns > period_ns:
                    done.late += 1
                    next_ns = tick_ns
                measured = tick_ns >= warm_end_ns
                message.seq_id = writer.reserve() if isinstance(writer, ChunkWriter) else seq
                body = wire.encode(message)
                sent_ns = time.perf_counter_ns()
                head = MEASURED if measured else WARMUP
                await writer.write("data", head + b'%d,"bench_sent_wall_ns":%d,' % (sent_ns, time.time_ns()) + body[1:])
                seq += 1
                done.written += 1
                done.measured += measured
                next_ns += period_ns
            await self._finish(phase.runs, target, writer)
        except Exception as exc:  # measured, not hidden: reported with the figures
            done.errors.append(f"producer {target.run_id}: {type(exc).__name__}: {exc}")

    async def _finish(self, runs: RunStore, target: Target, writer: ChunkWriter | BatchedWriter) -> None:
        """End the run as its owner would: the terminal items and status in one fenced step (the
        baseline's entry ids are Redis's own, so its end marker goes through its own writer, and
        its run, which nothing else reads, is left as it is)."""
        if isinstance(writer, BatchedWriter):
            await writer.write("done", wire.DONE_PAYLOAD)
            await writer.flush()
            return
        await writer.flush()
        await runs.end(
            target.run_id,
            conversation_id=target.conversation_id,
            ending=wire.Completed("end_turn", UsageStatistics(run_ids=[target.run_id])),
            fence=_fence(target),
            next_seq=writer.reserve(),
            mailbox_entry=target.entry_id,
        )


@dataclass(frozen=True)
class _ProducerPhase:
    plan: Plan
    redis: aioredis.Redis
    runs: RunStore
    writers: list[ChunkWriter | BatchedWriter]


def _fence(target: Target) -> Fence:
    return Fence(target.conversation_id, target.epoch, OWNER)


def _renice(nice: int) -> None:
    """Ray starts workers at nice 15; on one shared machine that lets the API replica and the
    clients (nice 0) starve the writer, a priority effect rather than a cost of the bus. Linux
    keeps niceness per thread, so every thread of the process is set."""
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
