"""Bad inputs the soak's clients send now and then: each must be refused with a 4xx and change nothing.

Each variant is one request; ``BadInputs.send`` picks one at random and returns its name and the
status it got. The expected status is shown next to what was answered, for reading, but only the
class is judged (4xx), so stricter validation elsewhere does not turn the soak red.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from runtime.schemas.requests import MAX_TEXT_CHARS

Send = Callable[["BadInputs"], Awaitable[httpx.Response]]


@dataclass
class BadInputs:
    http: httpx.AsyncClient
    conversation_id: str  # one of the client's conversations, idle while the client sends this
    finished_run_id: str | None  # one of the client's runs, already ended

    async def send(self, rng: random.Random) -> tuple[str, int]:
        usable = [v for v in VARIANTS if self.finished_run_id is not None or not v.needs_run]
        variant = rng.choice(usable)
        response = await variant.send(self)
        return variant.name, response.status_code

    def messages(self, conversation_id: str | None = None) -> str:
        return f"/v1/conversations/{conversation_id or self.conversation_id}/messages"

    def resume(self, run_id: str | None = None) -> str:
        return f"/v1/runs/{run_id or self.finished_run_id}/stream"


@dataclass(frozen=True)
class Variant:
    name: str
    expected: int
    send: Send
    needs_run: bool = False


def _unknown(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "malformed JSON body",
        422,
        lambda b: b.http.post(b.messages(), content=b'{"input": ', headers={"content-type": "application/json"}),
    ),
    Variant("form-encoded body", 422, lambda b: b.http.post(b.messages(), data={"input": "hello"})),
    Variant("no input", 422, lambda b: b.http.post(b.messages(), json={"streaming": False})),
    Variant(
        "messages and input",
        422,
        lambda b: b.http.post(b.messages(), json={"input": "a", "messages": [{"role": "user", "content": "b"}]}),
    ),
    Variant("input of the wrong type", 422, lambda b: b.http.post(b.messages(), json={"input": 42})),
    Variant("max_steps 0", 422, lambda b: b.http.post(b.messages(), json={"input": "a", "max_steps": 0})),
    Variant("unknown on_busy", 422, lambda b: b.http.post(b.messages(), json={"input": "a", "on_busy": "sometimes"})),
    Variant(
        "input over the size limit",
        422,
        lambda b: b.http.post(b.messages(), json={"input": "x" * (MAX_TEXT_CHARS + 1), "streaming": False}),
    ),
    Variant(
        "unknown override_model",
        400,
        lambda b: b.http.post(b.messages(), json={"input": "a", "override_model": "nowhere/none"}),
    ),
    Variant(
        "approval with nothing pending",
        400,
        lambda b: b.http.post(
            b.messages(), json={"messages": [{"type": "approval", "approve": True}], "streaming": False}
        ),
    ),
    Variant("unknown conversation", 404, lambda b: b.http.post(b.messages(_unknown("conv")), json={"input": "a"})),
    Variant("malformed conversation id", 422, lambda b: b.http.post(b.messages("not-an-id"), json={"input": "a"})),
    Variant(
        "unknown agent for a conversation",
        404,
        lambda b: b.http.post("/v1/conversations", params={"agent_id": _unknown("agent")}),
    ),
    Variant(
        "agent with an unknown model",
        400,
        lambda b: b.http.post("/v1/agents", json={"name": "bad", "model": "nowhere/none"}),
    ),
    Variant("unknown run: get", 404, lambda b: b.http.get(f"/v1/runs/{_unknown('run')}")),
    Variant("unknown run: cancel", 404, lambda b: b.http.post(f"/v1/runs/{_unknown('run')}/cancel")),
    Variant("unknown run: resume", 404, lambda b: b.http.post(b.resume(_unknown("run")), json={})),
    Variant(
        "resume cursor negative", 422, lambda b: b.http.post(b.resume(), json={"starting_after": -1}), needs_run=True
    ),
    Variant(
        "resume cursor past the end",
        400,
        lambda b: b.http.post(b.resume(), json={"starting_after": 10**9}),
        needs_run=True,
    ),
)
EXPECTED: dict[str, int] = {v.name: v.expected for v in VARIANTS}
BUSY_REJECT = "message to a busy conversation, on_busy=reject"
EXPECTED[BUSY_REJECT] = 409
