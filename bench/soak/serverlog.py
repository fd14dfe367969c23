"""What the server logged during the soak (it runs with ``CONVOY_LOG_JSON``, at WARNING and up).

Host actors' lines reach the log through Ray, prefixed with ``(ConversationHost pid=...)``; the
JSON object is found after that. The banner ``convoy serve`` prints up to its ``listening on`` line,
and its last line, are skipped; any other line that is no JSON object (a traceback printed by Ray,
uvicorn's own messages) is counted as ``other``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BANNER_END = "listening on"
LAST_LINE = "convoy  stopped"


@dataclass
class LogSummary:
    levels: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)  # "level logger: msg" -> count
    other: list[str] = field(default_factory=list)


def summarize(path: Path) -> LogSummary:
    summary = LogSummary()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return summary
    banner = next((i for i, line in enumerate(lines) if BANNER_END in line), -1)
    for line in lines[banner + 1 :]:
        doc = _json_in(line)
        if doc is None:
            if line.strip() and line.strip() != LAST_LINE:
                summary.other.append(line.strip())
            continue
        level = str(doc.get("level", "?"))
        summary.levels[level] += 1
        summary.messages[f"{level} {doc.get('logger')}: {doc.get('msg')}"] += 1
    return summary


def _json_in(line: str) -> dict[str, object] | None:
    start = line.find("{")
    if start < 0:
        return None
    try:
        doc = json.loads(line[start:])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "level" in doc else None
