"""A provider stream with Convoy's deadlines, retry policy and error taxonomy applied.

- **Errors**: whatever the SDK raises becomes an ``LLMError`` subclass (``providers.errors``).
- **Deadlines**: the first token must arrive within ``first_token_s`` of the request (SDK retries
  included); after that, no gap between two events may exceed ``idle_s``. Keep-alives don't count.
- **Retries**: the SDK already retries a request that failed to start (429/5xx/connection, with
  backoff and ``Retry-After``). On top of that, a stream that breaks or stalls *before its first
  token* is opened again, with jittered exponential backoff, up to ``retries`` times. Once one
  token was produced nothing is retried, so no output is ever duplicated.
- **Closing**: leaving the iterator early, or cancelling the task reading it, closes the upstream
  HTTP response at once, so the provider stops generating (and billing) tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.errors import LLMError, LLMTimeoutError
from runtime.providers.errors import translate
from runtime.providers.events import CONTENT_EVENTS, LLMEvent, LLMRequest

Open = Callable[[LLMRequest], AsyncGenerator[LLMEvent, None]]


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    first_token_s: float
    idle_s: float
    retries: int
    backoff_s: float = 0.25
    backoff_max_s: float = 4.0


@dataclass(slots=True)
class Attempts:
    """How many times the stream was opened (for traces)."""

    count: int = 0


async def guarded(
    open_stream: Open, request: LLMRequest, *, provider: str, policy: StreamPolicy, attempts: Attempts | None = None
) -> AsyncGenerator[LLMEvent, None]:
    attempts = attempts if attempts is not None else Attempts()
    retrying = AsyncRetrying(
        stop=stop_after_attempt(1 + policy.retries),
        wait=wait_random_exponential(multiplier=policy.backoff_s, max=policy.backoff_max_s),
        retry=retry_if_exception(lambda exc: isinstance(exc, LLMError) and exc.retryable),
        reraise=True,
    )
    events: AsyncGenerator[LLMEvent, None] | None = None
    head: list[LLMEvent] = []
    # Phase 1, retried: open the stream and read up to the first content event. Nothing is
    # yielded inside the attempt, so a retry can never repeat anything a reader saw.
    async for attempt in retrying:
        with attempt:
            attempts.count += 1
            events = _deadlined(open_stream, request, provider=provider, policy=policy)
            head = await _until_content(events)
    assert events is not None
    # Phase 2, never retried: hand everything on.
    try:
        for event in head:
            yield event
        async for event in events:
            yield event
    finally:
        await events.aclose()


async def _until_content(events: AsyncGenerator[LLMEvent, None]) -> list[LLMEvent]:
    head: list[LLMEvent] = []
    try:
        async for event in events:
            head.append(event)
            if isinstance(event, CONTENT_EVENTS):
                break
    except BaseException:
        with contextlib.suppress(Exception):
            await events.aclose()
        raise
    return head


async def _deadlined(open_stream: Open, request: LLMRequest, *, provider: str, policy: StreamPolicy) -> AsyncGenerator[LLMEvent, None]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.first_token_s
    waiting_for = f"no first token within {policy.first_token_s:g}s"
    inner = open_stream(request)
    opened = False  # whether the provider answered at all (the SDK retried failures before that)
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    event = await anext(inner)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise LLMTimeoutError(f"{provider}: {waiting_for}") from exc
            except Exception as exc:
                translated = translate(exc, provider)
                if translated is exc:
                    raise
                if not opened and isinstance(translated, LLMError):
                    translated.retryable = False  # the SDK already retried the request itself
                raise translated from exc
            opened = True
            if isinstance(event, CONTENT_EVENTS):
                deadline = loop.time() + policy.idle_s
                waiting_for = f"no token for {policy.idle_s:g}s"
            yield event
    finally:
        await inner.aclose()
