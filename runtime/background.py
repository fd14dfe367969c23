"""Background loops that never die silently: a host's lease renewal, doorbell and heartbeat, an API
replica's host watch.

``forever`` runs one step after another, each guarded: a step that fails is logged (a warning for
an unreachable Redis, the traceback for anything else) and the loop waits a jittered backoff that
grows with the failures in a row before the next try, so a loop neither dies nor spins. Only
cancellation ends it. A step says how long to wait before the next one, so a loop can be periodic
(a heartbeat), continuous (a blocking read) or both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.store.connection import reraise_if_cancelling

log = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
RETRY = EqualJitterBackoff(cap=2.0, base=0.05)  # 50 ms after a first failure, doubling up to 2 s


async def forever(
    name: str,
    step: Callable[[], Awaitable[float]],
    *,
    retry: EqualJitterBackoff = RETRY,
) -> None:
    """Run ``step`` until cancelled; each call returns the seconds to wait before the next one."""
    failures = 0
    while True:
        try:
            wait_s = await step()
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
