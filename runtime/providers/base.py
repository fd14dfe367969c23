"""The one interface every provider adapter implements, and the registry that picks one by handle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from runtime.errors import InvalidRequestError
from runtime.providers.events import LLMEvent, LLMRequest
from runtime.settings import Settings


class ModelAdapter(Protocol):
    """Streams one model response as normalized events.

    Implementations translate their SDK's exceptions into ``runtime.errors.LLMError`` subclasses
    in one place, and close the upstream request when the iterator is closed or cancelled.
    """

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]: ...


def split_handle(handle: str) -> tuple[str, str]:
    """``"provider/model"`` -> ``("provider", "model")``; the model part may itself hold slashes."""
    provider, sep, model = handle.partition("/")
    if not sep or not provider or not model:
        raise InvalidRequestError(f"model handle {handle!r} is not of the form 'provider/model' (e.g. 'echo/echo')")
    return provider, model


def _echo(settings: Settings) -> ModelAdapter:
    from runtime.providers.echo import EchoAdapter  # noqa: PLC0415 - adapters load on first use

    return EchoAdapter(delay_ms=settings.echo_delay_ms)


# The one table of providers: a handle's provider part -> a factory for its adapter.
ADAPTERS: dict[str, Callable[[Settings], ModelAdapter]] = {"echo": _echo}


def validate_handle(handle: str) -> str:
    """Check a handle's shape and provider at the edge, before anything is stored."""
    provider, _ = split_handle(handle)
    if provider not in ADAPTERS:
        raise InvalidRequestError(
            f"unknown model provider {provider!r} in handle {handle!r}; known providers: {', '.join(ADAPTERS)}"
        )
    return handle


def adapter_for(handle: str, settings: Settings) -> tuple[ModelAdapter, str]:
    """The adapter serving ``handle`` and the provider-side model name."""
    provider, model = split_handle(validate_handle(handle))
    return ADAPTERS[provider](settings), model
