"""What a fake provider is told to answer, and the byte-level helpers every protocol's builder uses.

A reply is a ``Stream`` (an event stream: frames written one by one, each flushed at once; a
``Pause`` between them; a ``Cut`` resets the TCP connection), a ``Status`` (a complete JSON answer,
typically an error) or a ``Hang`` (nothing at all, then a close). A stream's frames may also be an
asynchronous iterable, for replies made as they go (the benchmarks' paced streams).
"""

from __future__ import annotations

import json
import random
import secrets
import string
import threading
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pause:
    """Write nothing for ``seconds`` (the connection stays open) before the next frame."""

    seconds: float


@dataclass(frozen=True)
class Cut:
    """Reset the TCP connection (RST) mid-body: the client sees a broken stream, not a clean end."""


Frame = bytes | str | Pause | Cut
"""One script step: bytes/str are written as one transport chunk and flushed immediately."""


@dataclass(frozen=True)
class Stream:
    """A streamed (chunked) response whose body is ``frames``."""

    frames: Sequence[Frame] | AsyncIterable[Frame]
    status: int = 200
    headers: Mapping[str, str] | None = None
    content_type: str = "text/event-stream"


@dataclass(frozen=True)
class Status:
    """A complete JSON response, typically a provider error (see ``openai_error``/``anthropic_error``)."""

    code: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Hang:
    """Accept the request, send nothing at all (not even headers) for ``seconds``, then close."""

    seconds: float


Reply = Stream | Status | Hang


@dataclass
class Call:
    """One request received by the fake, as the server saw it."""

    path: str
    headers: dict[str, str]
    body: Any
    started: float
    finished: threading.Event = field(default_factory=threading.Event)
    """Set when the scripted reply ran to its end (including a final ``Cut``)."""
    disconnected: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed the connection before the scripted reply finished."""





@dataclass(frozen=True)
class Usage:
    """Token counts, written as-is into each provider's own usage fields.

    OpenAI: prompt/input tokens include ``cached_tokens``; completion/output tokens include
    ``reasoning_tokens``. Anthropic: ``input_tokens`` excludes the cache counts (``cached_tokens`` is
    ``cache_read_input_tokens``, ``cache_write_tokens`` is ``cache_creation_input_tokens``).
    """

    input_tokens: int = 12
    output_tokens: int = 7
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0


ToolCall = tuple[str, ...]
"""``(id, name, *argument_fragments)``; the fragments concatenate to the JSON arguments."""

_ALNUM = string.ascii_letters + string.digits
JSON_SEPARATORS = (",", ":")


def rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def obfuscation(payload: Mapping[str, Any], width: int) -> str:
    """OpenAI's ``obfuscation`` padding: random characters that blur the length of each delta."""
    rng = random.Random(json.dumps(payload, sort_keys=True))
    n = width - len(json.dumps(payload)) % width
    return "".join(rng.choice(_ALNUM) for _ in range(max(n, 2)))


def data(payload: Mapping[str, Any]) -> bytes:
    """``data: <json>\\n\\n`` (OpenAI Chat Completions framing)."""
    return b"data: " + json.dumps(payload, separators=JSON_SEPARATORS).encode() + b"\n\n"


def event(name: str, payload: Mapping[str, Any], pad: int = 0) -> bytes:
    """``event: <name>\\ndata: <json>\\n\\n``; ``pad`` spaces before the final ``}`` (Anthropic does that)."""
    text = json.dumps(payload, separators=JSON_SEPARATORS, ensure_ascii=False)
    if pad:
        text = text[:-1] + " " * pad + "}"
    return f"event: {name}\ndata: {text}\n\n".encode()





def split_frames(frames: Sequence[Frame], every: int) -> list[Frame]:
    """Re-chunk the byte stream into ``every``-byte writes, ignoring line/event/UTF-8 boundaries.

    ``Pause``/``Cut`` keep their position; bytes between them are concatenated and re-split.
    """
    out: list[Frame] = []
    pending = b""

    def flush() -> None:
        out.extend(pending[i : i + every] for i in range(0, len(pending), every))

    for frame in frames:
        if isinstance(frame, (Pause, Cut)):
            flush()
            pending = b""
            out.append(frame)
        else:
            pending += frame.encode() if isinstance(frame, str) else frame
    flush()
    return out


KEEPALIVE = b": keep-alive\n\n"


def with_keepalives(frames: Sequence[Frame], comment: bytes = KEEPALIVE) -> list[Frame]:
    """Insert an SSE comment line before every frame (apply to whole-event frames, before splitting)."""
    out: list[Frame] = []
    for frame in frames:
        out += [comment, frame]
    return out


def paced(frames: Sequence[Frame], seconds: float) -> list[Frame]:
    """Insert ``Pause(seconds)`` between consecutive frames."""
    out: list[Frame] = []
    for frame in frames:
        if out:
            out.append(Pause(seconds))
        out.append(frame)
    return out


def cut_after(frames: Sequence[Frame], n: int) -> list[Frame]:
    """The first ``n`` frames, then ``Cut()``: the connection breaks mid-stream."""
    return [*frames[:n], Cut()]
