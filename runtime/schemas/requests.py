"""Request bodies of the Letta API, validated at the edge.

Each field the Letta SDK sends is honoured, or refused with a message that says why and what to
do instead, or, only where it cannot change the answer, left unmodelled and ignored
(``extra="ignore"``), so an unchanged SDK keeps working; ``docs/letta-compatibility.md`` lists which.

Everything is bounded: strings, lists, integers, and free-form JSON (``JsonObject``: metadata, a
client tool's parameter schema), whose depth and size are capped so that what is accepted can
always be stored, read back and answered (Redis payloads are parsed with a nesting limit).
"""

from __future__ import annotations

import functools
import json
import math
import zoneinfo
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from runtime.errors import InvalidRequestError
from runtime.ids import new_id
from runtime.schemas.messages import AssistantMessage, UserMessage
from runtime.schemas.model_settings import ModelSettings, ModelSettingsInput, Reasoning, ResponseFormatIn

AGENT_TYPE = "letta_v1_agent"  # the one agent loop Convoy runs, in Letta's words
MAX_TEXT_CHARS = 1_000_000
MAX_MESSAGES = 256
MAX_PARTS = 256
MAX_NAME_CHARS = 256
MAX_SYSTEM_CHARS = 200_000
MAX_JSON_DEPTH = 32  # levels of objects and arrays in a free-form JSON field
MAX_JSON_VALUES = 10_000  # values (keys not counted) in a free-form JSON field
MAX_TOOLS = 128
MAX_TAGS = 64
MAX_MEMORY_BLOCKS = 64
MAX_STEPS = 1000
MAX_CONTEXT_TOKENS = 10_000_000  # a ceiling for token counts: no model comes close
MAX_BLOCK_LIMIT_CHARS = 10_000_000  # generous: stored agents must still load
MAX_POLL_INTERVAL_S = 3600
MAX_BATCH_SIZE = 1_000_000

OnBusy = Literal["queue", "reject", "interrupt"]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
MessageType = Annotated[str, Field(max_length=64)]
MAX_MESSAGE_TYPES = 32


def bounded_json(value: Any) -> Any:
    """Free-form JSON that can be stored and sent back as it came: at most ``MAX_JSON_DEPTH``
    levels and ``MAX_JSON_VALUES`` values, keys of at most ``MAX_NAME_CHARS`` characters, and
    finite numbers only (NaN and Infinity are not JSON)."""
    stack: list[tuple[Any, int, tuple[object, ...]]] = [(value, 1, ())]
    count = 0
    while stack:
        node, depth, path = stack.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            raise ValueError(f"holds more than {MAX_JSON_VALUES} values")
        if isinstance(node, dict | list) and depth > MAX_JSON_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels (at {_path(path)})")
        if isinstance(node, dict):
            for key, item in node.items():
                if len(key) > MAX_NAME_CHARS:
                    raise ValueError(f"has a key longer than {MAX_NAME_CHARS} characters (in {_path(path)})")
                stack.append((item, depth + 1, (*path, key)))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, (*path, i)) for i, item in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"holds {json.dumps(node)}, which is not a JSON number (at {_path(path)})")
        elif isinstance(node, str) and len(node) > MAX_TEXT_CHARS:
            raise ValueError(f"holds a string longer than {MAX_TEXT_CHARS} characters (at {_path(path)})")
    return value


def _path(path: tuple[object, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "the top level"


JsonObject = Annotated[dict[str, Any], AfterValidator(bounded_json)]


def _doubled(names: Sequence[str]) -> list[str]:
    return sorted(name for name, times in Counter(names).items() if times > 1)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: Text


class _MessageFields(BaseModel):
    """What every message of Letta's ``MessageCreate`` shape carries besides its role and content."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] | None = None
    otid: Name | None = None
    name: Name | None = None
    sender_id: Name | None = None
    # Letta's multi-agent groups and batches, which Convoy does not have (refused when set).
    group_id: Name | None = None
    batch_item_id: Name | None = None

    @model_validator(mode="after")
    def _no_groups(self) -> _MessageFields:
        if self.group_id is not None or self.batch_item_id is not None:
            raise ValueError("group_id and batch_item_id name Letta groups and batches, which Convoy does not have")
        return self


class MessageCreate(_MessageFields):
    """One input message (Letta's ``MessageCreate``)."""

    role: Literal["user", "system", "assistant"] = "user"
    content: Text | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_PARTS)]

    @model_validator(mode="after")
    def _has_text(self) -> MessageCreate:
        if self.role != "user":
            raise ValueError(
                f"role {self.role!r}: a message sent to an agent is the user's; to change what the model is told, "
                "set the agent's system prompt (or override_system for one request)"
            )
        if not self.text().strip():  # whitespace alone is no message (Anthropic refuses it outright)
            raise ValueError("a message needs text; its content is empty or only whitespace")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class InitialMessage(_MessageFields):
    """One message of an agent's ``initial_message_sequence`` (Letta's ``MessageCreate``): stored at
    the start of the agent's own history, as the user's (``user_message``) or the model's
    (``assistant_message``) text, and shown to the model as such. ``system`` is refused: the model
    is shown one system prompt, the agent's, and a system message in the history would never reach
    it; text parts only (Convoy's histories hold text)."""

    role: Literal["user", "system", "assistant"]
    content: Text | Annotated[list[JsonObject], Field(min_length=1, max_length=MAX_PARTS)]

    @model_validator(mode="after")
    def _storable(self) -> InitialMessage:
        if self.role == "system":
            raise ValueError(
                "role 'system': the model is shown one system prompt, the agent's; put what this message says in "
                "the agent's system (or a memory block), or send it as a user message"
            )
        parts = [] if isinstance(self.content, str) else self.content
        kinds = sorted({str(p.get("type")) for p in parts if p.get("type", "text") != "text" or not isinstance(p.get("text"), str)})
        if kinds:
            raise ValueError(
                f"content parts of type {', '.join(kinds)}: an initial message holds text only; send its content as a string "
                'or as {"type": "text", "text": ...} parts'
            )
        if not self.text().strip():
            raise ValueError(f"a {self.role} message needs text; its content is empty or only whitespace")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part["text"]) for part in self.content)

    def stored(self) -> UserMessage | AssistantMessage:
        """The message as the history stores it (a new id each time), as a turn stores its own."""
        kind = UserMessage if self.role == "user" else AssistantMessage
        return kind(id=new_id("message"), content=self.text(), otid=self.otid, name=self.name, sender_id=self.sender_id)


class ApprovalReturn(BaseModel):
    """A decision on one pending tool call."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["approval"] = "approval"
    tool_call_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    approve: bool
    reason: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None


class ToolReturnCreate(BaseModel):
    """The result of a client-side tool, run by the client."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["tool"] = "tool"
    tool_call_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    tool_return: Text | Annotated[list[TextPart], Field(max_length=MAX_PARTS)]
    status: Literal["success", "error"] = "success"
    stdout: Annotated[list[Text], Field(max_length=MAX_PARTS)] | None = None
    stderr: Annotated[list[Text], Field(max_length=MAX_PARTS)] | None = None

    def text(self) -> str:
        return self.tool_return if isinstance(self.tool_return, str) else "".join(p.text for p in self.tool_return)


class ApprovalCreate(BaseModel):
    """Letta's answer to an ``approval_request_message``: approve or deny the pending calls, or
    return client-side tool results. ``approve``/``reason`` alone apply to every pending call."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["approval"]
    approval_request_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    approve: bool | None = None
    reason: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    approvals: Annotated[
        list[Annotated[ApprovalReturn | ToolReturnCreate, Field(discriminator="type")]], Field(max_length=MAX_MESSAGES)
    ] | None = None
    otid: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None

    @model_validator(mode="after")
    def _decides(self) -> ApprovalCreate:
        if self.approve is None and not self.approvals:
            raise ValueError("an approval needs 'approve' (true/false) or a list of 'approvals'")
        return self


class ClientTool(BaseModel):
    """A tool the client runs itself: calling it pauses the run until the client returns a result."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    parameters: JsonObject | None = None

    @model_validator(mode="after")
    def _object_schema(self) -> ClientTool:
        kind = (self.parameters or {}).get("type", "object")
        if kind != "object":
            raise ValueError(
                f"parameters of tool {self.name!r} must be a JSON Schema of type 'object' "
                f"(e.g. {{\"type\": \"object\", \"properties\": {{...}}}}), not {kind!r}"
            )
        return self


class ToolReturnsCreate(BaseModel):
    """Letta's ``tool_return`` message: client-side tool results, the same as an approval whose
    ``approvals`` are those results (``as_approval``)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["tool_return"]
    tool_returns: Annotated[list[ToolReturnCreate], Field(min_length=1, max_length=MAX_MESSAGES)]
    otid: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None

    def as_approval(self) -> ApprovalCreate:
        return ApprovalCreate(type="approval", approvals=list(self.tool_returns), otid=self.otid)


def _input_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind == "approval" or kind == "tool_return":
        return str(kind)
    if isinstance(value, dict) and "type" not in value and ("approve" in value or "approval_request_id" in value):
        return "approval"  # as Letta: an item with approval fields and no type is an approval
    return "message"


# Told apart by ``type``, so an invalid message is reported against the one model it meant.
InputMessage = Annotated[
    Annotated[MessageCreate, Tag("message")]
    | Annotated[ApprovalCreate, Tag("approval")]
    | Annotated[ToolReturnsCreate, Tag("tool_return")],
    Discriminator(_input_kind),
]
# What a turn holds: ``tool_return`` items become approvals (``SendMessageRequest.input_messages``).
TurnMessage = Annotated[
    Annotated[MessageCreate, Tag("message")] | Annotated[ApprovalCreate, Tag("approval")], Discriminator(_input_kind)
]


class ClientSkill(BaseModel):
    """A skill of the client's environment, listed in the system prompt for one request."""

    model_config = ConfigDict(extra="ignore")

    name: Name
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    location: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class SendMessageRequest(BaseModel):
    """Body of ``POST /v1/conversations/{id}/messages`` (and the agent-direct routes).

    Every field of Letta's request is either honoured or refused with a message that says why;
    ``docs/letta-compatibility.md`` lists each. Deprecated fields that do nothing for Letta's own
    current agents do nothing here either (``use_assistant_message``, ``assistant_message_tool_*``,
    ``include_compaction_messages``: Convoy never compacts)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    messages: Annotated[list[InputMessage], Field(max_length=MAX_MESSAGES)] | None = None
    input: Text | Annotated[list[TextPart], Field(max_length=MAX_PARTS)] | None = None
    streaming: bool = True
    stream_tokens: bool = False
    include_pings: bool = True
    background: bool = False
    max_steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    use_assistant_message: bool = True
    assistant_message_tool_name: Name | None = None
    assistant_message_tool_kwarg: Name | None = None
    include_return_message_types: Annotated[list[MessageType], Field(max_length=MAX_MESSAGE_TYPES)] | None = None
    include_compaction_messages: bool = False
    override_model: Name | None = None
    override_system: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)] | None = Field(
        default=None, validation_alias=AliasChoices("override_system", "system")
    )
    agent_id: Name | None = None  # agent-direct mode (``default`` as the conversation id)
    on_busy: OnBusy | None = None  # None: the server's default (CONVOY_ON_BUSY_DEFAULT)
    client_tools: Annotated[list[ClientTool], Field(max_length=MAX_TOOLS)] | None = None
    client_skills: Annotated[list[ClientSkill], Field(max_length=MAX_TOOLS)] | None = None
    # Refused when asked for: Convoy does not do these (see _refused).
    enable_thinking: str | bool | None = None
    return_logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    return_token_ids: bool = False
    # This request's own model settings (a Convoy extension: Letta's send has none), over the
    # conversation's and the agent's, field by field (runtime.schemas.model_settings).
    model_settings: ModelSettingsInput | None = None

    @model_validator(mode="after")
    def _has_input(self) -> SendMessageRequest:
        if self.messages and self.input is not None:
            raise ValueError("send either 'messages' or 'input', not both")
        if not self.messages and self.input is None:
            raise ValueError("send at least one message: 'messages' (a list) or 'input' (a string)")
        if self.input is not None and not self._input_text().strip():
            raise ValueError("input: a message needs text; it is empty or only whitespace")
        answers = [i for i, m in enumerate(self.messages or ()) if not isinstance(m, MessageCreate)]
        if answers and answers != [0]:
            raise ValueError(
                "an approval (or tool_return) message must come first, and only once; user messages may follow it"
            )
        doubled = _doubled([tool.name for tool in self.client_tools or ()])
        if doubled:
            raise ValueError(f"client_tools: each tool name must be unique; sent more than once: {doubled}")
        approval = self.approval
        decided = _doubled([d.tool_call_id for d in approval.approvals or ()]) if approval is not None else []
        if decided:
            raise ValueError(
                f"approvals: each pending tool call takes exactly one decision; decided more than once: {decided}"
            )
        refused = _refused(self)
        if refused:
            raise ValueError(refused)
        return self

    def _input_text(self) -> str:
        if isinstance(self.input, str):
            return self.input
        return "".join(part.text for part in self.input or ())

    @property
    def approval(self) -> ApprovalCreate | None:
        first = self.messages[0] if self.messages else None
        if isinstance(first, ToolReturnsCreate):
            return first.as_approval()
        return first if isinstance(first, ApprovalCreate) else None

    def input_messages(self) -> list[TurnMessage]:
        """What the turn is made of: the approval first if there is one, then the user's messages."""
        if not self.messages:
            assert self.input is not None
            return [MessageCreate(role="user", content=self.input)]
        approval = self.approval
        rest = [m for m in self.messages if isinstance(m, MessageCreate)]
        return [approval, *rest] if approval is not None else list(rest)

    def first_otid(self) -> str | None:
        """The otid of the first input message (Letta SDKs reuse otids when they retry)."""
        first = self.input_messages()[0]
        return first.otid


def _refused(body: SendMessageRequest) -> str | None:
    """What a request asks that Convoy does not do, said plainly; None when nothing."""
    if body.return_logprobs or body.top_logprobs is not None or body.return_token_ids:
        return "return_logprobs, top_logprobs and return_token_ids are not supported: Convoy does not return log probabilities or token ids"
    if body.enable_thinking is not None and str(body.enable_thinking).lower() not in ("true", "1"):
        return "enable_thinking is deprecated and cannot turn reasoning off here; set the agent's model_settings instead"
    return None


class MemoryBlock(BaseModel):
    """A labelled block of text rendered into the agent's system prompt (Letta's ``CreateBlock``).

    ``label``, ``value`` and ``description`` are rendered; ``limit`` bounds ``value``; ``read_only``,
    ``metadata``, ``tags`` and ``hidden`` are stored and shown as sent, and change nothing else
    (Convoy's agents have no memory-editing tools: every block is read-only to the model; and
    Convoy has no block listing to hide a block from). Letta Cloud's template bookkeeping
    (``is_template``, ``template_name``, ``template_id``, ``base_template_id``, ``deployment_id``,
    ``entity_id``, ``preserve_on_migration``, ``project_id``) is accepted and not modelled: Convoy
    has no templates or projects, and these fields never reach Letta's model either. Every new
    field has a default, so records stored before it still load."""

    model_config = ConfigDict(extra="ignore")

    label: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[A-Za-z0-9_.-]+$")]
    value: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)]
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_BLOCK_LIMIT_CHARS)
    read_only: bool = False
    metadata: JsonObject | None = None
    tags: Annotated[list[Name], Field(max_length=MAX_TAGS)] | None = None
    hidden: bool | None = None


ToolName = Annotated[str, Field(min_length=1, max_length=64)]
# A server tool's id, as GET /v1/tools shows it: its name after "tool-".
ToolId = Annotated[str, Field(pattern=r"^tool-[A-Za-z_][A-Za-z0-9_-]{0,63}$")]
TOOL_RULE = "requires_approval"


class ToolRule(BaseModel):
    """One of Letta's tool rules. Convoy keeps ``requires_approval`` (a person approves each call of
    the tool); the others shape the agent loop in ways Convoy does not, and are refused."""

    model_config = ConfigDict(extra="ignore")

    type: Name
    tool_name: ToolName

    @model_validator(mode="after")
    def _kept(self) -> ToolRule:
        if self.type != TOOL_RULE:
            raise ValueError(
                f"tool_rules: a rule of type {self.type!r} is not supported; Convoy keeps only "
                f"{TOOL_RULE!r} rules (a person approves each call of the tool)"
            )
        return self


class LlmConfig(BaseModel):
    """Letta's deprecated ``llm_config`` (what ``GET /v1/agents/{id}`` shows): read as the agent's
    ``model`` (``handle``, else ``provider_name`` or ``model_endpoint_type`` with ``model``),
    ``context_window_limit``, ``max_tokens`` and model settings (``CreateAgentRequest``). What would
    change the answer and Convoy cannot honour is refused; the rest (``model_endpoint``,
    ``model_wrapper``, ``provider_category``, ``put_inner_thoughts_in_kwargs``, ``tier``,
    ``display_name``, ``compatibility_type``, ``tool_call_parser``) says how Letta's server reaches
    and prompts the model, which the handle and Convoy's one agent loop decide here."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    model_endpoint_type: Annotated[str, Field(min_length=1, max_length=64)]
    context_window: int = Field(ge=1_000, le=MAX_CONTEXT_TOKENS)
    handle: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    provider_name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    enable_reasoner: bool | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=0, le=MAX_CONTEXT_TOKENS)
    # Refused when they ask for something (_unheld).
    frequency_penalty: float | None = None
    return_logprobs: bool = False
    top_logprobs: int | None = None
    return_token_ids: bool = False
    strict: bool = False

    @model_validator(mode="after")
    def _unheld(self) -> LlmConfig:
        """What Convoy cannot honour, refused when asked for (``0``, ``false`` and null ask nothing)."""
        refused = []
        if self.frequency_penalty:
            refused.append("frequency_penalty: Convoy sends the model no penalties; leave it out")
        if self.return_logprobs or self.top_logprobs is not None or self.return_token_ids:
            refused.append(
                "return_logprobs, top_logprobs and return_token_ids: Convoy does not return log probabilities or token ids"
            )
        if self.strict:
            refused.append("strict: strict tool schemas are not supported by Convoy; leave it out or false")
        if self.max_reasoning_tokens and self.enable_reasoner is not False:
            refused.append(f"max_reasoning_tokens: {_THINKING_BUDGET}")
        if refused:
            raise ValueError(". ".join(f"llm_config.{reason}" for reason in refused))
        return self

    def handle_of(self) -> str:
        return self.handle or f"{self.provider_name or self.model_endpoint_type}/{self.model}"


_THINKING_BUDGET = (
    "set a thinking budget in model_settings instead: thinking {\"type\": \"enabled\", \"budget_tokens\": N} "
    "(Anthropic) or thinking_config.thinking_budget (Gemini)"
)
# llm_config's fields that are model settings under the same name.
LLM_CONFIG_SETTINGS = ("temperature", "effort", "verbosity", "parallel_tool_calls", "response_format")
# Letta's deprecated top-level fields that are model settings under the same name.
TOP_LEVEL_SETTINGS = ("parallel_tool_calls", "response_format")


_NO_SECRETS = (
    "Convoy's tools are functions registered on the server (CONVOY_TOOL_MODULES), configured by the server's "
    "environment; values sent with an agent would never reach them"
)
_NO_FILES = "Convoy has no sources or folders (no file search); leave it out"
# Fields of Letta's agent body that ask for what Convoy does not have: refused when they ask for
# something (true, a non-empty list or mapping, a value); accepted when they ask for nothing.
UNHELD_AGENT_FIELDS: dict[str, str] = {
    "block_ids": "Convoy has no shared blocks; give the agent its own blocks in memory_blocks",
    "source_ids": _NO_FILES,
    "folder_ids": _NO_FILES,
    "include_default_source": _NO_FILES,
    "identity_ids": "Convoy has no identities; leave it out",
    "from_template": "Convoy has no templates; create the agent from its fields",
    "enable_sleeptime": "Convoy has no sleep-time agents (memory blocks change only through the API); leave it out or false",
    "message_buffer_autoclear": (
        "Convoy's agents always see their conversation's newest messages that fit the context window; for a turn "
        "that remembers nothing, send it to a new conversation"
    ),
    "secrets": _NO_SECRETS,
    "tool_exec_environment_variables": _NO_SECRETS,
    "compaction_settings": (
        "Convoy does not summarise history (each request holds the newest messages that fit the context window); "
        "leave it out"
    ),
}
IdList = Annotated[list[Name], Field(max_length=MAX_TOOLS)]


@functools.cache
def _iana_zones() -> frozenset[str]:
    """The IANA time zone names of this machine's tz database (read once: it takes a while)."""
    return frozenset(zoneinfo.available_timezones())


def iana_zone(name: str) -> str:
    if name not in _iana_zones():
        raise ValueError(f"{name!r} is not an IANA time zone name (such as 'UTC', 'Europe/Paris' or 'America/New_York')")
    return name


TimeZone = Annotated[str, Field(max_length=64), AfterValidator(iana_zone)]


def _setting(settings: ModelSettings | None, field: str) -> Any:
    """``settings``' value for ``field`` (a ``ModelSettings`` field), None when it sets none."""
    if settings is None:
        return None
    if field == "reasoning":
        return settings.reasoning if settings.reasoning and settings.reasoning.reasoning_effort is not None else None
    if field == "response_format":
        return settings.response_format or settings.response_schema  # Google's name for it
    return getattr(settings, field)


class CreateAgentRequest(BaseModel):
    """Body of ``POST /v1/agents`` (Letta's ``CreateAgent``).

    Each of Letta's fields is honoured, refused when it asks for what Convoy cannot do
    (``UNHELD_AGENT_FIELDS``, ``agent_type`` other than Convoy's loop, the deprecated reasoning
    switches), or, where it cannot change the answer, accepted and not modelled: ``embedding``,
    ``embedding_config``, ``embedding_chunk_size`` (no archival memory), ``include_base_tools``,
    ``include_base_tool_rules`` (Convoy has no base tools, whatever they say), ``max_files_open``,
    ``per_file_view_window_char_limit`` (no files), ``hidden``, ``template``, ``template_id``,
    ``base_template_id``, ``memory_variables``, ``project``, ``project_id`` (bookkeeping of Letta
    Cloud's, unused by its agents). Letta's deprecated
    ``llm_config`` is read as ``model``, ``context_window_limit``, ``max_tokens`` and model settings,
    and the deprecated top-level ``parallel_tool_calls`` and ``response_format`` as model settings
    (``settings_over``); two fields saying different things about one setting are refused.
    ``timezone`` (an IANA name) is stored and shown, and changes nothing else: the model is shown no
    time. ``initial_message_sequence`` starts the agent's own history (``InitialMessage``)."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    system: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)] | None = None
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    tags: Annotated[list[Name], Field(max_length=MAX_TAGS)] | None = None
    metadata: JsonObject | None = None
    tools: Annotated[list[ToolName], Field(max_length=MAX_TOOLS)] | None = None
    tool_ids: Annotated[list[ToolId], Field(max_length=MAX_TOOLS)] | None = None
    tool_rules: Annotated[list[ToolRule], Field(max_length=MAX_TOOLS)] | None = None
    memory_blocks: Annotated[list[MemoryBlock], Field(max_length=MAX_MEMORY_BLOCKS)] | None = None
    context_window_limit: int | None = Field(default=None, ge=1_000, le=MAX_CONTEXT_TOKENS)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    model_settings: ModelSettingsInput | None = None
    llm_config: LlmConfig | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    agent_type: Name | None = None
    initial_message_sequence: Annotated[list[InitialMessage], Field(max_length=MAX_MESSAGES)] | None = None
    timezone: TimeZone | None = None
    # Refused when they ask for something (UNHELD_AGENT_FIELDS, _unheld).
    block_ids: IdList | None = None
    source_ids: IdList | None = None
    folder_ids: IdList | None = None
    identity_ids: IdList | None = None
    include_default_source: bool = False
    from_template: Name | None = None
    enable_sleeptime: bool | None = None
    message_buffer_autoclear: bool | None = None
    secrets: JsonObject | None = None
    tool_exec_environment_variables: JsonObject | None = None
    compaction_settings: JsonObject | None = None
    reasoning: bool | None = None
    enable_reasoner: bool | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=0, le=MAX_CONTEXT_TOKENS)

    @model_validator(mode="after")
    def _read_llm_config(self) -> CreateAgentRequest:
        """``llm_config``'s model, context window and output limit, where no other field gives them."""
        llm = self.llm_config
        if llm is None:
            return self
        for name, where, value in (
            ("model", "llm_config.handle" if llm.handle else "llm_config.model", llm.handle_of()),
            ("context_window_limit", "llm_config.context_window", llm.context_window),
            ("max_tokens", "llm_config.max_tokens", llm.max_tokens),
        ):
            own = getattr(self, name)
            if value is None or own == value:
                continue
            if own is not None:
                raise ValueError(f"{name} ({own!r}) and {where} ({value!r}) say different things: send one of them")
            setattr(self, name, value)
        return self

    @model_validator(mode="after")
    def _unheld(self) -> CreateAgentRequest:
        """What Convoy cannot honour, refused when asked for, each field named with what to do instead."""
        refused = [f"{name}: {reason}" for name, reason in UNHELD_AGENT_FIELDS.items() if getattr(self, name)]
        if self.agent_type is not None and self.agent_type != AGENT_TYPE:
            refused.append(
                f"agent_type {self.agent_type!r}: Convoy runs one agent loop, Letta's {AGENT_TYPE!r} (the model "
                "answers in text and calls tools natively: no send_message tool, heartbeats or memory tools); "
                f"leave agent_type out or send {AGENT_TYPE!r}"
            )
        if self.reasoning is not None:
            refused.append(
                "reasoning: deprecated in Letta; set the agent's model_settings instead (reasoning.reasoning_effort, "
                "thinking or thinking_config)"
            )
        if self.max_reasoning_tokens and self.enable_reasoner is not False:
            refused.append(f"max_reasoning_tokens: {_THINKING_BUDGET}")
        if refused:
            raise ValueError(". ".join(refused))
        return self

    @model_validator(mode="after")
    def _settings_agree(self) -> CreateAgentRequest:
        """A setting given in more than one place is given the same in each."""
        for field, sources in self._settings_sources().items():
            own = _setting(self.model_settings, field)
            named = [*sources, *([(f"model_settings.{field}", own)] if own is not None else [])]
            if any(value != named[0][1] for _, value in named):
                raise ValueError(f"{' and '.join(where for where, _ in named)} say different things: send one of them")
        return self

    @model_validator(mode="after")
    def _output_fits(self) -> CreateAgentRequest:
        limit = self.model_settings.max_output_tokens if self.model_settings else None
        if limit and self.context_window_limit and limit >= self.context_window_limit:
            raise ValueError(
                f"model_settings.max_output_tokens ({limit}) must be smaller than context_window_limit "
                f"({self.context_window_limit}): the answer is part of the context window"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> CreateAgentRequest:
        if self.max_tokens and self.context_window_limit and self.max_tokens >= self.context_window_limit:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be smaller than context_window_limit ({self.context_window_limit}): "
                "the answer is part of the context window"
            )
        labels = [block.label for block in self.memory_blocks or ()]
        for what, names in (("memory_blocks: label", labels), ("tools: name", self.tool_names() or [])):
            doubled = _doubled(names)
            if doubled:
                raise ValueError(f"{what}s must be unique; sent more than once: {doubled}")
        for block in self.memory_blocks or ():
            if block.limit is not None and len(block.value) > block.limit:
                raise ValueError(
                    f"memory block {block.label!r}: its value has {len(block.value)} characters, over its limit of {block.limit}"
                )
        return self

    def _settings_sources(self) -> dict[str, list[tuple[str, Any]]]:
        """Model settings given outside ``model_settings``: field -> [(where, value)], in
        precedence order (``llm_config``'s, then the top-level field's)."""
        sources: dict[str, list[tuple[str, Any]]] = {}
        llm = self.llm_config
        given: list[tuple[str, str, Any]] = []
        if llm is not None:
            given += [(name, f"llm_config.{name}", getattr(llm, name)) for name in LLM_CONFIG_SETTINGS]
            if llm.reasoning_effort is not None:
                given.append(("reasoning", "llm_config.reasoning_effort", Reasoning(reasoning_effort=llm.reasoning_effort)))
        given += [(name, name, getattr(self, name)) for name in TOP_LEVEL_SETTINGS]
        for field, where, value in given:
            if value is not None:
                sources.setdefault(field, []).append((where, value))
        return sources

    def implied_settings(self) -> dict[str, Any]:
        """The model settings ``llm_config`` and the deprecated top-level fields set, by field."""
        return {field: sources[0][1] for field, sources in self._settings_sources().items()}

    def settings_over(self, base: ModelSettings | None) -> ModelSettings | None:
        """``base`` with ``implied_settings`` set over it, field by field (its others kept)."""
        implied = self.implied_settings()
        if not implied:
            return base
        if "response_format" in implied:
            implied["response_schema"] = None  # Google's name for the same setting: the new one replaces it
        return (base or ModelSettings()).model_copy(update=implied)

    def tool_names(self) -> list[str] | None:
        """The tools asked for, by name (``tools``) and by id (``tool_ids``); None if neither was sent."""
        if self.tools is None and self.tool_ids is None:
            return None
        return [*(self.tools or ()), *(i.removeprefix("tool-") for i in self.tool_ids or ())]

    def tool_approvals(self, tools: list[str]) -> dict[str, bool] | None:
        """Letta's ``requires_approval`` rules as the agent's choices for ``tools`` (a rule: approved
        by a person; no rule: not); None if no rules were sent (each tool's default then holds)."""
        if self.tool_rules is None:
            return None
        ruled = {rule.tool_name for rule in self.tool_rules}
        unknown = sorted(ruled - set(tools))
        if unknown:
            raise InvalidRequestError(f"tool_rules name tools the agent does not have: {unknown}")
        return {name: name in ruled for name in tools}


class _ConversationFields(BaseModel):
    """What a conversation is created or updated with. ``context_window_limit`` overrides the
    agent's for this conversation's turns."""

    model_config = ConfigDict(extra="ignore")

    summary: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    description: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    model_settings: ModelSettingsInput | None = None
    context_window_limit: int | None = Field(default=None, ge=1_000, le=MAX_CONTEXT_TOKENS)


class CreateConversationRequest(_ConversationFields):
    """Body of ``POST /v1/conversations`` (Letta's ``ConversationCreate``, less ``agent_id``, which
    is a query parameter); ``hidden`` leaves it out of listings."""

    hidden: bool = False


class UpdateConversationRequest(_ConversationFields):
    """Body of ``PATCH /v1/conversations/{id}`` (Letta's ``ConversationUpdate``): only the fields sent
    change (``null``: unchanged); ``model_settings`` is replaced as a whole (``{}`` clears it);
    ``archived`` files the conversation away from the default listing, or brings it back."""

    archived: bool | None = None
    last_message_at: datetime | None = None

    @model_validator(mode="after")
    def _settable(self) -> UpdateConversationRequest:
        if self.last_message_at is not None:
            raise ValueError("last_message_at: Convoy keeps it from the conversation's runs; it cannot be set")
        return self


MAX_SEQ = 2**53  # larger cursors are nonsense, and are refused as such


class ResumeRequest(BaseModel):
    """Body of ``POST /v1/runs/{id}/stream`` and ``POST /v1/conversations/{id}/stream``."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    starting_after: int = Field(default=0, ge=0, le=MAX_SEQ, description="the last seq_id the client has")
    include_pings: bool = True
    run_id: str | None = Field(default=None, pattern=r"^run-[0-9a-f-]{36}$")
    otid: Name | None = None
    agent_id: Name | None = None
    # Accepted for Letta compatibility; Convoy pushes, it does not poll.
    poll_interval: float | None = Field(default=None, ge=0, le=MAX_POLL_INTERVAL_S)
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)


class CancelRunsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_ids: Annotated[list[Annotated[str, Field(pattern=r"^run-[0-9a-f-]{36}$")]], Field(max_length=1000)] | None = None
