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

import anthropic
import openai
import pytest

from runtime.errors import (
    LLMAuthenticationError,
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
