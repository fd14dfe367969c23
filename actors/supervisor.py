"""Creating the conversation hosts and finding them again.

Hosts are named, detached Ray actors so that any API replica — in this process or another —
reaches the same ones by name, and so they outlive an API replica that stops. Ray restarts a host
whose process dies (``max_restarts=-1``) under the same name; its recovery is described in
``actors.host``. They reserve no CPU: a host is I/O bound.

Two placements (``CONVOY_PLACEMENT``):

- ``shared`` (default): ``CONVOY_HOSTS`` hosts (``convoy-host-<i>``), spread over the cluster's
  nodes, each holding thousands of conversations.
- ``dedicated``: one host per conversation (``convoy-conv-<id>``), created on its first message and
  gone when the conversation is passivated: process isolation, at the price of a Ray worker
  process (tens of MiB, about a second to start) per active conversation.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.host import ConversationHost
from runtime.settings import Settings

log = logging.getLogger(__name__)

HOST_PREFIX = "convoy-host-"
READY_TIMEOUT_S = 60.0
HOST_MEMORY_RESERVATION_BYTES = 64 * 1024 * 1024


DEDICATED_PREFIX = "convoy-conv-"
DEDICATED_MAX_CONCURRENCY = 64


def host_names(settings: Settings) -> list[str]:
    """The shared hosts (none in ``dedicated`` placement)."""
    if settings.placement == "dedicated":
        return []
    return [f"{HOST_PREFIX}{i}" for i in range(settings.hosts)]


def dedicated_name(conversation_id: str) -> str:
    return f"{DEDICATED_PREFIX}{conversation_id}"


def dedicated_host(settings: Settings, conversation_id: str) -> Any:
    """The conversation's own host actor, created if it does not exist (idempotent, race-free)."""
    name = dedicated_name(conversation_id)
    return _options(settings, name, max_concurrency=DEDICATED_MAX_CONCURRENCY).remote(name, settings, exit_when_idle=True)


def _options(settings: Settings, name: str, *, max_concurrency: int) -> Any:
    return ConversationHost.options(  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass; mypy does not apply class decorators
        name=name,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=max_concurrency,
        num_cpus=0,
        # Ray places an actor that reserves nothing on a random node and ignores SPREAD; a
        # small memory reservation (not a limit) makes SPREAD really spread the hosts.
        memory=HOST_MEMORY_RESERVATION_BYTES,
        scheduling_strategy="SPREAD",
    )


def ensure_hosts(settings: Settings) -> list[dict[str, Any]]:
    """Create missing hosts (idempotent across replicas) and wait until each answers; say so when
    hosts found running were started with other settings, or are more than ``CONVOY_HOSTS``."""
    handles = [
        _options(settings, name, max_concurrency=settings.host_max_concurrency).remote(name, settings)
        for name in host_names(settings)
    ]
    stats = ray.get([h.ready.remote() for h in handles], timeout=READY_TIMEOUT_S)
    log.info("conversation hosts ready", extra={"hosts": len(stats)})
    running = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == settings.ray_namespace]
    for warning in host_warnings(settings, list(stats), running):
        log.warning(warning)
    return list(stats)


def host_warnings(settings: Settings, stats: list[dict[str, Any]], running: list[str]) -> list[str]:
    """What a start must tell about the hosts it found: on a Ray cluster hosts are detached and
    outlive the ``convoy serve`` that made them, and one that exists already is reused as it is,
    with the settings it was started with (a new API key, tool modules, timeouts... do not reach
    it), and a lower ``CONVOY_HOSTS`` leaves the others running."""
    warnings: list[str] = []
    stale = sorted(s["name"] for s in stats if s.get("settings") != settings.fingerprint())
    if stale:
        warnings.append(
            f"hosts {', '.join(stale)} run with the settings of an earlier start, not these (Ray keeps detached hosts): "
            "to apply these settings, stop those hosts (ray.kill, or restart the Ray cluster), then start again"
        )
    wanted = set(host_names(settings))
    extra = sorted(n for n in running if n.startswith(HOST_PREFIX) and n not in wanted)
    if extra:
        warnings.append(
            f"hosts {', '.join(extra)} still run beyond CONVOY_HOSTS={settings.hosts} and keep the conversations they hold: "
            "stop them (ray.kill) once those are idle"
        )
    return warnings


def kill_hosts(settings: Settings) -> None:
    """Stop every host for good (used when this process owns the local Ray)."""
    for name in host_names(settings):
        try:
            handle = ray.get_actor(name, namespace=settings.ray_namespace)
        except ValueError:
            continue
        ray.kill(handle, no_restart=True)
