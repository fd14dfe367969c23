"""Who is calling: every request but health checks and the chat page names an API key, once, at the edge.

A key arrives as ``Authorization: Bearer <key>``, which is what ``letta-client`` and the
``openai`` SDK send. One script looks the key up and charges its rate limit; the request then
acts for the key's tenant (``Principal``), and every store checks records against that tenant.
Every line the request logs afterwards carries that ``tenant`` (``runtime.logs.bind``).

While no key was ever created (open mode, loopback only: see ``cli.main``), every request acts for
the default tenant, whatever it sends. Each API process asks Redis whether the first key has been
created until it sees that it has, so ``convoy keys create`` closes open mode everywhere at once.

A browser's ``EventSource`` cannot send a header: the GET stream route (and only it) also takes a
stream token as ``?token=`` (``StreamCaller``; see ``runtime.store.stream_tokens``). A token is
checked by its signature alone and grants only its run or conversation, for its tenant. Sent to any
other route, as a query parameter or as a bearer key, it is refused with a message saying where it
belongs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.state import get_state
from runtime import logs
from runtime.errors import AuthenticationError, StreamTokenError
from runtime.schemas.auth import Principal
from runtime.store.stream_tokens import MAX_TOKEN_CHARS, StreamGrant, looks_like_token

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key from `convoy keys create`. Not needed while the server runs open (no key created yet).",
)
TOKEN_ONLY_ON_STREAMS = (
    "a stream token opens only GET /v1/runs/{id}/stream?token=...; every other route needs 'Authorization: Bearer <API key>'"
)


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal:
    secret = credentials.credentials if credentials else None
    try:
        principal = await get_state(request).gate.principal(secret)
    except AuthenticationError as exc:
        if (secret and looks_like_token(secret)) or (not secret and "token" in request.query_params):
            raise StreamTokenError(TOKEN_ONLY_ON_STREAMS) from exc
        raise
    logs.bind(tenant=principal.tenant)  # on every line the rest of the request logs
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


@dataclass(frozen=True, slots=True)
class StreamCaller:
    """Who reads a stream: a ``principal`` (its tenant), and the token's ``grant`` when it came
    with a stream token instead of a key (then the route must check the run against it)."""

    principal: Principal
    grant: StreamGrant | None = None

    def check(self, run_id: str, conversation_id: str) -> None:
        if self.grant is not None and not self.grant.covers(run_id, conversation_id):
            raise StreamTokenError(
                f"this stream token is for {self.grant.scope} {self.grant.id}, not run {run_id}: "
                "mint one for the stream you want to read"
            )


async def authenticate_stream(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    token: Annotated[
        str | None,
        Query(max_length=MAX_TOKEN_CHARS, description="A stream token (for an EventSource, which cannot send a header)."),
    ] = None,
) -> StreamCaller:
    if token is None:
        return StreamCaller(await authenticate(request, credentials))
    grant = await get_state(request).stream_tokens.verify(token)
    return StreamCaller(Principal(tenant=grant.tenant), grant)


StreamReader = Annotated[StreamCaller, Depends(authenticate_stream)]
