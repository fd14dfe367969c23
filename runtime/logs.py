"""Structured logging: ``key=value`` text for people, or one JSON object per line for machines.

Every process (API, host actors, CLI) calls ``configure_logging`` once. Context goes in
``extra={...}``; it is printed with the message, never interpolated into it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from runtime.settings import Settings

# HTTP client libraries log every request at INFO (the provider SDKs use httpx, vendored as
# httpx2 in newer releases); Convoy records provider calls in step traces instead.
_CHATTY = ("httpx", "httpx2", "httpcore", "openai", "anthropic")

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName", "_ray_timestamp_ns"}


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
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _Handler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
