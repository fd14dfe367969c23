"""One model response -> Letta wire items and history messages. The only place items are built.

A response is a sequence of *segments*: reasoning, a redacted reasoning block, the answer text,
each tool call. Every item of one response shares the message ``id`` and ``step_id``; each segment
has its own ``otid`` (``segment_otid(id, n)``), and all deltas of a segment share it.

- token streaming: each delta is emitted as it arrives (a reasoning signature is a delta too);
- step streaming: one complete message per segment is emitted when the response ends.

Either way the history receives the complete messages. Tool calls are gathered as Letta does: one
``tool_call_message`` for the calls Convoy runs itself and one ``approval_request_message`` for
the calls that wait for the client, each holding all its calls in ``tool_calls`` (parallel calls)
and the first in ``tool_call``, at the place of its first call.

A ``PartSignature`` (Gemini's signature of one part) is a segment of its own, a reasoning message
with the signature and no text, and the content event after it starts a segment of its own that
nothing later joins, so the history keeps the signed part exactly as it came (``events.PartSignature``);
a signature of a tool call travels on the call itself (``ToolCall.signature``).

A response cut by its output-token limit (``Finish("max_tokens")``) asks for no tool: its calls are
dropped from the result, the history and a step-streamed reply, because the last one is certainly
incomplete (its arguments are cut mid-JSON) and the others belong to a plan the model did not
finish. Token deltas already streamed stay as they were; the trace records the calls dropped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from runtime.ids import segment_otid
from runtime.providers.events import (
    CONTENT_EVENTS,
    Finish,
    LLMEvent,
    PartSignature,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    ResponseInfo,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from runtime.schemas.messages import (
    ApprovalRequestMessage,
    AssistantMessage,
    CallsMessage,
    HiddenReasoningMessage,
    HistoryMessage,
    LettaMessage,
    ReasoningMessage,
    ToolCallMessage,
    WireItem,
)
from runtime.schemas.messages import ToolCall as WireToolCall

Emit = Callable[[WireItem], Awaitable[None]]
SegmentKind = Literal["reasoning", "hidden", "text", "tool"]
WaitsForClient = Callable[[str], bool]
Message = TypeVar("Message", bound=LettaMessage)


@dataclass
class _Segment:
    kind: SegmentKind
    otid: str
    parts: list[str] = field(default_factory=list)
    signature: str | None = None
    call_index: int | None = None
    call_id: str | None = None
    name: str | None = None
    sealed: bool = False  # nothing more joins it: a signed part, or a PartSignature
    marker: bool = False  # a PartSignature: it signs the segment after it

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class StepResult:
    """What one model response produced."""

    messages: list[HistoryMessage]
    text: str
    refused: bool
    reasoning: tuple[ReasoningBlock, ...]
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish: Finish | None
    info: ResponseInfo | None
    first_token_ns: int | None  # wall clock of the first content event
    cut_tool_calls: tuple[ToolCall, ...] = ()  # asked for by a response the token limit cut: never run

    @property
    def truncated(self) -> bool:
        return self.finish is not None and self.finish.reason == "max_tokens"


class StepAssembler:
    def __init__(
        self,
        *,
        message_id: str,
        step_id: str,
        run_id: str,
        stream_tokens: bool,
        emit: Emit,
        waits_for_client: WaitsForClient = lambda name: False,
    ) -> None:
        """``waits_for_client(name)``: whether a call of that tool is an ``approval_request_message``
        (a tool needing approval, or a client-side tool) rather than a ``tool_call_message``."""
        self._id = message_id
        self._waits = waits_for_client
        self._step_id = step_id
        self._run_id = run_id
        self._stream_tokens = stream_tokens
        self._emit = emit
        self._segments: list[_Segment] = []
        self._refused = False
        self._usage = Usage()
        self._finish: Finish | None = None
        self._info: ResponseInfo | None = None
        self._first_token_ns: int | None = None
        self._signed_next = False  # a PartSignature came: the next content is a part of its own

    async def feed(self, event: LLMEvent) -> None:
        if isinstance(event, CONTENT_EVENTS) and self._first_token_ns is None:
            self._first_token_ns = time.time_ns()
        if isinstance(event, TextDelta | RefusalDelta):
            if isinstance(event, RefusalDelta):
                self._refused = True
            if event.text:
                segment = self._segment("text")
                segment.parts.append(event.text)
                await self._delta(segment, event.text)
        elif isinstance(event, ReasoningDelta):
            await self._reasoning(event)
        elif isinstance(event, PartSignature):
            segment = self._segment("reasoning", fresh=True)
            segment.signature = event.signature
            segment.sealed = segment.marker = True
            self._signed_next = True
            if self._stream_tokens:
                await self._emit(self._message(ReasoningMessage, segment, reasoning="", signature=event.signature))
        elif isinstance(event, ToolCallDelta):
            segment = self._segment("tool", call_index=event.index)
            opening = not segment.parts
            # A server that sends no call id gets a stable one from the call's first piece on, so
            # the streamed call and the stored one carry the same id (an approval names it).
            segment.call_id = segment.call_id or event.call_id or (self._stand_in_id(segment) if opening else None)
            segment.name = segment.name or event.name
            segment.parts.append(event.arguments)
            if self._stream_tokens:
                call_id = segment.call_id if opening else event.call_id
                call = WireToolCall(name=event.name, arguments=event.arguments, tool_call_id=call_id)
                await self._emit(self._message(self._call_type(segment), segment, tool_call=call))
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Finish):
            self._finish = event
        elif isinstance(event, ResponseInfo):
            self._info = event

    async def _reasoning(self, event: ReasoningDelta) -> None:
        if event.redacted is not None:
            segment = self._segment("hidden", fresh=True)
            segment.parts.append(event.redacted)
            if self._stream_tokens:
                await self._emit(self._hidden(segment))
            return
        segment = self._segment("reasoning")
        if event.text:
            segment.parts.append(event.text)
        if event.signature:
            segment.signature = event.signature
        if self._stream_tokens and (event.text or event.signature):
            await self._emit(
                self._message(ReasoningMessage, segment, reasoning=event.text, signature=event.signature)
            )

    async def close(self) -> StepResult:
        """The response ended: emit whole messages (step streaming) and return the result."""
        result = self.snapshot()
        if not self._stream_tokens:
            for message in result.messages:
                await self._emit(message.model_copy())
        return result

    def snapshot(self) -> StepResult:
        """What the response produced so far, emitting nothing (for traces of a broken step)."""
        for segment in self._segments:  # a server that sends no call id still gets stable ones
            if segment.kind == "tool" and not segment.call_id:
                segment.call_id = self._stand_in_id(segment)
        cut = self._finish is not None and self._finish.reason == "max_tokens"
        kept: list[_Segment] = []
        for segment in self._segments:
            signs = kept[-1].signature if kept and kept[-1].marker else None
            if segment.kind == "tool" and signs is not None:
                kept.pop()  # a call's signature goes on the call (and away with it, if it is cut)
                segment.signature = signs
            if cut and segment.kind == "tool":
                continue
            kept.append(segment)
        calls = tuple(
            ToolCall(call_id=s.call_id or "", name=s.name or "", arguments=s.text) for s in self._segments if s.kind == "tool"
        )
        return StepResult(
            messages=self._complete(kept),
            text="".join(s.text for s in kept if s.kind == "text"),
            refused=self._refused,
            reasoning=tuple(
                ReasoningBlock(redacted=s.text) if s.kind == "hidden" else ReasoningBlock(s.text, s.signature)
                for s in kept
                if s.kind in ("reasoning", "hidden")
            ),
            tool_calls=() if cut else calls,
            usage=self._usage,
            finish=self._finish,
            info=self._info,
            first_token_ns=self._first_token_ns,
            cut_tool_calls=calls if cut else (),
        )

    def _stand_in_id(self, segment: _Segment) -> str:
        """The id of a call its server sent none for: stable for the message and the call's index."""
        return f"call-{self._id[8:]}-{segment.call_index}"

    def _segment(self, kind: SegmentKind, *, call_index: int | None = None, fresh: bool = False) -> _Segment:
        signed, self._signed_next = self._signed_next, False
        if not (fresh or signed):
            current = self._segments[-1] if self._segments else None
            if current is not None and not current.sealed and current.kind == kind and current.call_index == call_index:
                return current
            if kind == "tool":  # a later fragment of a call that is not the newest segment
                for segment in self._segments:
                    if segment.kind == "tool" and segment.call_index == call_index:
                        return segment
        segment = _Segment(kind, segment_otid(self._id, len(self._segments)), call_index=call_index, sealed=signed)
        self._segments.append(segment)
        return segment

    async def _delta(self, segment: _Segment, text: str) -> None:
        if self._stream_tokens:
            await self._emit(self._message(AssistantMessage, segment, content=text))

    def _message(self, cls: type[Message], segment: _Segment, **fields: Any) -> Message:
        return cls(id=self._id, otid=segment.otid, step_id=self._step_id, run_id=self._run_id, **fields)

    def _hidden(self, segment: _Segment) -> HiddenReasoningMessage:
        return self._message(HiddenReasoningMessage, segment, state="redacted", hidden_reasoning=segment.text)

    def _complete(self, segments: list[_Segment]) -> list[HistoryMessage]:
        """One complete message per segment, the calls gathered (see the module docstring)."""
        messages: list[HistoryMessage] = []
        gathered: dict[type, CallsMessage] = {}
        for segment in segments:
            if segment.kind == "text":
                messages.append(self._message(AssistantMessage, segment, content=segment.text))
            elif segment.kind == "reasoning":
                messages.append(self._message(ReasoningMessage, segment, reasoning=segment.text, signature=segment.signature))
            elif segment.kind == "hidden":
                messages.append(self._hidden(segment))
            else:
                call = WireToolCall(
                    name=segment.name, arguments=segment.text, tool_call_id=segment.call_id, signature=segment.signature
                )
                kind = self._call_type(segment)
                if kind in gathered:
                    gathered[kind].calls_list.append(call)
                else:
                    message: CallsMessage = self._message(kind, segment, tool_call=call, tool_calls=[call])
                    gathered[kind] = message
                    messages.append(message)  # type: ignore[arg-type]
        return messages

    def _call_type(self, segment: _Segment) -> type[ApprovalRequestMessage] | type[ToolCallMessage]:
        return ApprovalRequestMessage if segment.name and self._waits(segment.name) else ToolCallMessage
