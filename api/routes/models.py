"""``GET /v1/models``: the model handles this server can run, in two shapes on two paths.

- ``/v1/models`` is OpenAI's list (``{"object": "list", "data": [{"id", "object": "model",
  "created", "owned_by"}]}``): what ``openai.models.list()`` and the many tools that call it first
  read. ``id`` is the Convoy handle (``openai/gpt-4o``); ``owned_by`` its provider; ``created`` what
  the provider said, else 0.
- ``/v1/models/`` (the trailing slash is the Letta SDK's path) is Letta's ``list[Model]``, filtered by
  ``provider_name``, ``provider_type`` and ``provider_category`` as ``client.models.list()`` sends them.

Both read one list, computed in ``runtime.providers.registry.Providers.list_models``: only handles
whose provider has its credentials (``echo/echo`` always).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.auth import Caller
from api.state import AppState, State
from runtime.providers.registry import ListedModel

router = APIRouter(prefix="/v1/models", tags=["models"])
LETTA_TYPES = {"echo": "letta", "anthropic": "anthropic", "gemini": "google_ai"}  # by API; the rest: openai
CATEGORY = "base"  # every provider is the server's own (Letta's "byok" are keys a user brought)
# Letta's ``ProviderType`` and ``ProviderCategory`` words: a filter on any other is a 422, as Letta's,
# not an empty list that reads as "no such models".
ProviderType = Literal[
    "anthropic", "azure", "baseten", "bedrock", "cerebras", "chatgpt_oauth", "deepseek", "fireworks",
    "google_ai", "google_vertex", "groq", "hugging-face", "letta", "lmstudio_openai", "minimax", "moonshot",
    "moonshot_coding", "mistral", "ollama", "openai", "together", "vllm", "sglang", "openrouter", "xai", "zai",
    "zai_coding",
]  # fmt: skip
ProviderCategory = Literal["base", "byok"]


@router.get("", summary="List the models (OpenAI's shape)")
async def list_openai_models(state: State, caller: Caller) -> dict[str, Any]:
    models = await state.providers.list_models()
    return {
        "object": "list",
        "data": [{"id": m.handle, "object": "model", "created": m.created, "owned_by": m.provider} for m in models],
    }


@router.get("/", summary="List the models (Letta's shape)")
async def list_letta_models(
    state: State,
    caller: Caller,
    provider_name: Annotated[str | None, Query(max_length=64)] = None,
    provider_type: ProviderType | None = None,
    provider_category: Annotated[list[ProviderCategory] | None, Query(max_length=8)] = None,
) -> list[dict[str, Any]]:
    """Each filter keeps the models whose field of that name has the value (``provider_category``:
    any of the values); every Convoy provider is the server's own, so its category is ``base``."""
    if provider_category and CATEGORY not in provider_category:
        return []
    views = [_letta(state, m) for m in await state.providers.list_models()]
    return [
        v
        for v in views
        if (provider_name is None or v["provider_name"] == provider_name)
        and (provider_type is None or v["provider_type"] == provider_type)
    ]


def _letta(state: AppState, model: ListedModel) -> dict[str, Any]:
    """Letta's ``Model`` (its deprecated ``LLMConfig`` fields included, which the SDK requires)."""
    provider_type = LETTA_TYPES.get(model.api, "openai")
    if provider_type == "google_ai" and state.settings.vertex_project:
        provider_type = "google_vertex"
    return {
        "handle": model.handle,
        "name": model.name,
        "display_name": model.handle,
        "model": model.name,
        "provider_name": model.provider,
        "provider_type": provider_type,
        "provider_category": CATEGORY,
        "model_endpoint_type": provider_type,
        "model_endpoint": model.endpoint,
        "model_type": "llm",
        "context_window": model.context_window,
        "max_context_window": model.context_window,
    }
