"""Background loops that never die silently: a host's start, lease renewal, doorbell and heartbeat.

``forever`` runs one step after another, each guarded: a step that fails is logged (a warning for
an unreachable Redis, the traceback for anything else) and the loop waits a jittered backoff that
grows with the failures in a row before the next try, so a loop neither dies nor spins. It ends
when cancelled, or when a step says its work is done (``None``: a start that must succeed once);
otherwise a step says how long to wait before the next one, so a loop can be periodic (a
heartbeat), continuous (a blocking read) or both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.store.connection import reraise_if_cancelling

log = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
RETRY = EqualJitterBackoff(cap=2.0, base=0.05)  # 50 ms after a first failure, doubling up to 2 s


async def forever(
    name: str,
    step: Callable[[], Awaitable[float | None]],
    *,
    retry: EqualJitterBackoff = RETRY,
) -> None:
    """Run ``step`` until cancelled or it returns None; otherwise each call returns the seconds to
    wait before the next one."""
    failures = 0
    while True:
        try:
            wait_s = await step()
            # A step whose client absorbed the loop's cancellation (redis-py's cluster client sends
            # a command again after turning a cancellation into a ConnectionError) returns normally:
            # without this check the loop would go on, and whoever cancelled it would wait forever.
            reraise_if_cancelling()
            if wait_s is None:
                return
            failures = 0
        except asyncio.CancelledError:
            raise
        except UNREACHABLE as exc:
            reraise_if_cancelling()  # redis-py may turn a cancellation into a ConnectionError
            failures += 1
            log.warning("%s could not reach Redis; trying again", name, extra={"error": str(exc), "failures": failures})
            wait_s = retry.compute(failures)
        except Exception:
            reraise_if_cancelling()
            failures += 1
            log.exception("%s failed; trying again", name, extra={"failures": failures})
            wait_s = retry.compute(failures)
        if wait_s > 0:
            await asyncio.sleep(wait_s)


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (``None``: none there) and wait until each has ended, its cancellation
    not raised here."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
