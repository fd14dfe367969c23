"""Tenants, API keys and who is calling: what the key store keeps and what a request carries.

Every agent, conversation and run belongs to exactly one tenant. A key is bound to one tenant,
so a request authenticated by a key sees only that tenant's resources. A server running open
(loopback, no key ever created) serves every request as ``DEFAULT_TENANT``; keys created later
for that tenant keep seeing what was created while it ran open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Tenant = Annotated[str, Field(pattern=TENANT_PATTERN)]


class ApiKeyRecord(BaseModel):
    """One key as stored (its secret never is: only its SHA-256 digest, see ``runtime.store.api_keys``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    tenant: Tenant
    name: str = ""
    prefix: str = Field(description="The first characters of the secret, to recognise it in a list.")
    created_at: datetime
    requests_per_minute: int | None = Field(default=None, ge=0, description="None: the server default; 0: unlimited.")
    concurrent_runs: int | None = Field(default=None, ge=0, description="None: the server default; 0: unlimited.")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: its tenant, and the key it came with (None when the server runs open)."""

    tenant: str
    key_id: str | None = None
    concurrent_runs: int = 0  # 0: unlimited


OPEN = Principal(tenant=DEFAULT_TENANT)
