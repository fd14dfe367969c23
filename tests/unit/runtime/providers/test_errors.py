"""Every exception the installed provider SDKs can raise has a meaning in Convoy's error taxonomy.

SDK releases add and rename exception classes (anthropic 2.17 wrapped a connection reset that 2.16
raised raw). These tests list the classes of the SDKs that are installed, whatever their version,
and fail on one that ``runtime/providers/errors.py`` does not place, naming it, so a new kind of
failure is given a meaning before it can reach a user's run.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

import anthropic
import openai
import pytest

from runtime.errors import (
    LLMAuthenticationError,
    LLMBadRequestError,
    LLMContextWindowError,
    LLMInvalidResponseError,
    LLMRateLimitError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from runtime.providers.errors import placed, translate

SDKS: dict[str, tuple[ModuleType, type[BaseException]]] = {
    "openai": (openai, openai.OpenAIError),
    "anthropic": (anthropic, anthropic.AnthropicError),
}


def exception_classes(sdk: ModuleType) -> set[type[BaseException]]:
    """What the SDK can raise on the path Convoy uses (a request and its stream): every exception
    class it exports or defines in its ``_exceptions`` module, and every ``APIError`` subclass it has
    loaded. Its optional helpers (``lib/``: agents, tool runners, structured-output parsing) are
    never called by Convoy and are left out."""
    found: set[type[BaseException]] = set()
    for module in (sdk, importlib.import_module(f"{sdk.__name__}._exceptions")):
        for name in dir(module):
            value = getattr(module, name, None)
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__.startswith(sdk.__name__):
                found.add(value)
    todo: list[type[BaseException]] = [sdk.APIError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("name", sorted(SDKS))
def test_every_sdk_exception_has_a_meaning(name: str) -> None:
    sdk, root = SDKS[name]
    classes = exception_classes(sdk)
    assert len(classes) > 10, f"found only {len(classes)} exception classes in {name}: the listing is broken"
    unplaced = sorted(
        f"{cls.__module__}.{cls.__qualname__}" for cls in classes if cls not in (root,) and not placed(cls)
    )
    assert not unplaced, (
        f"{name} {sdk.__version__} raises exception classes that runtime/providers/errors.py does not place: "
        f"{unplaced}. Add each to SDK_ERRORS with the Convoy error it means (or make it a family member)."
    )


def _status_error(sdk: ModuleType, cls_name: str, status: int, body: object) -> BaseException:
    import httpx2

    request = httpx2.Request("POST", "https://provider.invalid/v1")
    response = httpx2.Response(status, request=request, json=body)
    cls = getattr(sdk, cls_name)
    return cls(f"Error code: {status}", response=response, body=body)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(SDKS))
def test_status_errors_follow_their_status(name: str) -> None:
    sdk, _ = SDKS[name]
    assert isinstance(translate(_status_error(sdk, "RateLimitError", 429, {}), name), LLMRateLimitError)
    assert isinstance(translate(_status_error(sdk, "AuthenticationError", 401, {}), name), LLMAuthenticationError)
    assert isinstance(translate(_status_error(sdk, "InternalServerError", 503, {}), name), LLMUnavailableError)


@pytest.mark.parametrize("name", sorted(SDKS))
def test_connection_and_timeout_errors(name: str) -> None:
    import httpx2

    sdk, _ = SDKS[name]
    request = httpx2.Request("POST", "https://provider.invalid/v1")
    assert isinstance(translate(sdk.APIConnectionError(request=request), name), LLMUnavailableError)
    assert isinstance(translate(sdk.APITimeoutError(request=request), name), LLMTimeoutError)
    assert isinstance(translate(httpx2.ReadError("connection reset", request=request), name), LLMUnavailableError)


# -- google-genai ---------------------------------------------------------------------------------


def google_exception_classes() -> set[type[BaseException]]:
    """What google-genai can raise on the path Convoy uses (streamGenerateContent): every exception
    class defined in its ``errors`` module and its HTTP client (``_api_client``), every subclass of
    its ``APIError`` that is loaded, and google-auth's exceptions (Vertex AI's credentials). Its
    Interactions API (``interactions``, ``_gaos``, ``_interactions_*``), which Convoy does not call,
    is left out."""
    import google.auth.exceptions
    from google.genai import _api_client, errors

    found: set[type[BaseException]] = set()
    for module in (errors, _api_client, google.auth.exceptions):
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.add(value)
    todo: list[type[BaseException]] = [errors.APIError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_google_exception_has_a_meaning() -> None:
    from google.genai import version

    classes = google_exception_classes()
    assert len(classes) > 15, f"found only {len(classes)} exception classes in google-genai: the listing is broken"
    unplaced = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in classes if not placed(cls))
    assert not unplaced, (
        f"google-genai {version.__version__} raises exception classes that runtime/providers/errors.py does not "
        f"place: {unplaced}. Add each to GOOGLE_ERRORS with the Convoy error it means."
    )


def _google(code: int, status: str, message: str = "m", reason: str | None = None) -> BaseException:
    from google.genai import errors

    error: dict[str, object] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}]
    cls = errors.ClientError if code < 500 else errors.ServerError
    return cls(code, {"error": error})


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (lambda: _google(429, "RESOURCE_EXHAUSTED"), LLMRateLimitError),
        (lambda: _google(503, "UNAVAILABLE"), LLMUnavailableError),
        (lambda: _google(500, "INTERNAL"), LLMUnavailableError),
        (lambda: _google(400, "INVALID_ARGUMENT"), LLMBadRequestError),
        (lambda: _google(404, "NOT_FOUND"), LLMBadRequestError),
        (lambda: _google(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"), LLMAuthenticationError),
        (lambda: _google(401, "UNAUTHENTICATED"), LLMAuthenticationError),
        (lambda: _google(403, "PERMISSION_DENIED"), LLMAuthenticationError),
        (lambda: _google(504, "DEADLINE_EXCEEDED"), LLMTimeoutError),
        (
            lambda: _google(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
            LLMContextWindowError,
        ),
    ],
    ids=["429", "503", "500", "400", "404", "api-key-invalid", "401", "403", "504", "context"],
)
def test_google_errors_follow_code_status_and_reason(exc: Any, expected: type[Exception]) -> None:
    translated = translate(exc(), "google")
    assert type(translated) is expected, repr(translated)
    assert str(translated).startswith("google: HTTP ")


def test_google_transport_credential_and_parse_errors() -> None:
    import google.auth.exceptions
    import httpx2
    from google.genai import errors

    request = httpx2.Request("POST", "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent")
    assert isinstance(translate(httpx2.ConnectError("refused", request=request), "google"), LLMUnavailableError)
    assert isinstance(translate(httpx2.ReadTimeout("slow", request=request), "google"), LLMTimeoutError)
    assert isinstance(translate(httpx2.RemoteProtocolError("peer closed", request=request), "google"), LLMUnavailableError)
    assert isinstance(translate(errors.UnknownApiResponseError("not JSON"), "google"), LLMInvalidResponseError)
    no_adc = google.auth.exceptions.DefaultCredentialsError("Your default credentials were not found.")
    assert isinstance(translate(no_adc, "google"), LLMAuthenticationError)
    assert isinstance(translate(google.auth.exceptions.TransportError("metadata server"), "google"), LLMUnavailableError)
