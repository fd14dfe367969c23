"""Which provider serves a model handle, and the one place SDK clients are made.

================== ============================== ==========================================
provider           API                            credentials and endpoint
================== ============================== ==========================================
echo               offline, streams input back    none
openai             Chat Completions               OPENAI_API_KEY, OPENAI_BASE_URL
openai-responses   Responses                      OPENAI_API_KEY, OPENAI_BASE_URL
anthropic          Messages                       ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL
google             Gemini streamGenerateContent   GOOGLE_API_KEY or GEMINI_API_KEY, GOOGLE_GEMINI_BASE_URL;
                   (Developer API or Vertex AI)   Vertex AI: CONVOY_GOOGLE_VERTEX_PROJECT (or
                                                  GOOGLE_GENAI_USE_VERTEXAI + GOOGLE_CLOUD_PROJECT),
                                                  GOOGLE_CLOUD_LOCATION, Application Default Credentials
<name>             Chat Completions (or           CONVOY_PROVIDERS: {"<name>": {"base_url": ...,
                   Responses), any compatible     "api_key": ..., "api": "chat"|"responses"}}
                   server
================== ============================== ==========================================

Each process keeps one SDK client per provider, so connections to a provider are pooled and
reused across conversations. The OpenAI and Anthropic clients send through aiohttp, the transport
their SDKs offer for concurrency (``DefaultAioHttpClient``): their default transport spent about
1.6 times the CPU reading a stream's tokens, and the hosts' CPU per turn fell by about a tenth
(``convoy bench turns``; README, Measured). Requests, retries, errors and stream decoding stay the
SDKs' own; a refused connection, which that transport reports as a connect timeout, is still
``llm_unavailable`` (``runtime.providers.errors``). The SDKs are imported where they are used (each costs a second or more),
so a process that never calls a provider, like the API or an echo-only host, never loads them; a
conversation host loads those of the providers it can call while it sets up (``warm``), not on the
first turn that calls one: an import stops the host's event loop, every stream on it, for that long.

**The models listed** (``GET /v1/models``, OpenAI's and Letta's shapes) are computed here only
(``Providers.list_models``): ``echo/echo``; for each first-party provider whose credentials are set,
the current models of ``CATALOG`` (a handle of any other model the provider serves works too: the
catalog is what a picker shows, not a limit); for each ``CONVOY_PROVIDERS`` server, its configured
``models``, else what its own ``GET /models`` answers (asked at most every ``MODEL_LIST_TTL_S`` per
process; a server that does not answer lists nothing). A provider without credentials lists nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import httpx

from runtime import heap
from runtime.errors import InvalidRequestError, LLMAuthenticationError
from runtime.providers import capabilities
from runtime.providers.capabilities import Api, Describe
from runtime.providers.echo import EchoAdapter
from runtime.providers.events import GenerationSettings, LLMEvent, LLMRequest
from runtime.providers.handles import split_handle
from runtime.providers.stream import Attempts, StreamPolicy, guarded
from runtime.settings import DEFAULT_VERTEX_LOCATION, ECHO_MODEL_HANDLE, Settings

log = logging.getLogger(__name__)

NO_KEY = "convoy-no-key"  # the OpenAI SDK insists on a key; local servers ignore it
MODEL_LIST_TTL_S = 60.0  # how long a compatible server's own model list is reused
DEFAULT_CONTEXT_TOKENS = 128_000  # a listed model's context window when nobody says
# What the first-party providers list: (model, context window in tokens). Current models only.
CATALOG: dict[str, tuple[tuple[str, int], ...]] = {
    "openai": (
        ("gpt-5", 400_000), ("gpt-5-mini", 400_000), ("gpt-5-nano", 400_000), ("gpt-4.1", 1_047_576),
        ("gpt-4.1-mini", 1_047_576), ("gpt-4o", 128_000), ("gpt-4o-mini", 128_000), ("o3", 200_000), ("o4-mini", 200_000),
    ),
    "anthropic": (
        ("claude-opus-4-5", 200_000), ("claude-sonnet-4-5", 200_000), ("claude-haiku-4-5", 200_000), ("claude-opus-4-1", 200_000),
    ),
    "google": (
        ("gemini-2.5-pro", 1_048_576), ("gemini-2.5-flash", 1_048_576), ("gemini-2.5-flash-lite", 1_048_576),
        ("gemini-3-pro-preview", 1_048_576),
    ),
}  # fmt: skip
CATALOG["openai-responses"] = CATALOG["openai"]


class ModelAdapter(Protocol):
    """Streams one model response as normalized events.

    ``stream`` may raise the SDK's own exceptions: ``providers.stream`` translates them, applies
    deadlines and retries, and closes the upstream response when the reader stops.
    """

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        """The request body sent to the provider (recorded in the run's step traces)."""
        ...

    def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]: ...


class _ClientOptions(TypedDict):
    """What the OpenAI and Anthropic clients are both made with."""

    api_key: str | None
    base_url: str | None
    max_retries: int


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    api: Api
    base_url: str | None
    api_key: str | None
    key_hint: str  # what to set when the key is missing
    vertex_project: str | None = None  # Google: Vertex AI in this project (credentials: ADC), not a key

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key or self.vertex_project)


@dataclass(frozen=True, slots=True)
class ListedModel:
    """A model handle that works with this process's providers and credentials."""

    handle: str
    provider: str  # Convoy's provider name
    name: str  # the provider's own model name
    api: Api
    context_window: int
    endpoint: str | None
    created: int = 0  # Unix seconds, when the provider says (its /models); 0: not known


@dataclass(frozen=True, slots=True)
class Model:
    """A handle resolved to its provider: what the agent loop calls."""

    handle: str
    provider: str
    name: str
    endpoint: str | None
    adapter: ModelAdapter
    policy: StreamPolicy

    def stream(self, request: LLMRequest, attempts: Attempts | None = None) -> AsyncGenerator[LLMEvent, None]:
        return guarded(self.adapter.stream, request, provider=self.provider, policy=self.policy, attempts=attempts)


def _providers(settings: Settings) -> dict[str, Provider]:
    table = {
        "echo": Provider("echo", "echo", None, None, ""),
        "openai": Provider("openai", "chat", settings.openai_base_url, settings.openai_api_key, "OPENAI_API_KEY"),
        "openai-responses": Provider(
            "openai-responses", "responses", settings.openai_base_url, settings.openai_api_key, "OPENAI_API_KEY"
        ),
        "anthropic": Provider(
            "anthropic", "anthropic", settings.anthropic_base_url, settings.anthropic_api_key, "ANTHROPIC_API_KEY"
        ),
        "google": Provider(
            "google",
            "gemini",
            settings.google_vertex_base_url if settings.vertex_project else settings.gemini_base_url,
            settings.gemini_api_key,
            "GEMINI_API_KEY or GOOGLE_API_KEY (or CONVOY_GOOGLE_VERTEX_PROJECT for Vertex AI)",
            vertex_project=settings.vertex_project,
        ),
    }
    for name, compat in settings.providers.items():
        table[name] = Provider(name, compat.api, compat.base_url, compat.api_key or NO_KEY, "")
    return table


class Providers:
    """The providers this process can call, from its settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._table = _providers(settings)
        self._adapters: dict[str, ModelAdapter] = {}
        self._model_lists: dict[str, tuple[float, list[ListedModel]]] = {}  # compatible servers': (expires, models)
        self._policy = StreamPolicy(
            first_token_s=settings.llm_first_token_timeout_s,
            idle_s=settings.llm_idle_timeout_s,
            retries=settings.llm_stream_retries,
        )

    def validate(self, handle: str) -> str:
        """Check a handle at the edge, before anything is stored: shape, provider, credentials."""
        provider, _ = self._lookup(handle)
        if provider.key_hint and not provider.has_credentials:
            raise InvalidRequestError(f"model {handle!r} needs provider credentials: set {provider.key_hint}")
        return handle

    def check_settings(
        self,
        handle: str,
        settings: GenerationSettings,
        *,
        max_output_tokens: int | None,
        provider_types: Sequence[tuple[str, str]] = (),
        describe: Describe,
    ) -> None:
        """Refuse (400) settings the handle's provider or model cannot honour
        (``runtime.providers.capabilities``); ``provider_types``: (where, Letta's provider_type)."""
        provider, model_name = self._lookup(handle)
        for where, provider_type in provider_types:
            capabilities.check_provider_type(provider.api, provider.name, provider_type, where)
        capabilities.check(
            provider.api,
            provider.name,
            model_name,
            settings,
            max_output_tokens=max_output_tokens,
            default_max_output_tokens=self._settings.llm_max_output_tokens,
            describe=describe,
        )

    async def list_models(self) -> list[ListedModel]:
        """The handles that work with the configured providers and credentials (module docstring)."""
        listed = [ListedModel(ECHO_MODEL_HANDLE, "echo", "echo", "echo", DEFAULT_CONTEXT_TOKENS, None)]
        compatible = []
        for provider in self._table.values():
            if provider.api == "echo" or (provider.key_hint and not provider.has_credentials):
                continue
            if provider.name in CATALOG:
                listed += [
                    ListedModel(f"{provider.name}/{name}", provider.name, name, provider.api, window, provider.base_url)
                    for name, window in CATALOG[provider.name]
                ]
            else:
                compatible.append(provider)
        for found in await asyncio.gather(*(self._compatible_models(p) for p in compatible)):
            listed += found
        return listed

    async def _compatible_models(self, provider: Provider) -> list[ListedModel]:
        configured = self._settings.providers[provider.name].models
        if configured is not None:
            return [
                ListedModel(f"{provider.name}/{name}", provider.name, name, provider.api, DEFAULT_CONTEXT_TOKENS, provider.base_url)
                for name in configured
            ]
        cached = self._model_lists.get(provider.name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = await self._ask_models(provider)
        self._model_lists[provider.name] = (time.monotonic() + MODEL_LIST_TTL_S, found)
        return found

    async def _ask_models(self, provider: Provider) -> list[ListedModel]:
        """A compatible server's ``GET /models`` (OpenAI's list shape), or nothing if it does not answer."""
        url = f"{(provider.base_url or '').rstrip('/')}/models"
        headers = {"Authorization": f"Bearer {provider.api_key}"} if provider.api_key and provider.api_key != NO_KEY else {}
        try:
            async with httpx.AsyncClient(timeout=self._settings.llm_connect_timeout_s) as client:
                reply = await client.get(url, headers=headers)
                reply.raise_for_status()
                entries = reply.json()["data"]
            return [
                ListedModel(
                    f"{provider.name}/{entry['id']}",
                    provider.name,
                    entry["id"],
                    provider.api,
                    int(entry.get("max_model_len") or entry.get("context_length") or DEFAULT_CONTEXT_TOKENS),
                    provider.base_url,
                    int(entry.get("created") or 0),
                )
                for entry in entries
                if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]
            ]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("provider %s did not list its models", provider.name, extra={"url": url, "error": str(exc)})
            return []

    def model(self, handle: str) -> Model:
        provider, model_name = self._lookup(handle)
        if provider.key_hint and not provider.has_credentials:
            raise LLMAuthenticationError(f"{provider.name}: no API key configured; set {provider.key_hint}")
        return Model(handle, provider.name, model_name, provider.base_url, self._adapter(provider), self._policy)

    def _lookup(self, handle: str) -> tuple[Provider, str]:
        name, model_name = split_handle(handle)
        provider = self._table.get(name)
        if provider is None:
            raise InvalidRequestError(
                f"unknown model provider {name!r} in handle {handle!r}; known providers: {', '.join(self._table)} "
                "(declare OpenAI-compatible servers in CONVOY_PROVIDERS)"
            )
        return provider, model_name

    def warm(self) -> None:
        """Load the SDK and client of every provider this process can call (credentials set; echo
        needs none; Vertex AI is left to its first call, as its credentials may be looked up over the
        network). A provider that cannot be set up is left to its first call, which reports why."""
        for provider in self._table.values():
            if provider.api == "echo" or provider.vertex_project or (provider.key_hint and not provider.has_credentials):
                continue
            try:
                self._adapter(provider)
            except Exception as exc:  # noqa: BLE001 - the turn that calls it ends with the error
                log.warning("could not set up a provider's client", extra={"provider": provider.name, "error": repr(exc)})

    def _adapter(self, provider: Provider) -> ModelAdapter:
        adapter = self._adapters.get(provider.name)
        if adapter is None:
            adapter = self._adapters[provider.name] = self._build(provider)
            # The SDK just imported is there for good: out of every later collection (runtime.heap).
            # No collection first: this runs on a turn's path.
            heap.freeze(collect=False)
        return adapter

    def _build(self, provider: Provider) -> ModelAdapter:
        # SDK imports are local on purpose: see the module docstring.
        s = self._settings
        if provider.api == "echo":
            return EchoAdapter(delay_ms=s.echo_delay_ms)
        limits = {
            "connect": s.llm_connect_timeout_s,
            "read": max(s.llm_first_token_timeout_s, s.llm_idle_timeout_s),
            "write": s.llm_connect_timeout_s,
            "pool": s.llm_connect_timeout_s,
        }
        if provider.api == "gemini":
            from runtime.providers.gemini import GeminiAdapter, make_client

            gemini_client = make_client(
                api_key=provider.api_key,
                base_url=provider.base_url,
                vertex_project=provider.vertex_project,
                vertex_location=s.google_vertex_location or DEFAULT_VERTEX_LOCATION,
                connect_timeout_s=limits["connect"],
                read_timeout_s=limits["read"],
                max_retries=s.llm_max_retries,
            )
            return GeminiAdapter(gemini_client, provider=provider.name, include_thoughts=s.gemini_include_thoughts)
        common: _ClientOptions = {"api_key": provider.api_key, "base_url": provider.base_url, "max_retries": s.llm_max_retries}
        if provider.api == "anthropic":
            import anthropic

            from runtime.providers.anthropic_messages import AnthropicAdapter

            anthropic_client = anthropic.AsyncAnthropic(
                **common, timeout=anthropic.Timeout(**limits), http_client=anthropic.DefaultAioHttpClient()
            )
            return AnthropicAdapter(anthropic_client, provider=provider.name, default_max_tokens=s.llm_max_output_tokens)
        import openai

        openai_client = openai.AsyncOpenAI(**common, timeout=openai.Timeout(**limits), http_client=openai.DefaultAioHttpClient())
        if provider.api == "responses":
            from runtime.providers.openai_responses import OpenAIResponsesAdapter

            return OpenAIResponsesAdapter(openai_client, provider=provider.name)
        from runtime.providers.openai_chat import OpenAIChatAdapter

        limit_field = "max_completion_tokens" if provider.name == "openai" else "max_tokens"
        return OpenAIChatAdapter(openai_client, provider=provider.name, limit_field=limit_field)
