"""``POST /v1/chat/completions``: the OpenAI Chat Completions API over Convoy's conversations.

``model`` is an agent id (its default conversation, the one Letta's agent routes use) or a
conversation id. Convoy keeps the history, so only the trailing user messages of ``messages`` are
sent (see ``api.openai.schemas``); the turn goes through the same ``accept_turn`` as
every other send and its run's stream is read with the same follower (``actors.follow``).

Errors are never a normal stop:

- before the answer starts (bad input, unknown model, or a run that failed before producing any
  output) the response is an HTTP error in OpenAI's shape (``api.errors.openai_error``). A
  streamed answer therefore starts, headers included, with its first delta: until then its
  outcome may still be an error status;
- once chunks were sent, a failure ends the stream with ``data: {"error": {...}}`` and
  ``data: [DONE]`` (the OpenAI SDK raises ``APIError`` on it).

Like the conversation route, a streamed answer is foreground: a client that leaves before the
end cancels the run. Silence is filled with SSE comments, which OpenAI clients ignore.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api.auth import Caller
from api.errors import (
    openai_error,
    openai_error_body,
    openai_error_for,
    run_error_status,
    validation_summary,
)
from api.openai.schemas import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatTranslator,
    ChunkChoice,
    Delta,
    completion_id,
    sse_data,
)
from api.sse import SSE_RESPONSES, in_background, sse_response
from api.state import AppState, State
from api.turns import accept_turn
from api.validation import AGENT_ID, CONVERSATION_ID
from runtime.errors import ConvoyError, NotFoundError
from runtime.schemas.agents import ConversationRef
from runtime.schemas.auth import Principal
from runtime.schemas.requests import SendMessageRequest
from runtime.schemas.runs import RunView


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by what they name (they are not recursive),
    so the document stays valid where it is embedded (the OpenAPI file has no ``$defs``)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


router = APIRouter(prefix="/v1/chat", tags=["openai"])

KEEPALIVE = b": keepalive\n\n"
DONE = b"data: [DONE]\n\n"


@router.post(
    "/completions",
    summary="OpenAI Chat Completions; model = an agent id or a conversation id",
    response_model=None,
    responses=SSE_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inlined(ChatCompletionRequest.model_json_schema())}},
        }
    },
)
async def chat_completions(
    request: Request, state: State, caller: Caller, idempotency_key: Annotated[str | None, Header(max_length=256)] = None
) -> Response:
    try:
        body = ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid(exc)
    refused = body.refusal()
    if refused is not None:
        return openai_error(400, refused.message, "unsupported_parameter", param=refused.param)
    try:
        conversation = await _target(state, caller, body.model)
    except NotFoundError:
        message = f"The model `{body.model}` does not exist: use an agent id (agent-…) or a conversation id (conv-…)"
        return openai_error(404, message, "model_not_found", param="model")
    # An OpenAI stream is a chunk per token, so a streamed answer streams the model's tokens.
    try:
        turn = SendMessageRequest(
            messages=body.input_messages(),
            streaming=body.streaming,
            stream_tokens=body.streaming,
            include_pings=False,
            model_settings=body.model_settings(),
        )
    except ValidationError as exc:  # what only the turn as a whole can break (the body's checks passed)
        return openai_error(400, f"invalid request: {validation_summary(exc.errors())}", "invalid_request")
    try:
        run = (await accept_turn(state, caller, conversation, turn, idempotency_header=idempotency_key)).run
    except ConvoyError as exc:
        return openai_error_for(exc)
    reply = _Reply(state, run, body.model, include_usage=body.include_usage)
    return await (_stream(request, state, run, reply) if body.streaming else _complete(reply))


def _invalid(exc: ValidationError) -> JSONResponse:
    """A body that does not validate; a field Convoy does not know is named as OpenAI names it."""
    errors = exc.errors()
    unknown = next((e for e in errors if e["type"] == "extra_forbidden"), None)
    if unknown is not None:
        field = ".".join(str(part) for part in unknown["loc"])
        message = f"{field}: not a Chat Completions field Convoy knows, so it cannot honour it; leave it out"
        return openai_error(400, message, "unknown_parameter", param=field)
    return openai_error(400, f"invalid request: {validation_summary(errors)}", "invalid_request")


async def _target(state: AppState, caller: Principal, model: str) -> ConversationRef:
    """The conversation ``model`` names (an agent means its default conversation)."""
    if re.fullmatch(AGENT_ID, model):
        return (await state.conversations.default_of(model, tenant=caller.tenant)).ref()
    if re.fullmatch(CONVERSATION_ID, model):
        return await state.conversations.ref(model, tenant=caller.tenant)
    raise NotFoundError(f"no agent or conversation {model}")


class _Reply:
    """One run's stream read as an OpenAI answer: deltas batch by batch, then its ending."""

    def __init__(self, state: AppState, run: RunView, model: str, *, include_usage: bool) -> None:
        self._batches = state.follower.batches(run.conversation_id, run.id, after=0)
        self.translator = ChatTranslator()
        self.ended = False
        self._id = completion_id(run.id)
        self._created = int(time.time())
        self._model = model
        self._include_usage = include_usage

    async def read(self) -> list[Delta] | None:
        """The deltas of the next batch of items (maybe none), or None for a silence."""
        got = await anext(self._batches)
        if got is None:
            return None
        deltas: list[Delta] = []
        for item in got[0]:
            if item.terminal:
                self.ended = True
                break
            deltas += self.translator.feed(json.loads(item.payload), is_error=item.kind == "error")
        return deltas

    async def close(self) -> None:
        await self._batches.aclose()

    def failure_response(self) -> JSONResponse | None:
        failure = self.translator.failure
        if failure is None:
            return None
        return openai_error(run_error_status(failure.error_type), failure.message, failure.error_type)

    def chunks(self, deltas: list[Delta]) -> bytes:
        return b"".join(sse_data(self._chunk([ChunkChoice(delta=delta)])) for delta in deltas)

    def ending(self) -> bytes:
        """The last chunks: the finish reason (and usage), or the run's error; then ``[DONE]``."""
        failure = self.translator.failure
        if failure is not None:
            error = openai_error_body(run_error_status(failure.error_type), failure.message, failure.error_type)
            return sse_data(error) + DONE
        end = sse_data(self._chunk([ChunkChoice(delta=Delta(), finish_reason=self.translator.finish_reason)]))
        if self._include_usage:
            end += sse_data(self._chunk([], usage=True))
        return end + DONE

    def completion(self) -> dict[str, Any]:
        return self.translator.completion(self._id, self._created, self._model).model_dump(mode="json")

    def _chunk(self, choices: list[ChunkChoice], *, usage: bool = False) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            usage=self.translator.usage if usage else None,
        )


async def _complete(reply: _Reply) -> Response:
    try:
        while not reply.ended:
            await reply.read()
    finally:
        await reply.close()
    return reply.failure_response() or JSONResponse(reply.completion())


async def _stream(request: Request, state: AppState, run: RunView, reply: _Reply) -> Response:
    async def abandon() -> object:
        return await state.client.cancel_abandoned(run.conversation_id, run.id)

    try:
        head = await _first_deltas(request, reply)
    except BaseException:
        await reply.close()
        raise
    if head is None:  # the client left before the first token: nobody will read this run
        await reply.close()
        in_background(abandon())
        return Response(status_code=499)
    if not head and reply.ended:
        failed = reply.failure_response()
        if failed is not None:
            await reply.close()
            return failed
    return sse_response(_events(reply, head, abandon))


async def _first_deltas(request: Request, reply: _Reply) -> list[Delta] | None:
    """The first deltas (empty if the run ended without any), or None if the client disconnected
    first. Until then no response has started, so the request's disconnect is watched here."""

    async def head() -> list[Delta]:
        deltas: list[Delta] = []
        while not deltas and not reply.ended:
            deltas = await reply.read() or []
        return deltas

    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    reading, leaving = asyncio.ensure_future(head()), asyncio.ensure_future(left())
    try:
        await asyncio.wait((reading, leaving), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # The response (not us) listens for a disconnect from here on; never two receivers at once.
        for task in (reading, leaving):
            task.cancel()
        await asyncio.gather(reading, leaving, return_exceptions=True)
    if reading.done() and not reading.cancelled():
        return reading.result()
    return None


async def _events(
    reply: _Reply, head: list[Delta], abandon: Callable[[], Coroutine[Any, Any, object]]
) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield reply.chunks(head)
        while not reply.ended:
            deltas = await reply.read()
            if deltas is None:
                yield KEEPALIVE
            elif deltas:
                yield reply.chunks(deltas)
        finished = True
        yield reply.ending()
    except (asyncio.CancelledError, GeneratorExit):
        if not finished:  # the client left: a foreground run is cancelled (as in api/sse.py)
            in_background(abandon())
        raise
    finally:
        await reply.close()
