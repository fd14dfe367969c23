"""Who is calling: every request but health checks names an API key, once, at the edge.

A key arrives as ``Authorization: Bearer <key>``, which is what ``letta-client`` and the
``openai`` SDK send. One script looks the key up and charges its rate limit; the request then
acts for the key's tenant (``Principal``), and every store checks records against that tenant.
Every line the request logs afterwards carries that ``tenant`` (``runtime.logs.bind``).

While no key was ever created (open mode, loopback only: see ``api.cli``), every request acts for
the default tenant, whatever it sends. Each API process asks Redis whether the first key has been
created until it sees that it has, so ``convoy keys create`` closes open mode everywhere at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.state import get_state
from runtime import logs
from runtime.schemas.auth import Principal

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key from `convoy keys create`. Not needed while the server runs open (no key created yet).",
)


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal:
    principal = await get_state(request).gate.principal(credentials.credentials if credentials else None)
    logs.bind(tenant=principal.tenant)  # on every line the rest of the request logs
    return principal


Caller = Annotated[Principal, Depends(authenticate)]
