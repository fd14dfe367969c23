"""OpenAI Chat Completions on top of Convoy: the request, the answers, and the one mapping from a
run's Letta stream items to them.

Convoy keeps each conversation's history, so a request's ``messages`` are not replayed: the new
input is the trailing run of ``user`` messages (everything after the last message of another
role), after the ``tool`` messages right before them if any. Earlier messages, system and developer
prompts included, are accepted and ignored: the agent's own system prompt and the conversation's
stored history are what the model sees. The new input is read in full: what Convoy cannot honour in
it (a content part that is not text, a field it does not model) is refused, never dropped.

A run that stops for tool calls the client must answer (a tool that needs approval: Letta's
``approval_request_message``) ends with ``finish_reason: "tool_calls"``. The client answers as
OpenAI's clients do, with a ``tool`` message per call (``tool_call_id``, the result as
``content``), which becomes Letta's ``tool_return`` message: the conversation goes on with those
results, and the calls are not run by the server. Results for only some of the pending calls are
refused (400, naming the pending ones).

``ChatTranslator`` is used by both answers, so they cannot disagree: a streamed answer sends its
deltas as ``chat.completion.chunk`` events, a non-streaming one folds the same deltas into one
``chat.completion``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime.schemas.model_settings import ModelSettingsInput, Reasoning, ResponseFormatIn
from runtime.schemas.requests import (
    MAX_CONTEXT_TOKENS,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_PARTS,
    MAX_TEXT_CHARS,
    MAX_TOOLS,
    InputMessage,
    JsonObject,
    MessageCreate,
    ToolReturnCreate,
    ToolReturnsCreate,
)

MAX_HISTORY_MESSAGES = 100_000  # a client may send a long history; only its tail is used
MAX_CHOICES = 128  # OpenAI's own ceiling for ``n``
MAX_STOP_SEQUENCES = 4  # OpenAI's ceilings, from here down
MAX_TOP_LOGPROBS = 20
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_SAFETY_ID_CHARS = 128
MAX_LOGIT_BIASES = 1024  # a bound for parsing: any non-zero bias is refused
IGNORED_PART_FIELDS = frozenset({"prompt_cache_breakpoint"})  # a cache hint cannot change the answer

FinishReason = Literal["stop", "length", "tool_calls"]
FINISH_REASON: dict[str, FinishReason] = {
    "end_turn": "stop",
    "max_tokens_exceeded": "length",
    "max_steps": "length",
    "requires_approval": "tool_calls",
}
CANCELLED_TYPE = "cancelled"  # the error_type a cancelled run is answered with


# -- request ---------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """A content part; what it carries besides ``type`` and ``text`` is kept, so a new message's
    part can be refused for it (``ChatCompletionRequest.refusal``)."""

    model_config = ConfigDict(extra="allow")

    type: Annotated[str, Field(max_length=64)]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None


class ChatMessage(BaseModel):
    """One message of ``messages``. Fields Convoy does not model are kept: ignored on history
    messages, refused on the new input (``ChatCompletionRequest.refusal``)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | Annotated[list[ContentPart], Field(max_length=MAX_PARTS)] | None = None
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    tool_call_id: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None  # a ``tool`` message's call

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None  # Convoy's chunks are never padded: nothing to turn off


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request field set to what Convoy cannot honour: answered 400 naming ``param``."""

    param: str
    message: str


MetadataKey = Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``, every field of OpenAI's, each in one of three kinds.

    **Honoured.** ``model`` names an agent (its default conversation) or a conversation;
    ``messages`` (the new input: module docstring), ``stream``, ``stream_options.include_usage``.
    ``temperature``, ``max_completion_tokens`` (or ``max_tokens``), ``response_format``,
    ``reasoning_effort``, ``verbosity`` and ``parallel_tool_calls`` are this request's model settings,
    over the conversation's and the agent's (``model_settings()``), and are refused (400) where the
    model cannot honour them.

    **Refused unless neutral** (``refusal()``: 400 naming the field, saying what to send): what
    would change the answer and Convoy cannot do. Each is accepted with the value that means "as
    if not sent", since SDKs and frameworks send those: ``n`` (1), ``tools`` and ``functions``
    (empty; the agent's own tools are used), ``tool_choice`` and ``function_call`` (``"auto"``: the
    agent decides when to call its tools), ``top_p`` (1), ``presence_penalty`` and
    ``frequency_penalty`` (0), ``logit_bias`` (no non-zero bias), ``logprobs`` (false) and
    ``top_logprobs`` (0), ``stop`` (no sequence), ``modalities`` (``["text"]``), ``audio``,
    ``seed``, ``moderation`` and ``web_search_options`` (null). So are fields of a new message
    that Convoy does not model, e.g. an Ollama-style ``images`` list.

    **Accepted and ignored**, as they cannot change the answer: ``user``, ``metadata``, ``store``,
    ``service_tier``, ``safety_identifier``, the prompt-cache hints (``prompt_cache_key``,
    ``prompt_cache_options``, ``prompt_cache_retention``, a text part's ``prompt_cache_breakpoint``),
    ``stream_options.include_obfuscation``, and ``prediction`` (a predicted output only makes
    OpenAI answer sooner; the answer is the same).

    A field that is none of these (not OpenAI's, or newer than Convoy) is refused, as OpenAI refuses
    it. Every number, string and list is checked against OpenAI's ranges, so a request OpenAI would
    refuse is refused here too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_HISTORY_MESSAGES)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    response_format: ResponseFormatIn | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    parallel_tool_calls: bool | None = None
    # refused unless neutral
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    tools: Annotated[list[JsonObject], Field(max_length=MAX_TOOLS)] | None = None
    functions: Annotated[list[JsonObject], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | JsonObject | None = None
    function_call: Literal["none", "auto"] | JsonObject | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], Annotated[int, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIASES)] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    stop: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | Annotated[list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    modalities: Annotated[list[Literal["text", "audio"]], Field(max_length=2)] | None = None
    audio: JsonObject | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    moderation: JsonObject | None = None
    web_search_options: JsonObject | None = None
    # accepted and ignored
    user: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)] | None = None
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    safety_identifier: Annotated[str, Field(max_length=MAX_SAFETY_ID_CHARS)] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    prompt_cache_options: JsonObject | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prediction: JsonObject | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        results, new = self.tool_results(), self.new_messages()
        if not new and not results:
            raise ValueError(
                "messages: the last message must be a user message, or the tool messages answering the "
                "tool calls of the last answer (Convoy keeps the history; the trailing messages are the new input)"
            )
        if len(new) > MAX_MESSAGES or len(results) > MAX_MESSAGES:
            raise ValueError(f"messages: at most {MAX_MESSAGES} new user messages and {MAX_MESSAGES} tool results per request")
        for message in [*results, *new]:
            if isinstance(message.content, list) and any(part.type != "text" for part in message.content):
                raise ValueError("messages: only text content parts are supported")
            if isinstance(message.content, list) and any(part.text is None for part in message.content):
                raise ValueError("messages: a text content part needs its text")
            if (chars := len(message.text())) > MAX_TEXT_CHARS:
                raise ValueError(
                    f"messages: a new {message.role} message's text parts come to {chars} characters; "
                    f"at most {MAX_TEXT_CHARS} per message"
                )
        for message in new:
            if not message.text().strip():
                raise ValueError("messages: a new user message has no text (or only whitespace)")
        for message in results:
            if not message.tool_call_id:
                raise ValueError("messages: a tool message needs the tool_call_id of the call it answers")
        return self

    def refusal(self) -> Refusal | None:
        """The first field set to a value Convoy cannot honour (class docstring), if any."""
        return next(self._refusals(), None)

    def _refusals(self) -> Iterator[Refusal]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        per_request_tools = 'choosing tools per request is not supported (the agent calls its own as it decides); leave it out or send "auto"'
        unsupported = (
            ("n", self.n not in (None, 1), "only one choice per request is supported; leave it out or send 1"),
            ("tools", bool(self.tools), "request-supplied tools are not supported; the agent's own tools are used"),
            ("functions", bool(self.functions), "request-supplied functions are not supported; the agent's own tools are used"),
            ("tool_choice", self.tool_choice not in (None, "auto"), per_request_tools),
            ("function_call", self.function_call not in (None, "auto"), per_request_tools),
            ("top_p", self.top_p not in (None, 1), "nucleus sampling is not supported; leave it out or send 1 (temperature is)"),
            ("presence_penalty", self.presence_penalty not in (None, 0), "penalties are not supported; leave it out or send 0"),
            ("frequency_penalty", self.frequency_penalty not in (None, 0), "penalties are not supported; leave it out or send 0"),
            ("logit_bias", any((self.logit_bias or {}).values()), "token biases are not supported; leave it out"),
            ("logprobs", bool(self.logprobs), "log probabilities are not available; leave it out or send false"),
            ("top_logprobs", bool(self.top_logprobs), "log probabilities are not available; leave it out or send 0"),
            ("stop", any(stops), "stop sequences are not supported; leave it out (the answer is never cut at a sequence)"),
            ("modalities", "audio" in (self.modalities or []), 'audio output is not supported; leave it out or send ["text"]'),
            ("audio", self.audio is not None, "audio output is not supported; leave it out"),
            ("seed", self.seed is not None, "sampling cannot be made repeatable (and a repeated request is a new turn of the conversation); leave it out"),
            ("moderation", self.moderation is not None, "moderation is not supported; leave it out"),
            ("web_search_options", self.web_search_options is not None, "web search is not supported; leave it out (give the agent a search tool instead)"),
        )
        for param, refused, why in unsupported:
            if refused:
                yield Refusal(param, f"{param}: {why}")
        start = self._input_from()
        for index, message in enumerate(self.messages[start:], start):
            yield from _message_refusals(f"messages.{index}", message)

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def new_messages(self) -> list[ChatMessage]:
        """The trailing user messages: what this request adds to the conversation."""
        return self.messages[self._users_from() :]

    def tool_results(self) -> list[ChatMessage]:
        """The ``tool`` messages right before the trailing user messages: the results of the calls
        the conversation's last answer asked the client for."""
        return self.messages[self._input_from() : self._users_from()]

    def _input_from(self) -> int:
        start = self._users_from()
        while start > 0 and self.messages[start - 1].role == "tool":
            start -= 1
        return start

    def _users_from(self) -> int:
        start = len(self.messages)
        while start > 0 and self.messages[start - 1].role == "user":
            start -= 1
        return start

    def input_messages(self) -> list[InputMessage]:
        """The tool results first (Letta's ``tool_return`` message), then the user's messages."""
        results = self.tool_results()
        answer: list[InputMessage] = []
        if results:
            returns = [ToolReturnCreate(tool_call_id=m.tool_call_id or "", tool_return=m.text()) for m in results]
            answer = [ToolReturnsCreate(type="tool_return", tool_returns=returns)]
        return [*answer, *(MessageCreate(role="user", content=m.text(), name=m.name) for m in self.new_messages())]

    def model_settings(self) -> ModelSettingsInput | None:
        """This request's model settings, in Letta's shape (None when it sets none)."""
        given: dict[str, Any] = {
            "temperature": self.temperature,
            "max_output_tokens": self.max_completion_tokens or self.max_tokens,
            "parallel_tool_calls": self.parallel_tool_calls,
            "verbosity": self.verbosity,
            "response_format": self.response_format,
            "reasoning": None if self.reasoning_effort is None else Reasoning(reasoning_effort=self.reasoning_effort),
        }
        given = {name: value for name, value in given.items() if value is not None}
        return ModelSettingsInput(**given) if given else None


def _message_refusals(where: str, message: ChatMessage) -> Iterator[Refusal]:
    """What a new message carries that Convoy cannot honour: a field it does not model, or a text
    part's field other than a cache hint (a part that is not text is refused by validation)."""
    for name in message.model_extra or {}:
        yield Refusal(
            f"{where}.{name}",
            f"{where}.{name}: Convoy does not know this field of a {message.role} message and cannot honour it; leave it out",
        )
    parts = message.content if isinstance(message.content, list) else []
    for index, part in enumerate(parts):
        at = f"{where}.content.{index}"
        for name in [name for name in part.model_extra or {} if name not in IGNORED_PART_FIELDS]:
            yield Refusal(f"{at}.{name}", f"{at}.{name}: Convoy does not know this field of a content part and cannot honour it; leave it out")


# -- answers ---------------------------------------------------------------------------------------


class ToolCallFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunction


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)

    @classmethod
    def from_letta(cls, doc: dict[str, Any]) -> Usage:
        return cls(
            prompt_tokens=doc.get("prompt_tokens") or 0,
            completion_tokens=doc.get("completion_tokens") or 0,
            total_tokens=doc.get("total_tokens") or 0,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=doc.get("cached_input_tokens") or 0),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=doc.get("reasoning_tokens") or 0),
        )


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


# -- the mapping -----------------------------------------------------------------------------------


@dataclass
class RunFailed:
    """Why a run gave no normal answer: its error item's ``error_type``, message and detail."""

    error_type: str
    message: str

    @classmethod
    def from_item(cls, doc: dict[str, Any]) -> RunFailed:
        detail = doc.get("detail")
        message = doc.get("message") or "the run failed"
        return cls(doc.get("error_type") or "internal_error", f"{message} ({detail})" if detail else message)


@dataclass
class ChatTranslator:
    """Folds one run's stream items (Letta JSON documents) into OpenAI deltas and an outcome.

    ``feed`` returns the deltas an item adds (assistant text; tool calls of an approval request).
    After the last item, ``failure`` is set if the run failed or was cancelled, otherwise
    ``finish_reason`` and ``usage`` describe its end.
    """

    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    failure: RunFailed | None = None
    text: list[str] = field(default_factory=list)
    tool_calls: dict[str, ToolCall] = field(default_factory=dict)
    _role_sent: bool = False

    def feed(self, doc: dict[str, Any], *, is_error: bool = False) -> list[Delta]:
        kind = doc.get("message_type")
        if is_error:
            self.failure = RunFailed.from_item(doc)
        elif kind == "stop_reason":
            self.stop_reason = doc.get("stop_reason")
            if self.stop_reason == "cancelled" and self.failure is None:
                self.failure = RunFailed(CANCELLED_TYPE, "the run was cancelled before it finished")
        elif kind == "usage_statistics":
            self.usage = Usage.from_letta(doc)
        elif kind == "assistant_message":
            text = _text(doc.get("content"))
            return self._emit(Delta(content=text)) if text else []
        elif kind == "approval_request_message":
            calls = doc.get("tool_calls")
            if isinstance(calls, list):  # a whole message (step streaming): every call at once
                heads = [self._tool_call(c, key=c.get("tool_call_id") or "") for c in calls if isinstance(c, dict)]
                return self._emit(Delta(tool_calls=heads)) if heads else []
            call = doc.get("tool_call") or {}
            key = doc.get("otid") or call.get("tool_call_id") or doc.get("id") or ""
            return self._emit(Delta(tool_calls=[self._tool_call(call, key=key)]))
        return []

    @property
    def finish_reason(self) -> FinishReason:
        return FINISH_REASON.get(self.stop_reason or "", "stop")

    def completion(self, completion_id: str, created: int, model: str) -> ChatCompletion:
        message = AssistantMessage(
            content="".join(self.text) if self.text or not self.tool_calls else None,
            tool_calls=list(self.tool_calls.values()) or None,
        )
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=model,
            choices=[Choice(message=message, finish_reason=self.finish_reason)],
            usage=self.usage,
        )

    def _emit(self, delta: Delta) -> list[Delta]:
        """Record a delta for the folded answer; the first one also carries the role."""
        if delta.content:
            self.text.append(delta.content)
        if not self._role_sent:
            delta.role = "assistant"
            self._role_sent = True
        return [delta]

    def _tool_call(self, call: dict[str, Any], *, key: str) -> ToolCallDelta:
        """One piece of a call the client must run: the first piece of a call (per ``key``) carries
        its id and name, later pieces more arguments."""
        known = self.tool_calls.get(key)
        if known is None:
            known = ToolCall(id=call.get("tool_call_id") or key, function=ToolCallFunction(name=call.get("name"), arguments=""))
            self.tool_calls[key] = known
            index = len(self.tool_calls) - 1
            head = ToolCallDelta(index=index, id=known.id, type="function", function=ToolCallFunction(name=known.function.name, arguments=call.get("arguments") or ""))
        else:
            index = list(self.tool_calls).index(key)
            head = ToolCallDelta(index=index, function=ToolCallFunction(arguments=call.get("arguments") or ""))
        known.function.arguments = (known.function.arguments or "") + (call.get("arguments") or "")
        return head


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def completion_id(run_id: str) -> str:
    """``chatcmpl-<the run's uuid>``: a completion is found again as its run."""
    return "chatcmpl-" + run_id.removeprefix("run-")


def sse_data(payload: BaseModel | dict[str, Any]) -> bytes:
    body = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return b"data: " + body.encode() + b"\n\n"
