"""The one place where Convoy errors become HTTP responses.

An error raised before a response started gets a status from ``STATUS`` and a JSON body with a
human-readable ``detail``. Once an SSE stream has started the status cannot change: failures
then end the stream with an error item instead (see ``runtime.wire``).

The OpenAI-compatible route answers in OpenAI's shape instead (``openai_error``): ``{"error":
{"message", "type", "code", "param"}}``, always with ``x-should-retry: false``, because the
OpenAI SDK re-sends 409, 429 and 5xx answers by itself and a re-sent message is a second turn.
A run that failed is answered by its ``error_type`` (``CHAT_STATUS_FOR_ERROR_TYPE``). A provider
that rejects Convoy's credentials is a 502, not a 401: the client's own credentials were fine, and
an SDK seeing 401 would blame them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import (
    ConflictError,
    ConversationBusyError,
    ConvoyError,
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadRequestError,
    LLMContextWindowError,
    LLMRateLimitError,
    LLMTimeoutError,
    LLMUnavailableError,
    NotFoundError,
    PendingApprovalError,
    StreamGoneError,
    UnavailableError,
)

STATUS: dict[type[ConvoyError], int] = {
    NotFoundError: 404,
    InvalidRequestError: 400,
    ConversationBusyError: 409,
    PendingApprovalError: 409,
    ConflictError: 409,
    StreamGoneError: 410,
    UnavailableError: 503,
}


CHAT_STATUS_FOR_ERROR_TYPE = {
    LLMRateLimitError.error_type: 429,
    LLMAuthenticationError.error_type: 502,
    LLMTimeoutError.error_type: 504,
    LLMUnavailableError.error_type: 503,
    LLMBadRequestError.error_type: 400,
    LLMContextWindowError.error_type: 400,  # what OpenAI itself answers (context_length_exceeded)
    "cancelled": 409,
}
NO_RETRY = {"x-should-retry": "false"}


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
            return STATUS[cls]  # type: ignore[index]
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
    return openai_error(status_for(exc), exc.message, exc.code)


def chat_status_for(error_type: str) -> int:
    """The status a failed run is answered with on the OpenAI-compatible route."""
    return CHAT_STATUS_FOR_ERROR_TYPE.get(error_type, 500)


def _convoy_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvoyError)
    status = status_for(exc)
    body: dict[str, object] = {"detail": exc.message, "code": exc.code}
    headers: dict[str, str] = {}
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


def _where(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def validation_summary(errors: Sequence[Any]) -> str:
    """The first few validation errors, one ``where: what`` each."""
    return "; ".join(f"{_where(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:10])


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    summary = validation_summary(errors)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in errors[:50]
    ]
    return JSONResponse({"detail": detail, "message": f"invalid request: {summary}"}, status_code=422)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _run_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunErrorResponse)
    # The turn was accepted and ran: an SDK that re-sent it would run it again.
    return JSONResponse({"detail": exc.body.get("message"), "error": exc.body}, status_code=exc.status, headers=NO_RETRY)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RunErrorResponse, _run_error)
    app.add_exception_handler(ConvoyError, _convoy_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
