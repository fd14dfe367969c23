"""Letta's ``callback_url`` for ``POST /v1/agents/{id}/messages/async``: once the run ends completed
or failed (not cancelled, as Letta), POST ``{"run_id", "status", "completed_at", "metadata":
{"result": <the LettaResponse>}}`` to the URL, once, waiting at most ``CALLBACK_TIMEOUT_S``; the
run then records when it was sent and what came back (``callback_sent_at``,
``callback_status_code``, ``callback_error``).

The API replica that accepted the run follows it to its end and sends the callback, so the
conversation's owner never waits on a client's server. A replica that stops before the run ends
sends nothing for it (the run itself is unaffected and its result stays readable through
``GET /v1/runs/{id}/messages``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from runtime.schemas.runs import RunView

log = logging.getLogger(__name__)
CALLBACK_TIMEOUT_S = 5.0
SENT_FOR = ("completed", "failed")


@dataclass(frozen=True, slots=True)
class Owed:
    """A callback to send: where, and how to learn the run's result and record the sending."""

    url: str
    result: Callable[[], Awaitable[dict[str, Any]]]  # waits for the run's end; its LettaResponse
    ended: Callable[[], Awaitable[RunView]]  # the run as it ended
    record: Callable[[datetime, int | None, str | None], Awaitable[None]]


class Callbacks:
    """The callbacks this replica owes, each a task that ends when its callback is sent."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S, follow_redirects=False)

    def schedule(self, run: RunView, owed: Owed) -> None:
        task = asyncio.create_task(self._deliver(run, owed), name=f"callback-{run.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    async def _deliver(self, run: RunView, owed: Owed) -> None:
        try:
            result = await owed.result()
            ended = await owed.ended()
            if ended.status not in SENT_FOR:
                return
            payload = {
                "run_id": ended.id,
                "status": ended.status,
                "completed_at": (ended.completed_at or datetime.now(UTC)).isoformat(),
                "metadata": {**(ended.metadata or {}), "result": result},
            }
            sent_at = datetime.now(UTC)
            status_code: int | None = None
            error: str | None = None
            try:
                status_code = (await self._http.post(owed.url, json=payload)).status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            log.info(
                "callback sent",
                extra={"run_id": run.id, "conversation_id": run.conversation_id, "status_code": status_code, "error": error},
            )
            await owed.record(sent_at, status_code, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("callback for run %s could not be delivered", run.id, extra={"run_id": run.id})
