"""The one place where Convoy errors become HTTP responses.

An error raised before a response started gets a status from ``STATUS`` and a JSON body with a
human-readable ``detail``. Once an SSE stream has started the status cannot change: failures
then end the stream with an error item instead (see ``runtime.stream.wire``).

The OpenAI-compatible route answers in OpenAI's shape instead (``openai_error``): ``{"error":
{"message", "type", "code", "param"}}``, always with ``x-should-retry: false``, because the
OpenAI SDK re-sends 409, 429 and 5xx answers by itself and a re-sent message is a second turn.
A run that failed is answered by its ``error_type`` (``RUN_ERROR_STATUS``). A provider
that rejects Convoy's credentials is a 502, not a 401: the client's own credentials were fine, and
an SDK seeing 401 would blame them.

Starlette's and FastAPI's own refusals (unknown route, wrong method, a body that does not parse)
get the same shapes and a specific message. Middleware refuses through ``refusal`` (see
``api.limits``). The OpenAPI schema declares a ``4XX`` answer in the right shape on every operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from runtime.errors import (
    ApprovalStillPendingError,
    AuthenticationError,
    ConflictError,
    ConversationBusyError,
    ConvoyError,
    HeadersTooLargeError,
    InputOverflowError,
    InternalRunError,
    InvalidApprovalError,
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadRequestError,
    LLMContentFilterError,
    LLMContextWindowError,
    LLMEmptyResponseError,
    LLMError,
    LLMInvalidResponseError,
    LLMRateLimitError,
    LLMTimeoutError,
    LLMUnavailableError,
    NotFoundError,
    OwnerLostError,
    PendingApprovalError,
    RateLimitedError,
    RequestTooLargeError,
    StoreUnavailableError,
    StreamGoneError,
    SystemPromptOverflowError,
    UnavailableError,
)
from runtime.schemas.requests import MAX_JSON_DEPTH

STATUS: dict[type[ConvoyError], int] = {
    RequestTooLargeError: 413,
    HeadersTooLargeError: 431,
    NotFoundError: 404,
    InvalidRequestError: 400,
    AuthenticationError: 401,
    RateLimitedError: 429,
    ConversationBusyError: 409,
    PendingApprovalError: 409,
    ConflictError: 409,
    StreamGoneError: 410,
    UnavailableError: 503,
}


# A run that failed while its caller waited for the whole answer (Letta's non-streaming send, or
# non-streaming chat completions, or a chat stream that failed before its first token) is answered
# with the status its cause deserves. Upstream faults are 5xx from a gateway's point of view; a
# provider rejecting Convoy's credentials is 502 (the caller's own were fine).
RUN_ERROR_STATUS = {
    LLMRateLimitError.error_type: 429,
    LLMAuthenticationError.error_type: 502,
    LLMTimeoutError.error_type: 504,
    LLMUnavailableError.error_type: 503,
    LLMBadRequestError.error_type: 400,
    LLMContextWindowError.error_type: 400,  # what OpenAI itself answers (context_length_exceeded)
    LLMContentFilterError.error_type: 400,
    LLMInvalidResponseError.error_type: 502,
    LLMEmptyResponseError.error_type: 502,
    LLMError.error_type: 502,
    SystemPromptOverflowError.error_type: 400,
    InputOverflowError.error_type: 400,
    ApprovalStillPendingError.error_type: 409,
    InvalidApprovalError.error_type: 400,
    OwnerLostError.error_type: 503,
    StoreUnavailableError.error_type: 503,
    InternalRunError.error_type: 500,
    "cancelled": 409,
}
NO_RETRY = {"x-should-retry": "false"}
OPENAI_PATHS = ("/v1/chat/",)  # routes whose errors take OpenAI's shape


class RunErrorResponse(Exception):
    """A run that failed while a non-streaming request waited for it: answered as an HTTP error
    carrying the run's error item."""

    def __init__(self, status: int, body: dict[str, object]) -> None:
        super().__init__(str(body.get("message", "run failed")))
        self.status = status
        self.body = body


def status_for(exc: ConvoyError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def openai_error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, object]:
    """OpenAI's error object; its ``type`` follows the status, ``code`` says what exactly."""
    if status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def openai_error(status: int, message: str, code: str | None, param: str | None = None) -> JSONResponse:
    """An error answer in OpenAI's shape; never re-sent by the OpenAI SDK (module docstring)."""
    return JSONResponse(openai_error_body(status, message, code, param), status_code=status, headers=NO_RETRY)


def openai_error_for(exc: ConvoyError) -> JSONResponse:
    response = openai_error(status_for(exc), exc.message, exc.code)
    extra = _headers_for(exc)
    if extra:
        # Nothing was accepted: an SDK retrying a rate-limited or unauthenticated request is safe.
        del response.headers["x-should-retry"]
        response.headers.update(extra)
    return response


def _headers_for(exc: ConvoyError) -> dict[str, str]:
    if isinstance(exc, AuthenticationError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, RateLimitedError):
        return {"Retry-After": str(exc.retry_after_s)}
    return {}


def run_error_status(error_type: str) -> int:
    """The status a failed run is answered with (``RUN_ERROR_STATUS``); an unknown cause is a 502:
    the turn ran, and something it depended on failed."""
    return RUN_ERROR_STATUS.get(error_type, 502)


async def _convoy_error(request: Request, exc: Exception) -> JSONResponse:
    # Every handler here is a coroutine: Starlette runs a plain function in a worker thread, a
    # thread hop for each refused request.
    return _convoy_response(request, exc)


def _convoy_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvoyError)
    if request.url.path.startswith(OPENAI_PATHS):
        return openai_error_for(exc)  # e.g. a missing API key on the OpenAI-compatible route
    status = status_for(exc)
    body: dict[str, object] = {"detail": exc.message, "code": exc.code}
    headers = _headers_for(exc)
    if isinstance(exc, ConflictError):
        body["detail"] = f"CONFLICT: {exc.message}"
        body["error_code"] = exc.code
        headers["x-should-retry"] = "false"  # re-sending cannot help until something else changes
    if isinstance(exc, PendingApprovalError):
        body["pending_request_id"] = exc.pending_request_id
    if isinstance(exc, ConversationBusyError):
        body["conversation_id"] = exc.conversation_id
        body["run_id"] = exc.active_run_id
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(body, status_code=status, headers=headers)


def refusal(scope: Scope, exc: ConvoyError) -> JSONResponse:
    """``exc`` answered from outside the routes (middleware), exactly as a route would answer it."""
    return _convoy_response(Request(scope), exc)


def _where(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _explain(error: Any) -> str:
    """One validation error as ``where: what``, in words a person can act on."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error") or error.get("msg")
        at = f" at character {loc[1]}" if len(loc) == 2 and loc[0] == "body" else ""
        return f"body: not valid JSON ({reason}){at}"
    if loc == ("body",) and kind == "model_attributes_type":
        if isinstance(error.get("input"), bytes):  # FastAPI parses JSON only when the content type says so
            return "body: expected a JSON object, sent with Content-Type: application/json"
        return f"body: expected a JSON object, got {_json_kind(error.get('input'))}"
    if loc == ("body",) and kind == "missing":
        return "body: a JSON object is required"
    return f"{_where(loc)}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "another value"


def validation_summary(errors: Sequence[Any]) -> str:
    """The first few validation errors, one ``where: what`` each."""
    return "; ".join(_explain(e) for e in errors[:10])


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    summary = validation_summary(errors)
    if request.url.path.startswith(OPENAI_PATHS):  # OpenAI answers invalid input with 400
        return openai_error(400, f"invalid request: {summary}", "invalid_request")
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in errors[:50]
    ]
    return JSONResponse({"detail": detail, "message": f"invalid request: {summary}"}, status_code=422)


_UNPARSABLE = "There was an error parsing the body"  # FastAPI's detail; the parser's error is the cause


def _unparsable(cause: BaseException | None) -> str:
    if isinstance(cause, RecursionError):
        return f"the JSON body is nested too deeply to parse; keep objects and arrays under {MAX_JSON_DEPTH} levels"
    if isinstance(cause, UnicodeError):
        return "the request body is not valid UTF-8; send JSON encoded as UTF-8"
    if isinstance(cause, ValueError):  # e.g. an integer of more than 4300 digits
        return f"the JSON body could not be parsed: {str(cause).split(';')[0]}"
    return "the request body could not be parsed as JSON"


def _http_message(request: Request, exc: StarletteHTTPException) -> Any:
    """Starlette's and FastAPI's stock details, made specific; other details are kept."""
    if exc.status_code == 400 and exc.detail == _UNPARSABLE:
        return _unparsable(exc.__cause__)
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"no route {request.method} {request.url.path}; the API's routes are listed at /docs"
    if exc.status_code == 405 and exc.detail == "Method Not Allowed":
        allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
        return f"{request.method} is not allowed on {request.url.path}; allowed: {allowed or 'none'}"
    return exc.detail


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = _http_message(request, exc)
    if request.url.path.startswith(OPENAI_PATHS):
        response = openai_error(exc.status_code, str(message), None)
        response.headers.update(exc.headers or {})
        return response
    return JSONResponse({"detail": message}, status_code=exc.status_code, headers=exc.headers)


async def _run_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunErrorResponse)
    # The turn was accepted and ran: an SDK that re-sent it would run it again.
    return JSONResponse({"detail": exc.body.get("message"), "error": exc.body}, status_code=exc.status, headers=NO_RETRY)


_ERROR_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {"description": "What is wrong, for a person to read (a list of problems on 422)."},
            "code": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
}


def _document_errors(app: FastAPI) -> None:
    """State in the OpenAPI schema that any operation may answer a 4xx, in Convoy's error shape or
    OpenAI's on ``OPENAI_PATHS`` (which answers invalid input with 400, never 422)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(_ERROR_SCHEMAS)
        for path, item in schema.get("paths", {}).items():
            openai = path.startswith(OPENAI_PATHS)
            ref = {"$ref": f"#/components/schemas/{'OpenAIError' if openai else 'Error'}"}
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                if openai:
                    responses.pop("422", None)
                responses.setdefault(
                    "4XX", {"description": "Refused: what is wrong and how to fix it", "content": {"application/json": {"schema": ref}}}
                )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to amend its schema


STORE_RETRY_AFTER_S = 2


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """Redis unreachable (or too slow) while serving a request: 503, to be retried shortly; but a
    POST may have been applied before its reply was lost, so it is not re-sent blindly (a send
    with an ``Idempotency-Key`` or otid can be: it joins its run)."""
    message = "Convoy's store (Redis) is unreachable at the moment; retry shortly"
    headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
    if request.method not in ("GET", "HEAD"):
        headers.update(NO_RETRY)
    if request.url.path.startswith(OPENAI_PATHS):
        response = openai_error(503, message, "store_unavailable")
        response.headers.update(headers)
        return response
    return JSONResponse({"detail": message, "code": "store_unavailable"}, status_code=503, headers=headers)


def install(app: FastAPI) -> None:
    _document_errors(app)
    app.add_exception_handler(RunErrorResponse, _run_error)
    app.add_exception_handler(ConvoyError, _convoy_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _store_error)
    app.add_exception_handler(RedisTimeoutError, _store_error)
