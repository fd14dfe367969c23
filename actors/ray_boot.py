"""Joining or starting Ray.

``RAY_ADDRESS`` set: join that cluster. Unset: start a local instance owned by this process
(``ray.shutdown()`` stops it). Ray 2.59+ turns token authentication on by default, and we keep it
on: Ray's GCS listens on every interface even when asked for loopback, so the token is what keeps
other machines out. Processes of the same user on this machine find the token Ray wrote under
``~/.ray``; on a cluster it is distributed by the cluster launcher (see ``cluster.yaml``).
"""

from __future__ import annotations

import logging

import ray

from runtime.settings import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings, *, start_local: bool) -> str:
    """Connect this process to Ray; returns the GCS address. Idempotent."""
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    if settings.ray_address:
        ctx = ray.init(address=settings.ray_address, namespace=settings.ray_namespace, logging_level=logging.WARNING)
    elif start_local:
        ctx = ray.init(
            namespace=settings.ray_namespace,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )
    else:
        ctx = ray.init(address="auto", namespace=settings.ray_namespace, logging_level=logging.WARNING)
    address = str(ctx.address_info.get("gcs_address", ""))
    log.info("ray connected", extra={"gcs_address": address})
    return address


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
