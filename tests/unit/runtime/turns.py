"""What the unit tests of a turn share: records, a turn request, and models that run in the test's
own process (``run_turn`` without Redis or Ray)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from runtime.ids import new_id
from runtime.providers.events import LLMEvent, LLMRequest
from runtime.providers.registry import Model
from runtime.providers.stream import StreamPolicy
from runtime.schemas.agents import AgentRecord, ConversationRecord
from runtime.schemas.messages import WireItem, utcnow
from runtime.schemas.requests import MessageCreate
from runtime.schemas.turns import TurnRequest


def agent(model: str = "echo/echo", tools: list[str] | None = None) -> AgentRecord:
    now = utcnow()
    return AgentRecord(id=new_id("agent"), name="a", model=model, system="sys", tools=tools or [], created_at=now, updated_at=now)


def conversation(of: AgentRecord, model: str | None = None) -> ConversationRecord:
    now = utcnow()
    return ConversationRecord(id=new_id("conv"), agent_id=of.id, model=model, created_at=now, updated_at=now)


def turn(text: str, **fields: object) -> TurnRequest:
    """A turn sending ``text``; ``fields``: the request's other fields (``stream_tokens``...)."""
    return TurnRequest(
        run_id=new_id("run"),
        agent_id="agent-x",
        conversation_id="conv-x",
        messages=[MessageCreate(content=text, otid="client-otid")],
        accepted_at_ns=time.time_ns(),
        **fields,  # type: ignore[arg-type]
    )


def model(adapter: object, name: str = "scripted") -> Model:
    """``adapter`` as the model ``fake/<name>``, no retries, 5 s deadlines."""
    return Model(f"fake/{name}", "fake", name, None, adapter, StreamPolicy(first_token_s=5, idle_s=5, retries=0))  # type: ignore[arg-type]


class Scripted:
    """A model adapter that streams one scripted response per call, in order (an exception: raised
    when the stream opens)."""

    def __init__(self, *responses: list[LLMEvent] | Exception) -> None:
        self._responses = list(responses)

    def payload(self, request: LLMRequest) -> dict[str, object]:
        return {}

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        response = self._responses.pop(0)
        if isinstance(response, Exception):
            raise response
        for event in response:
            yield event


async def ignore(item: WireItem) -> None:
    """An ``emit`` that drops what it is given."""
