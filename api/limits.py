"""What one request may carry, enforced before any route runs.

``RequestLimits`` is pure ASGI: it reads the request body (every route reads it whole anyway) and
never touches the response, so streamed answers (SSE) pass through unbuffered. It answers, in the
shape of the route asked (``api.errors.refusal``):

- 431 when the headers together are larger than ``max_header_bytes`` (uvicorn bounds the request
  line, but not the headers);
- 413 when the body is larger than ``max_request_bytes``: at once when ``Content-Length`` says
  so, otherwise as soon as the bytes received exceed it (a chunked body declares no length);
- 400 when the body is not UTF-8 (RFC 8259 section 8.1 requires it of JSON), naming the first
  bad byte;
- 400 when a JSON string holds a lone UTF-16 surrogate escape (``"\\ud800"``). Python's json
  decodes it into a ``str`` that is not Unicode text, which fails only later, when written as
  UTF-8: a 500, and maybe half a write.

A client that disconnects before it finished sending is answered nothing, and no route runs.
After the body, ``receive`` is the server's own again, so streaming responses still hear a
disconnect.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import refusal
from runtime.errors import HeadersTooLargeError, InvalidRequestError, RequestTooLargeError

# Any escaped surrogate at all (paired ones included: ``json.dumps`` writes emoji that way). Only a
# body that has one is parsed here, to tell lone surrogates from pairs.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# In a parsed string, pairs have become one code point: a surrogate left over was alone.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestLimits:
    """Refuses oversized or undecodable request bodies (module docstring) before the app sees them."""

    def __init__(self, app: ASGIApp, *, max_request_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_head(scope)
            body = await self._read(scope, receive)
            if body:
                check_text(body)
        except InvalidRequestError as exc:
            await refusal(scope, exc)(scope, receive, send)
            return
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    def _check_head(self, scope: Scope) -> None:
        limit = self.max_header_bytes
        headers = sum(len(name) + len(value) for name, value in scope["headers"])
        if headers > limit:
            raise HeadersTooLargeError(f"request headers too large: {headers} bytes together, the limit is {limit} bytes")

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None if the client left before sending all of it."""
        limit = self.max_request_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            raise RequestTooLargeError(f"request body too large: {declared} bytes, the limit is {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(f"request body too large: more than the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def check_text(body: bytes) -> None:
    """Raise ``InvalidRequestError`` if ``body`` is not UTF-8 or holds a lone surrogate escape."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}: "
            f"{exc.reason}); send JSON encoded as UTF-8"
        ) from None
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON: the route says so itself
    found = _lone_surrogate(doc)
    if found is not None:
        where, code_point = found
        raise InvalidRequestError(
            f"{where}: contains the lone UTF-16 surrogate \\u{code_point:04x}, which is not Unicode text; "
            "a surrogate escape must be a high (\\ud800-\\udbff) and low (\\udc00-\\udfff) pair"
        )


def _lone_surrogate(doc: Any) -> tuple[str, int] | None:
    """The path of the first string or key (``messages.0.content``) holding a lone surrogate, and
    that surrogate; None if there is none. Iterative: the depth is whatever json accepted."""
    stack: list[tuple[tuple[object, ...], Any]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        texts: list[tuple[tuple[object, ...], str]] = []
        if isinstance(node, str):
            texts.append((path, node))
        elif isinstance(node, dict):
            for key, value in node.items():
                texts.append(((*path, key), key))
                stack.append(((*path, key), value))
        elif isinstance(node, list):
            stack.extend(((*path, i), value) for i, value in enumerate(node))
        for where, text in texts:
            match = _LONE_SURROGATE.search(text)
            if match is not None:
                return ".".join(_printable(str(p)) for p in where) or "body", ord(match.group())
    return None


def _printable(text: str) -> str:
    """``text`` with its lone surrogates written as escapes (they cannot be sent back as UTF-8)."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses such a request itself
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the body already read, then defers to the server's."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
