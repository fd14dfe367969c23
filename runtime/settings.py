"""Convoy's settings: one typed object, read from the environment once and passed in.

Nothing else in Convoy reads ``os.environ``. Every field has a unit in its name where it
has one. Environment variables use the ``CONVOY_`` prefix (``CONVOY_REDIS_URL``,
``CONVOY_HOME``, ...); provider keys keep the names their SDKs already use
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``/``GOOGLE_API_KEY``, Google Cloud's
``GOOGLE_GENAI_USE_VERTEXAI``/``GOOGLE_CLOUD_PROJECT``/``GOOGLE_CLOUD_LOCATION``) so an existing shell
setup just works.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ECHO_MODEL_HANDLE = "echo/echo"
# How much of a step's request its trace keeps, by default (CONVOY_TRACE_REQUEST_MAX_BYTES).
TRACE_REQUEST_MAX_BYTES = 16 * 1024
# Provider names Convoy defines itself; a configured OpenAI-compatible provider cannot take them.
BUILTIN_PROVIDERS = ("echo", "openai", "openai-responses", "anthropic", "google")
# Where Vertex AI serves a model when no location is configured (Google's global endpoint).
DEFAULT_VERTEX_LOCATION = "global"


class CompatibleProvider(BaseModel):
    """An OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter, ...).

    Declared in ``CONVOY_PROVIDERS`` as JSON, e.g.
    ``{"vllm": {"base_url": "http://gpu-1:8000/v1"}, "openrouter": {"base_url": "https://openrouter.ai/api/v1",
    "api_key": "sk-or-...", "models": ["anthropic/claude-sonnet-4.5"]}}``; models are then addressed as
    ``vllm/<model>``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="The server's OpenAI API root, usually ending in /v1.")
    api_key: str | None = Field(default=None, description="Sent as the bearer token; many local servers need none.")
    api: Literal["chat", "responses"] = Field(default="chat", description="Which OpenAI API the server speaks.")
    models: list[str] | None = Field(
        default=None,
        description="The models to list (GET /v1/models); when unset, the server's own GET /models is asked.",
    )


class Settings(BaseSettings):
    """Everything configurable about one Convoy process (API replica, host actor or CLI)."""

    model_config = SettingsConfigDict(env_prefix="CONVOY_", extra="ignore", frozen=True, populate_by_name=True)

    home: Path = Field(default=Path("~/.convoy"), description="Data directory of the embedded Redis.")
    redis_url: str | None = Field(
        default=None, description="External Redis; when unset `convoy serve` starts an embedded one."
    )
    redis_socket_timeout_s: float = Field(default=10.0, gt=0)
    redis_max_connections: int = Field(default=256, ge=8)
    store_outage_s: float = Field(
        default=90.0,
        gt=0,
        description="How long a conversation owner keeps retrying its writes while Redis is unreachable "
        "before the run fails store_unavailable.",
    )

    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RAY_ADDRESS", "CONVOY_RAY_ADDRESS"),
        description="Existing Ray cluster; when unset a local instance is started.",
    )
    ray_namespace: str = "convoy"
    ray_auth_token_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("RAY_AUTH_TOKEN_PATH", "CONVOY_RAY_AUTH_TOKEN_PATH"),
        description="Ray's token file; by default Convoy keeps its own under CONVOY_HOME/ray.",
    )
    ray_auth_token_set: bool = Field(
        default=False,
        validation_alias=AliasChoices("RAY_AUTH_TOKEN"),
        description="Whether RAY_AUTH_TOKEN is set (Ray reads the value itself; Convoy never copies it).",
    )
    ray_metrics: bool = Field(
        default=True,
        description="The hosts record their metrics, which each node's Ray metrics agent serves to Prometheus; "
        "off, they record none and the local Ray that `convoy serve` starts collects none (Ray's own included).",
    )
    ray_log_to_driver: bool = Field(
        default=False,
        description="The local Ray that `convoy serve` starts runs Ray's log monitor, which copies the hosts' log "
        "lines to serve's output; off, they stay in Ray's log files (serve prints where).",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8283, ge=0, le=65535)

    # API keys (``convoy keys``; see runtime/apikeys.py). Per-key values set at creation win.
    key_requests_per_minute: int = Field(
        default=600, ge=0, description="Default request rate per API key (a bucket of this many, refilled per minute); 0: unlimited."
    )
    key_concurrent_runs: int = Field(
        default=32, ge=0, description="Default unfinished (queued or running) runs per API key; 0: unlimited."
    )
    stream_token_ttl_s: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="Lifetime of a stream token (GET /v1/runs/{id}/stream?token=, for a browser's EventSource).",
    )
    api_key: str | None = Field(
        default=None,
        description="The key `convoy chat` sends (a client's setting: servers never read it).",
    )

    # Conversation hosting (see actors/): hosts are Ray actors that each hold many conversations.
    placement: Literal["shared", "dedicated"] = Field(
        default="shared",
        description="shared: conversations share `hosts` host actors; dedicated: one Ray actor (process) each.",
    )
    hosts: int = Field(default=2, ge=1, description="Shared conversation host actors to keep running.")
    host_max_concurrency: int = Field(default=10_000, ge=16)
    lease_ttl_ms: int = Field(default=10_000, ge=1_000, description="Ownership lease of a conversation.")
    idle_passivate_s: float = Field(default=300.0, gt=0, description="Idle time before an activation is freed.")

    # The chunk bus (Redis streams, one per run).
    stream_ttl_s: int = Field(default=6 * 3600, ge=60, description="How long a finished run's stream stays resumable.")
    stream_maxlen: int = Field(default=100_000, ge=100, description="Cap on items kept per run stream.")
    stream_write_window_ms: float = Field(
        default=1.0,
        ge=0,
        le=50,
        description="An owner process sends its runs' items to Redis at most once per this window while busy "
        "(what comes meanwhile leaves together); a write on an idle path leaves at once. 0: no window.",
    )
    trace_request_max_bytes: int = Field(
        default=TRACE_REQUEST_MAX_BYTES,
        ge=0,
        le=16 * 1024 * 1024,
        description="A step's trace (GET /v1/runs/{id}/steps) keeps the request sent up to this size; beyond it "
        "the oldest messages that do not fit are left out (a marker says how many). Traces stay in Redis as "
        "long as their run (CONVOY_STREAM_TTL_S). 0: traces keep no request.",
    )
    read_block_ms: int = Field(default=1_000, ge=10, description="XREAD BLOCK; must stay under the socket timeout.")
    ping_interval_s: float = Field(default=15.0, gt=0, description="Keepalive ping after this much silence.")
    stream_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="A reader gives up on a silent run whose owner is gone after this long."
    )

    on_busy_default: Literal["queue", "reject", "interrupt"] = Field(
        default="queue",
        description="What a message to a busy conversation does unless it says (on_busy): queue, or reject "
        "with 409 as Letta does, or interrupt the active run.",
    )

    # Agents and models.
    default_model: str | None = Field(default=None, description="Model handle for agents that name none.")
    echo_delay_ms: float = Field(default=20.0, ge=0, description="Pause between words of the offline echo model.")
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    anthropic_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL")
    )
    # Google: the Gemini Developer API by key (GOOGLE_API_KEY wins over GEMINI_API_KEY, as in the SDK),
    # or Vertex AI with Application Default Credentials (``vertex_project``).
    gemini_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY")
    )
    gemini_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL")
    )
    google_vertex_project: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CONVOY_GOOGLE_VERTEX_PROJECT"),
        description="Serve google/... models from Vertex AI in this Google Cloud project (credentials: ADC).",
    )
    google_vertex_location: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CONVOY_GOOGLE_VERTEX_LOCATION", "GOOGLE_CLOUD_LOCATION"),
        description=f"Vertex AI location; {DEFAULT_VERTEX_LOCATION!r} when unset.",
    )
    google_vertex_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVOY_GOOGLE_VERTEX_BASE_URL", "GOOGLE_VERTEX_BASE_URL")
    )
    google_genai_use_vertexai: bool = Field(
        default=False,
        validation_alias=AliasChoices("GOOGLE_GENAI_USE_VERTEXAI"),
        description="The SDK's own switch to Vertex AI; the project is then GOOGLE_CLOUD_PROJECT.",
    )
    google_cloud_project: str | None = Field(default=None, validation_alias=AliasChoices("GOOGLE_CLOUD_PROJECT"))
    gemini_include_thoughts: bool = Field(
        default=True,
        description="Ask Gemini for thought summaries (streamed as reasoning); turn off for models that do not think.",
    )
    providers: dict[str, CompatibleProvider] = Field(
        default_factory=dict, description="Named OpenAI-compatible providers (JSON), addressed as '<name>/<model>'."
    )

    # Calling providers. The SDKs retry failed requests (429, 5xx, connection errors; honouring
    # Retry-After) before any byte of the answer arrives; Convoy re-attempts a stream that broke or
    # stalled before its first token reached anyone. Nothing is retried after that.
    llm_connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP/TLS connect to a provider.")
    llm_first_token_timeout_s: float = Field(
        default=300.0, gt=0, description="From the request to the first streamed token, SDK retries included."
    )
    llm_idle_timeout_s: float = Field(default=120.0, gt=0, description="Longest silence between two tokens.")
    llm_max_retries: int = Field(default=2, ge=0, le=10, description="SDK retries of a request that failed to start.")
    llm_stream_retries: int = Field(
        default=1, ge=0, le=5, description="Re-attempts of a stream that failed before its first token."
    )
    llm_max_output_tokens: int = Field(default=4096, ge=1, description="max_tokens sent when the agent sets none.")

    tool_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Python modules whose @tool functions agents may use (runtime/tools.py).",
    )

    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(lambda v: str(v).upper())] = "INFO"
    log_json: bool = Field(default=False, description="One JSON object per log line instead of key=value text.")

    @property
    def vertex_project(self) -> str | None:
        """The Google Cloud project whose Vertex AI serves ``google/...`` models, or None for the Gemini
        Developer API: ``CONVOY_GOOGLE_VERTEX_PROJECT``, else ``GOOGLE_CLOUD_PROJECT`` when the SDK's own
        ``GOOGLE_GENAI_USE_VERTEXAI`` is on."""
        if self.google_vertex_project:
            return self.google_vertex_project
        return self.google_cloud_project if self.google_genai_use_vertexai else None

    def fingerprint(self) -> str:
        """A short digest of every setting: two processes with the same one run the same settings
        (secrets are in it only hashed)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @field_validator("tool_modules", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("providers")
    @classmethod
    def _no_shadowing(cls, value: dict[str, CompatibleProvider]) -> dict[str, CompatibleProvider]:
        for name in value:
            if name in BUILTIN_PROVIDERS:
                raise ValueError(f"provider name {name!r} is built in; choose another name")
            if not name or "/" in name:
                raise ValueError(f"provider name {name!r} must be non-empty and contain no '/'")
        return value

    @field_validator("ray_auth_token_set", mode="before")
    @classmethod
    def _present(cls, value: object) -> bool:
        return bool(value)

    def resolved_default_model(self) -> str:
        """The model used when an agent names none: a configured provider, else offline echo."""
        if self.default_model:
            return self.default_model
        if self.openai_api_key:
            return "openai/gpt-4o-mini"
        if self.anthropic_api_key:
            return "anthropic/claude-sonnet-4-5"
        if self.gemini_api_key or self.vertex_project:
            return "google/gemini-2.5-flash"
        return ECHO_MODEL_HANDLE

    # Hostile input (api/limits.py): what a single request may carry.
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, streamed (chunked) bodies included; larger ones get 413.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest total size of a request's headers; larger ones get 431.",
    )
