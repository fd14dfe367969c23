"""Gemini's wire format for the fake provider (``bench/upstream/`` serves it).

Streams are what ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` answers: one
``data: <json>`` event per chunk, CRLF-framed, each chunk a whole ``GenerateContentResponse``
(``candidates[0].content.parts``, ``usageMetadata`` on every chunk with running counts,
``modelVersion``, ``responseId``), the last one carrying ``finishReason``. Function calls arrive
whole, several in one chunk, usually without ids; a ``thoughtSignature`` rides on the part it signs.
Errors are Google's ``{"error": {"code", "message", "status", "details"}}``.

``GeminiLedger`` remembers every part the fake streamed with a signature and refuses a later
request, as the real API does (400 ``INVALID_ARGUMENT``), when:

- a ``functionCall`` turn is not followed by a user turn answering each call with a
  ``functionResponse`` of the same name (and the same id, for a call that had one);
- a signature the fake issued is missing from the part it came with, or rides on another part, or
  a signature is not one the fake issued; a part's signature is compared as bytes, so standard and
  URL-safe base64 both count (as protobuf's JSON reader does);
- a function declaration's ``parameters`` use a keyword Gemini's schema does not have, a type it
  does not know, a non-string ``enum``, an empty object, or require an undeclared property.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.upstream.script import Cut, Frame, Status, Stream, Usage

_ROUTE = re.compile(r"/models/(?P<model>[^/:]+):streamGenerateContent$")
_ID_CHARS = string.ascii_letters + string.digits + "-_"
_SEPARATORS = (",", ": ")  # as Gemini writes its JSON
DEFAULT_USAGE = Usage()


def gemini_model(path: str) -> str | None:
    """The model of a ``.../models/{model}:streamGenerateContent`` path, else None."""
    found = _ROUTE.search(path)
    return found.group("model") if found else None


def signature(n_bytes: int = 64) -> str:
    """A thought signature as Gemini sends it: standard base64 of opaque bytes."""
    return base64.b64encode(b"\x12" + secrets.token_bytes(n_bytes - 1)).decode()


# --------------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------------


def gemini_stream(
    model: str,
    chunks: Sequence[Sequence[Mapping[str, Any]]],
    *,
    finish: str | None = "STOP",
    finish_message: str | None = None,
    usage: Usage = DEFAULT_USAGE,
    response_id: str | None = None,
) -> list[Frame]:
    """One chunk per list of parts (raw Gemini parts), the last one carrying ``finishReason``
    (``finish=None``: a stream that just stops). Usage counts: ``promptTokenCount`` = input,
    ``candidatesTokenCount`` = output minus reasoning, ``thoughtsTokenCount`` = reasoning,
    ``cachedContentTokenCount`` = cached, the final counts on the last chunk only."""
    rid = response_id or "".join(secrets.choice(_ID_CHARS) for _ in range(23))
    frames: list[Frame] = []
    for i, parts in enumerate(chunks):
        last = i == len(chunks) - 1
        candidate: dict[str, Any] = {"content": {"parts": [dict(p) for p in parts], "role": "model"}, "index": 0}
        if last and finish is not None:
            candidate["finishReason"] = finish
            if finish_message:
                candidate["finishMessage"] = finish_message
        payload = {"candidates": [candidate], "usageMetadata": _usage(usage, final=last), "modelVersion": model, "responseId": rid}
        frames.append(_data(payload))
    return frames


def gemini_text(
    model: str,
    pieces: Sequence[str],
    *,
    thoughts: Sequence[str] = (),
    signature: str | None = None,
    signature_at: Literal["first", "last"] = "last",
    finish: str | None = "STOP",
    usage: Usage = DEFAULT_USAGE,
) -> list[Frame]:
    """Thought parts (``thought: true``, one chunk each), then text parts (one chunk each).

    ``signature``: on the first text part (``"first"``, as Gemini 2.5 sends it) or on an empty text
    part in a last chunk of its own (``"last"``, as Gemini 3 ends an answer)."""
    chunks: list[list[dict[str, Any]]] = [[{"text": t, "thought": True}] for t in thoughts]
    texts: list[list[dict[str, Any]]] = [[{"text": p}] for p in pieces]
    if signature is not None and signature_at == "first" and texts:
        texts[0][0]["thoughtSignature"] = signature
    elif signature is not None:
        texts.append([{"text": "", "thoughtSignature": signature}])
    return gemini_stream(model, chunks + texts or [[{"text": ""}]], finish=finish, usage=usage)


@dataclass(frozen=True)
class Call:
    """A function call as Gemini sends it; ``id`` only some models send."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    signature: str | None = None


def gemini_calls(
    model: str,
    calls: Sequence[Call],
    *,
    thoughts: Sequence[str] = (),
    text: Sequence[str] = (),
    finish: str = "STOP",
    finish_apart: bool = True,
    usage: Usage = DEFAULT_USAGE,
) -> list[Frame]:
    """Optional thoughts and text, then every call whole in one chunk (parallel calls arrive
    together); with ``finish_apart`` the finish comes in a last chunk holding ``{"text": ""}`` (as
    Gemini 3 streams it), else on the calls' chunk (as Gemini 2.0 does)."""
    chunks: list[list[dict[str, Any]]] = [[{"text": t, "thought": True}] for t in thoughts]
    chunks += [[{"text": t}] for t in text]
    parts = []
    for call in calls:
        body: dict[str, Any] = {"name": call.name, "args": dict(call.args)}
        if call.id is not None:
            body["id"] = call.id
        part: dict[str, Any] = {"functionCall": body}
        if call.signature is not None:
            part["thoughtSignature"] = call.signature
        parts.append(part)
    chunks.append(parts)
    if finish_apart:
        chunks.append([{"text": ""}])
    return gemini_stream(model, chunks, finish=finish, usage=usage)


def gemini_blocked(model: str, reason: str = "SAFETY", *, usage: Usage = DEFAULT_USAGE) -> list[Frame]:
    """A prompt refused before any output: one chunk with ``promptFeedback.blockReason``, no candidates."""
    payload = {
        "promptFeedback": {
            "blockReason": reason,
            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
        },
        "usageMetadata": _usage(usage, final=False),
        "modelVersion": model,
        "responseId": "".join(secrets.choice(_ID_CHARS) for _ in range(23)),
    }
    return [_data(payload)]


def gemini_error_event(
    model: str, pieces: Sequence[str], *, code: int = 503, status: str = "UNAVAILABLE", message: str = "The model is overloaded."
) -> list[Frame]:
    """Some text, then an ``{"error": ...}`` chunk inside the 200 stream, and the stream ends."""
    frames = gemini_stream(model, [[{"text": p}] for p in pieces], finish=None) if pieces else []
    return [*frames, _data(_error_body(code, status, message, ()))]


def _usage(usage: Usage, *, final: bool) -> dict[str, Any]:
    prompt = {"promptTokenCount": usage.input_tokens}
    details = {"promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.input_tokens}]}
    if not final:
        return {**prompt, "totalTokenCount": usage.input_tokens, **details}
    candidates = usage.output_tokens - usage.reasoning_tokens
    out: dict[str, Any] = {**prompt, "candidatesTokenCount": candidates, "totalTokenCount": usage.input_tokens + usage.output_tokens}
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
    out.update(details)
    out["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


def _data(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=_SEPARATORS, ensure_ascii=False).encode() + b"\r\n\r\n"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def gemini_error(
    code: int,
    status: str,
    message: str,
    *,
    reason: str | None = None,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> Status:
    """A Google API error response; ``reason`` adds a ``google.rpc.ErrorInfo`` detail (e.g. ``API_KEY_INVALID``)."""
    extra = list(details)
    if reason is not None:
        extra.insert(
            0,
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
        )
    return Status(code, _error_body(code, status, message, extra), headers)


def gemini_rate_limited(retry_delay_s: int = 1) -> Status:
    """429 ``RESOURCE_EXHAUSTED`` with the quota and ``RetryInfo`` details Gemini sends."""
    return gemini_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay_s}s"},
        ],
    )


def gemini_context_too_long(tokens: int = 1_200_000, maximum: int = 1_048_576) -> Status:
    """Gemini's 400 for a prompt over the model's input limit."""
    message = f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({maximum})."
    return gemini_error(400, "INVALID_ARGUMENT", message)


def _error_body(code: int, status: str, message: str, details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = [dict(d) for d in details]
    return {"error": error}


def invalid_argument(message: str) -> Status:
    return gemini_error(400, "INVALID_ARGUMENT", message)


# --------------------------------------------------------------------------------------------------
# What a second step must send back
# --------------------------------------------------------------------------------------------------

PartKind = Literal["thought", "text", "call"]


@dataclass(frozen=True)
class _Part:
    kind: PartKind
    content: str  # a thought's or a text's text; a call's canonical JSON {name, args}


@dataclass
class _Issued:
    parts: list[tuple[_Part, bytes | None]]

    def signed(self) -> list[tuple[_Part, bytes]]:
        return [(p, s) for p, s in self.parts if s is not None]

    def shape(self) -> tuple[str, list[str]]:
        """What a model turn must contain to be this response: its answer text and its calls."""
        text = "".join(p.content for p, _ in self.parts if p.kind == "text")
        return text, [p.content for p, _ in self.parts if p.kind == "call"]


class GeminiLedger:
    """The parts the fake streamed with signatures, and the validation of later requests."""

    def __init__(self) -> None:
        self._issued: dict[str, list[_Issued]] = {}
        self._signatures: dict[bytes, _Part] = {}

    def issue(self, model: str, reply: Stream) -> None:
        """Remember the signed parts of a stream the fake is about to send (up to a ``Cut``)."""
        raw = b""
        for frame in reply.frames:
            if isinstance(frame, Cut):
                break
            if isinstance(frame, bytes | str):
                raw += frame.encode() if isinstance(frame, str) else frame
        parts: list[tuple[_Part, bytes | None]] = []
        for event in raw.split(b"\r\n\r\n"):
            if not event.startswith(b"data: "):
                continue
            try:
                chunk = json.loads(event[len(b"data: ") :])
            except ValueError:
                continue
            try:  # a scripted stream may be garbage on purpose
                found = chunk["candidates"][0]["content"]["parts"]
            except (TypeError, KeyError, IndexError):
                continue
            for part in found if isinstance(found, list) else ():
                parsed = _part(part) if isinstance(part, dict) else None
                if parsed is not None:
                    parts.append((parsed, _signature_bytes(part.get("thoughtSignature"))))
        issued = _Issued(parts)
        self._issued.setdefault(model, []).append(issued)
        for part, sig in issued.signed():
            self._signatures[sig] = part

    def check(self, model: str, body: Any) -> Status | None:
        """The 400 the real API would answer this request with, or None if it would take it."""
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list) or not body["contents"]:
            return invalid_argument("* GenerateContentRequest.contents: contents is not specified")
        problem = _tools_problem(body.get("tools")) or self._contents_problem(model, body["contents"])
        return invalid_argument(problem) if problem else None

    def _contents_problem(self, model: str, contents: list[Any]) -> str | None:
        for i, content in enumerate(contents):
            where = f"GenerateContentRequest.contents[{i}]"
            if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
                return f"* {where}.role: Please use a valid role: user, model."
            if not content.get("parts"):
                return f"* {where}.parts: contents.parts must not be empty."
            problem = _answers_problem(contents, i) or self._signatures_problem(model, content, where)
            if problem:
                return problem
        return None

    def _signatures_problem(self, model: str, content: dict[str, Any], where: str) -> str | None:
        parts = content["parts"]
        for j, part in enumerate(parts):
            if "thoughtSignature" not in part:
                continue
            sig = _signature_bytes(part["thoughtSignature"])
            issued = self._signatures.get(sig) if sig is not None else None
            if issued is None:
                return f"* {where}.parts[{j}].thought_signature: Corrupted thought signature."
            if _part(part) != issued:
                return (
                    f"* {where}.parts[{j}].thought_signature: the signature was issued for a {issued.kind} part "
                    f"({issued.content!r}), not this {_describe(part)}."
                )
        if content["role"] != "model":
            return None
        # Which response of this model is this turn? One with the same answer text and calls; it must
        # carry that response's signatures on their parts (some response of that shape must fit).
        present = [(_part(p), _signature_bytes(p.get("thoughtSignature"))) for p in parts]
        text = "".join(p.content for p, _ in present if p is not None and p.kind == "text")
        calls = [p.content for p, _ in present if p is not None and p.kind == "call"]
        if not (text or calls):
            return None
        candidates = [r for r in self._issued.get(model, ()) if r.shape() == (text, calls) and r.signed()]
        if not candidates or any(all(signed in present for signed in r.signed()) for r in candidates):
            return None
        part, _ = next(signed for signed in candidates[-1].signed() if signed not in present)
        kind = "functionCall" if part.kind == "call" else part.kind
        return (
            f"* {where}: {kind} part {part.content!r} is missing its thought_signature. Thought signatures must be "
            "sent back on the part they came with; see https://ai.google.dev/gemini-api/docs/thought-signatures"
        )


def _answers_problem(contents: list[Any], i: int) -> str | None:
    """A model turn's calls must be answered by the next turn, one functionResponse each."""
    content = contents[i]
    calls = [p["functionCall"] for p in content["parts"] if isinstance(p.get("functionCall"), dict)]
    responses = [p["functionResponse"] for p in content["parts"] if isinstance(p.get("functionResponse"), dict)]
    if responses:
        before = contents[i - 1] if i > 0 else {}
        if before.get("role") != "model" or not any("functionCall" in p for p in before.get("parts") or ()):
            return "Please ensure that function response turn comes immediately after a function call turn."
    if not calls:
        return None
    after = contents[i + 1] if i + 1 < len(contents) else None
    answers = [p["functionResponse"] for p in (after or {}).get("parts") or () if isinstance(p.get("functionResponse"), dict)]
    if after is None or after.get("role") != "user" or len(answers) != len(calls):
        return (
            "Please ensure that the number of function response parts is equal to the number of function call "
            "parts of the function call turn."
        )
    if Counter(c.get("name") for c in calls) != Counter(a.get("name") for a in answers):
        return (
            f"Function response parts must answer the function call parts by name: calls "
            f"{sorted(str(c.get('name')) for c in calls)}, responses {sorted(str(a.get('name')) for a in answers)}."
        )
    answered = {(a.get("id"), a.get("name")) for a in answers}
    for call in calls:
        if call.get("id") is not None and (call["id"], call.get("name")) not in answered:
            return f"Function call {call['id']!r} ({call.get('name')}) has no function response with its id."
    return None


def _part(part: Mapping[str, Any]) -> _Part | None:
    call = part.get("functionCall")
    if isinstance(call, dict):
        return _Part("call", json.dumps({"name": call.get("name"), "args": call.get("args") or {}}, sort_keys=True))
    if isinstance(part.get("text"), str):
        return _Part("thought" if part.get("thought") else "text", part["text"])
    return None


def _describe(part: Mapping[str, Any]) -> str:
    found = _part(part)
    return f"{found.kind} part ({found.content!r})" if found else "part"


def _signature_bytes(value: Any) -> bytes | None:
    """Protobuf's JSON reading of a ``bytes`` field: standard or URL-safe base64, padded or not."""
    if not isinstance(value, str):
        return None
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


# Gemini's Schema (OpenAPI 3.0 subset), in proto JSON names and their snake_case spelling.
_SCHEMA_FIELDS = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum",
}  # fmt: skip
_SCHEMA_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


_KNOWN = _SCHEMA_FIELDS | {_snake(f) for f in _SCHEMA_FIELDS}


def _tools_problem(tools: Any) -> str | None:
    for t, tool in enumerate(tools or ()):
        for d, declaration in enumerate((tool or {}).get("functionDeclarations") or ()):
            if not declaration.get("name"):
                return f"* GenerateContentRequest.tools[{t}].function_declarations[{d}].name: Name cannot be empty."
            parameters = declaration.get("parameters")
            if parameters is not None:
                problem = _schema_problem(parameters, f"tools[{t}].function_declarations[{d}].parameters")
                if problem:
                    return problem
    return None


def _schema_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"Invalid JSON payload received. Expected an object at '{where}'."
    for key in schema:
        if key not in _KNOWN:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in _SCHEMA_TYPES):
        return f"Invalid value at '{where}.type': {json.dumps(kind)}"
    enum = schema.get("enum")
    if enum is not None and not all(isinstance(v, str) for v in enum):
        return f"Invalid value at '{where}.enum': only strings are allowed"
    properties = schema.get("properties")
    if isinstance(kind, str) and kind.upper() == "OBJECT" and "properties" in schema and not properties:
        return f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type"
    for name in schema.get("required") or ():
        if name not in (properties or {}):
            return f"* GenerateContentRequest.{where}.required: property is not defined"
    nested: Iterable[tuple[str, Any]] = [
        *((f"{where}.properties[{k}]", v) for k, v in (properties or {}).items()),
        *((f"{where}.any_of[{n}]", v) for n, v in enumerate(schema.get("anyOf") or schema.get("any_of") or ())),
    ]
    if "items" in schema:
        nested = [*nested, (f"{where}.items", schema["items"])]
    for path, value in nested:
        problem = _schema_problem(value, path)
        if problem:
            return problem
    return None
