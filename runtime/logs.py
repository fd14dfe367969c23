"""Structured logging: ``key=value`` text for people, or one JSON object per line for machines.

Every process (API, host actors, CLI) calls ``configure_logging`` once. Context goes in
``extra={...}``; it is printed with the message, never interpolated into it.

**What a line concerns comes by itself.** The run, conversation and tenant being worked on are held
in a context variable (``log_context`` for a block, ``bind`` for the rest of a request's task) and
added to every line logged meanwhile, by any logger: a turn's lines (the loop's, a provider's, a
tool's own, in the turn's task or a thread it started) carry ``run_id``, ``conversation_id`` and
``tenant`` without anyone passing them. asyncio copies the context into each task it creates, so
what a task binds stays in that task and those it starts; a field given in ``extra`` wins.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, TextIO

from runtime.settings import Settings

# HTTP client libraries log every request at INFO (the provider SDKs use httpx, vendored as
# httpx2 in newer releases); Convoy records provider calls in step traces instead.
_CHATTY = ("httpx", "httpx2", "httpcore", "openai", "anthropic")

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName", "_ray_timestamp_ns"}


_BOUND: ContextVar[Mapping[str, str]] = ContextVar("convoy_log_context", default=MappingProxyType({}))


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add ``fields`` (None: left out) to every line logged inside the block, in this task and the
    tasks and threads it starts meanwhile."""
    token = _BOUND.set(_merged(fields))
    try:
        yield
    finally:
        _BOUND.reset(token)


def bind(**fields: str | None) -> None:
    """Add ``fields`` to every line logged from here to the end of the current task (an API
    request's task: uvicorn runs each request in a task of its own)."""
    _BOUND.set(_merged(fields))


def _merged(fields: Mapping[str, str | None]) -> Mapping[str, str]:
    return MappingProxyType({**_BOUND.get(), **{k: v for k, v in fields.items() if v is not None}})


class _Bound(logging.Filter):
    """Copies the bound fields onto each record (a field given in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _BOUND.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _context(record)
        if ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return line


class _Handler(logging.StreamHandler[TextIO]):
    """Convoy's own handler: the one configuring logging again replaces."""


def configure_logging(settings: Settings) -> None:
    handler = _Handler(sys.stderr)
    handler.addFilter(_Bound())
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _Handler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
