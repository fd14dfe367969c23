"""The Ray that ``convoy serve`` starts on its own machine: what one machine needs, and no more.

``ray.init()`` would also start, beside the GCS, the raylet and the raylet's two agents:

- the autoscaler's monitor: there is nothing to scale on one machine;
- the dashboard's head: with the dashboard off, Ray still starts it with its usage-statistics
  module only, which ``ray.init`` itself turns off;
- the log monitor: it copies every worker's log lines to the driver's output, polling the log
  directory ten times a second. Kept with ``CONVOY_RAY_LOG_TO_DRIVER`` (off by default: the hosts
  log to their worker log files, which ``convoy serve`` names as it starts).

Measured at rest (``convoy bench idle``), the three held ~280 MiB and used ~1% of a core. So this
module starts the head node itself, as ``ray.init()`` does, without them, and with
``SYSTEM_CONFIG`` for what Ray's daemons and workers do at rest; the caller then joins it as a
driver. The raylet's two agents stay: the raylet cannot run without them (it waits for their ports),
and the dashboard agent is each node's metrics agent, which serves the hosts' ``ray.util.metrics``
when ``CONVOY_RAY_METRICS`` is on (the default). With metrics off, the local Ray collects none and
the agent's reporter, whose node statistics would go nowhere, reports once an hour instead of every
5 s.

Without a dashboard head, the agent is told the dashboard is at an address nothing can listen on
(``NO_DASHBOARD_ADDRESS``): its event module reads the address before anything else, asking every
second (and logging a traceback) until it finds one; Ray's events it then sends there fail, as they
already did with the head ``ray.init`` starts, whose usage-statistics module serves no event route
(measured: a killed host's event, ten retries then one error, either way).

This reaches into Ray's private node API (``ray._private.node.Node``, ``RayParams``), which is why
Ray is pinned to a minor version; ``tests/integration/test_idle.py`` fails if another Ray starts
those processes again, or its daemons log errors at rest. A cluster Convoy joins (``RAY_ADDRESS``)
is its operator's (``ray start``, ``cluster.yaml``): none of this applies to it.
"""

from __future__ import annotations

import os

from ray._private import ray_constants
from ray._private.node import Node
from ray._private.parameter import RayParams

from runtime.settings import Settings

# Ray's settings for its daemons and workers (``ray.init(_system_config=...)``), each measured with
# ``convoy bench idle``: what it saves is in wakeups per second, which do not depend on how busy the
# machine is (the CPU a wakeup costs does).
SYSTEM_CONFIG: dict[str, object] = {
    # Per-handler timing statistics every Ray process keeps for its debug logs: diagnostics only.
    "event_stats": False,
    # Ray starts idle workers for the first driver, and keeps them while there are no more workers
    # than CPUs: with one shared host, one idle worker (~80 MiB, ~0.8% of a core); with dedicated
    # placement, one per CPU. Convoy's hosts are actors, each started in a worker of its own.
    "prestart_worker_first_driver": False,
    # Task state events, for Ray's state API and dashboard (neither runs here): each worker and the
    # driver reported every second (~2 wakeups/s each).
    "task_events_report_interval_ms": 0,
    "ray_events_report_interval_ms": 0,
    # The raylet's object store housekeeping, every 100-1,000 ms by default: Convoy puts no object in
    # the store (actor calls carry small values inline). ~30 raylet wakeups/s fewer.
    "object_manager_timer_freq_ms": 1000,
    "raylet_check_gc_period_milliseconds": 1000,
    "free_objects_period_milliseconds": 10_000,
    "kill_idle_workers_interval_ms": 1000,
}
# How often the agent's reporter collects node statistics when no metrics are collected (Ray: 5 s).
REPORTER_INTERVAL_WITHOUT_METRICS_MS = 3_600_000
# Where the agents are told the dashboard is: nothing can listen on port 0 (module docstring).
NO_DASHBOARD_ADDRESS = b"127.0.0.1:0"


class _Head(Node):
    """Ray's head node, minus the dashboard's head process."""

    def start_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        """Record an address that refuses every connection instead of starting the dashboard."""
        del include_dashboard, raise_on_failure
        self.get_gcs_client().internal_kv_put(  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
            ray_constants.DASHBOARD_ADDRESS.encode(), NO_DASHBOARD_ADDRESS, True, ray_constants.KV_NAMESPACE_DASHBOARD
        )


def system_config(settings: Settings) -> dict[str, object]:
    """What the local Ray is started with: ``SYSTEM_CONFIG``, and whether it collects metrics."""
    return {**SYSTEM_CONFIG, "enable_metrics_collection": settings.ray_metrics}


class LocalRay:
    """A head node on this machine, its processes children of this one (they die with it: Linux's
    parent-death signal, as with ``ray.init()``); ``stop`` ends them."""

    def __init__(self, settings: Settings) -> None:
        from ray._common.usage import usage_lib

        usage_lib.set_usage_stats_enabled_via_env_var(False)  # as ray.init() does (Ray's processes read it)
        if not settings.ray_metrics:  # inherited by the raylet, then its agents
            os.environ["REPORTER_UPDATE_INTERVAL_MS"] = str(REPORTER_INTERVAL_WITHOUT_METRICS_MS)
        params = RayParams(
            include_dashboard=False,
            no_monitor=True,
            include_log_monitor=settings.ray_log_to_driver,  # type: ignore[arg-type]  # a flag Ray annotates as str
            # Ray's default (52365) is taken by any other Ray on the machine, and the agent then
            # retries it for ~3 s before going on without it, delaying the node's start.
            dashboard_agent_listen_port=0,
            _system_config=system_config(settings),  # type: ignore[arg-type]  # Ray annotates str values; it takes JSON's
        )
        self._head = _Head(params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)
        self.address = str(self._head.address)

    def logs_dir(self) -> str:
        """Where its workers (the hosts) write their logs (``worker-*.err`` and ``.out``)."""
        return str(self._head.get_logs_dir_path())  # type: ignore[no-untyped-call]  # Ray leaves it unannotated

    def stop(self) -> None:
        self._head.destroy_external_storage()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
        self._head.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
