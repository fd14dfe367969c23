"""The one place where Convoy errors become HTTP responses.

An error raised before a response started gets a status from ``STATUS`` and a JSON body with a
human-readable ``detail``. Once an SSE stream has started the status cannot change: failures
then end the stream with an error item instead (see ``runtime.wire``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import (
    ConflictError,
    ConversationBusyError,
    ConvoyError,
    InvalidRequestError,
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


def _convoy_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvoyError)
    status = status_for(exc)
    body: dict[str, object] = {"detail": exc.message, "code": exc.code}
    headers: dict[str, str] = {}
    if isinstance(exc, ConflictError):
        body["detail"] = f"CONFLICT: {exc.message}"
        body["error_code"] = exc.code
    if isinstance(exc, ConversationBusyError):
        body["conversation_id"] = exc.conversation_id
        body["run_id"] = exc.active_run_id
        headers["Retry-After"] = str(exc.retry_after_s)
        # The caller asked to be told, not to wait: stop SDKs from silently re-sending.
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


def _where(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    summary = "; ".join(f"{_where(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:10])
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
    return JSONResponse({"detail": exc.body.get("message"), "error": exc.body}, status_code=exc.status)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RunErrorResponse, _run_error)
    app.add_exception_handler(ConvoyError, _convoy_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
