"""Model handles: ``provider/model``, where the model part may hold slashes
(``vllm/meta-llama/Llama-3.1-8B``)."""

from __future__ import annotations

from runtime.errors import InvalidRequestError


def split_handle(handle: str) -> tuple[str, str]:
    """``"provider/model"`` -> ``("provider", "model")``."""
    provider, sep, model = handle.partition("/")
    if not sep or not provider or not model:
        raise InvalidRequestError(f"model handle {handle!r} is not of the form 'provider/model' (e.g. 'echo/echo')")
    return provider, model
