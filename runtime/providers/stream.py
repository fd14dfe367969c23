"""A provider stream with Convoy's deadlines, retry policy and error taxonomy applied.

- **Errors**: whatever the SDK raises becomes an ``LLMError`` subclass (``providers.errors``).
- **Deadlines**: the first token must arrive within ``first_token_s`` of the request (SDK retries
  included); after that, no gap between two events may exceed ``idle_s``. Keep-alives don't count,
  and neither does time the reader spends between two events (a busy host is not a silent provider).
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


class _Deadline:
    """A deadline for the waits on one stream that moves forward with every content event, kept
    without a timer rescheduled per event (that was ~5% of a host's CPU while streaming): one timer,
    armed on the first wait, which, when it fires, re-arms itself at the deadline as it stands by
    then and cancels only a wait still going on past it. Time the reader spends outside a wait is
    not the provider's silence: a wait that starts past the deadline (the reader was busy) gets
    ``patience`` from its own start."""

    __slots__ = ("_cancelling", "_handle", "_loop", "_task", "_waiting", "expired", "patience", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, patience: float) -> None:
        self._loop = loop
        self.patience = patience
        self.when = loop.time() + patience
        self.expired = False
        self._waiting = False
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None

    def restart(self, patience: float) -> None:
        """An event that counts: the next one is due within ``patience`` from now."""
        self.patience = patience
        self.when = self._loop.time() + patience

    def __enter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._waiting = True
        now = self._loop.time()
        if self.when <= now:
            self.when = now + self.patience
        if self._handle is None:
            self._handle = self._loop.call_at(self.when, self._fire)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        self._waiting = False
        if self.expired:
            assert self._task is not None
            # Ours alone (nobody else cancelled meanwhile): the wait timed out.
            if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from error

    def _fire(self) -> None:
        self._handle = None
        if not self._waiting:
            return  # the next wait arms it again
        if self._loop.time() < self.when:
            self._handle = self._loop.call_at(self.when, self._fire)
            return
        assert self._task is not None
        self.expired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _deadlined(open_stream: Open, request: LLMRequest, *, provider: str, policy: StreamPolicy) -> AsyncGenerator[LLMEvent, None]:
    deadline = _Deadline(asyncio.get_running_loop(), policy.first_token_s)
    waiting_for = f"no first token within {policy.first_token_s:g}s"
    idle_text = f"no token for {policy.idle_s:g}s"
    inner = open_stream(request)
    opened = False  # whether the provider answered at all (the SDK retried failures before that)
    try:
        while True:
            try:
                with deadline:
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
                waiting_for = idle_text
                deadline.restart(policy.idle_s)
            yield event
    finally:
        deadline.close()
        await inner.aclose()
