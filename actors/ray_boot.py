"""Joining or starting Ray.

``RAY_ADDRESS`` set: join that cluster. Unset: start a local instance owned by this process
(``disconnect()`` stops it).

Ray 2.59+ turns token authentication on by default, and Convoy keeps it on: Ray's GCS listens on
every interface even when asked for loopback, so the token is what keeps other machines out. But
Ray's default token file (``~/.ray/auth_token``) is shared by every Ray a user starts, so two
local clusters (two Convoys, a benchmark beside a server) overwrite each other's token and lock
out each other's later clients. So a Convoy that starts its own Ray gives it a fresh token in
``<CONVOY_HOME>/ray/auth_token``, and ``convoy api`` with the same ``CONVOY_HOME`` uses that file
to join. An explicit ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` always wins (on a cluster the
launcher distributes it; see ``cluster.yaml``).

The local instance runs what one machine needs and no more (``actors.local_ray``).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import ray

from actors.local_ray import LocalRay
from runtime.settings import Settings

log = logging.getLogger(__name__)


TOKEN_BYTES = 32
_local: LocalRay | None = None


def token_path(settings: Settings) -> Path:
    return settings.home_dir / "ray" / "auth_token"


def _use_token(settings: Settings, *, fresh: bool) -> None:
    """Point Ray (this process and every process it starts) at Convoy's token file."""
    if settings.ray_auth_token_set or settings.ray_auth_token_path is not None:
        # An explicit token: make sure Ray uses it (joining by address does not turn it on).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        return
    path = token_path(settings)
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(secrets.token_hex(TOKEN_BYTES))
    elif not path.exists():
        return  # joining a cluster Convoy did not start: Ray's own defaults apply
    # Ray is configured through its environment; these are inherited by Ray's own processes.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    # This process may already have loaded (and cached) a token: make Ray read it again.
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # Ray's own reset hook; the compiled module's stub omits it

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connect(settings: Settings, *, start_local: bool) -> str:
    """Connect this process to Ray; returns the GCS address. Idempotent."""
    global _local
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    local = not settings.ray_address and start_local
    _use_token(settings, fresh=local)
    if settings.ray_address:
        ctx = ray.init(address=settings.ray_address, namespace=settings.ray_namespace, logging_level=logging.WARNING)
    elif start_local:
        _local = LocalRay(settings)
        ctx = ray.init(
            address=_local.address,
            namespace=settings.ray_namespace,
            logging_level=logging.WARNING,
            log_to_driver=settings.ray_log_to_driver,
        )
    else:
        ctx = ray.init(address="auto", namespace=settings.ray_namespace, logging_level=logging.WARNING)
    address = str(ctx.address_info.get("gcs_address", ""))  # type: ignore[attr-defined]  # ray.init's RayContext, typed as its base
    log.info("ray connected", extra={"gcs_address": address})
    return address


def metrics_exporters() -> list[str]:
    """``host:port`` of every live node's Ray metrics agent, which serves the conversation hosts' metrics
    (what Ray's dashboard writes into its Prometheus service discovery file)."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]  # Ray leaves ray.nodes unannotated
    return [f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}" for node in nodes if node.get("Alive")]


def worker_logs() -> str:
    """Where the local Ray's workers (the hosts) write their logs."""
    return _local.logs_dir() if _local is not None else "the Ray node's session logs"


def disconnect() -> None:
    """Leave Ray; stop the local instance if this process started one."""
    global _local
    if ray.is_initialized():
        ray.shutdown()
    local, _local = _local, None
    if local is not None:
        local.stop()
