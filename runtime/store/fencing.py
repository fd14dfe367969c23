"""Fencing an owner's writes, and keeping them going through a Redis outage.

- **Fencing.** Every write of a conversation's owner carries the epoch it acquired the conversation
  with (``Fence``; see ``actors.directory``); the scripts refuse a stale epoch, and ``call_fenced``
  turns that refusal into ``FencedError``, so an owner that lost the conversation stops at once.
- **An owner's writes outlast a Redis outage.** Every fenced script of an owner (the mailbox's take,
  a run's start and end, a step trace, a history append) and the chunk appends are idempotent:
  sending one again after it ran changes nothing and reports what the first sending did (a take or
  start answers ``resumed``, an end that had landed says so, a trace or an append that is already
  stored is skipped). So ``through_outage`` sends them again, with jittered exponential backoff,
  when their connection failed or timed out (they may or may not have run), for as long as the
  owner's patience (``Fence.patience_s``: ``CONVOY_STORE_OUTAGE_S``) allows, each try bounded by
  what is left of it; then ``StoreUnavailableError`` says for how long Redis was unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_before_delay, wait_random_exponential

from runtime.errors import FencedError, StoreUnavailableError
from runtime.store.connection import reraise_if_cancelling

log = logging.getLogger(__name__)
T = TypeVar("T")

# What an owner's write may meet while Redis is unreachable: a refused, broken or silent connection
# (a try cut short by the owner's own deadline is a TimeoutError, an OSError).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
RESEND_BACKOFF_S = 0.05  # first wait between two sendings of an owner's write, doubling...
RESEND_BACKOFF_MAX_S = 1.0  # ...up to this (jittered)


@dataclass(frozen=True, slots=True)
class Fence:
    """An owner's proof of ownership, carried by every write it makes, and how long the owner keeps
    sending a write again while Redis is unreachable (``through_outage``; 0: never, ``math.inf``:
    until it lands)."""

    conversation_id: str
    epoch: int
    owner: str = ""
    patience_s: float = 0.0


async def through_outage(call: Callable[[], Awaitable[T]], *, patience_s: float, what: str) -> T:
    """``call()``, made again while Redis cannot be reached, for at most ``patience_s`` in all.

    Only for idempotent calls (see the module docstring): a try whose connection failed or timed
    out may have run. Tries are spaced by jittered exponential backoff, and each is cut short when
    the patience runs out (a frozen Redis holds a connection without ever answering). Raises
    ``StoreUnavailableError`` saying for how long Redis was unreachable; any other error at once."""
    if patience_s <= 0:
        return await call()
    started = time.monotonic()
    # The first try on its own: the retrying machinery costs more than most writes (it was ~15% of a
    # host's CPU, once per token); it only starts once Redis could not be reached.
    try:
        async with asyncio.timeout(patience_s if math.isfinite(patience_s) else None):
            return await call()
    except UNREACHABLE as exc:
        reraise_if_cancelling()
        log.warning("Redis unreachable; sending again", extra={"what": what, "tries": 1, "waited_s": 0.0, "error": repr(exc)})
        # The first wait of the backoff below, which starts its count at its own first try.
        await asyncio.sleep(min(random.uniform(0, RESEND_BACKOFF_S), max(0.0, started + patience_s - time.monotonic())))

    async def attempt() -> T:
        left_s = started + patience_s - time.monotonic()
        async with asyncio.timeout(left_s if math.isfinite(left_s) else None):
            return await call()

    def again(state: RetryCallState) -> None:
        reraise_if_cancelling()  # redis-py may turn a cancellation into a ConnectionError
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "Redis unreachable; sending again",
            extra={"what": what, "tries": state.attempt_number, "waited_s": round(time.monotonic() - started, 1), "error": repr(error)},
        )

    retrying = AsyncRetrying(
        stop=stop_before_delay(max(0.0, started + patience_s - time.monotonic())),
        wait=wait_random_exponential(multiplier=RESEND_BACKOFF_S, max=RESEND_BACKOFF_MAX_S),
        retry=retry_if_exception_type(UNREACHABLE),
        before_sleep=again,
        reraise=True,
    )
    try:
        return await retrying(attempt)
    except UNREACHABLE as exc:
        reraise_if_cancelling()
        waited_s = time.monotonic() - started
        raise StoreUnavailableError(
            f"Redis was unreachable for {waited_s:.0f} s ({what}; an owner waits at most {patience_s:g} s, "
            f"CONVOY_STORE_OUTAGE_S): {exc!r}"
        ) from exc


async def call_fenced(script: Any, *, fence: Fence | None, keys: list[str], args: list[Any], refused: str) -> Any:
    """Run one of an owner's fenced scripts (idempotent, see the module docstring), sent again
    while Redis is unreachable for ``fence.patience_s`` (none without a fence): its reply, or
    ``FencedError(refused)`` when Redis turned a stale owner away (the script's ``FENCED`` error,
    or a stream entry id at or below the last one, which only a newer owner can have written)."""
    try:
        return await through_outage(
            lambda: script(keys=keys, args=args), patience_s=fence.patience_s if fence else 0.0, what=f"a write to {keys[1]}"
        )
    except ResponseError as exc:
        if "FENCED" in str(exc) or "equal or smaller" in str(exc):
            raise FencedError(refused) from exc
        raise


