"""What the Ray that ``convoy serve`` starts runs (``actors.local_ray``): the processes one machine
needs and no others, Ray's daemons quiet at rest, each node's metrics agent still serving the hosts'
metrics (``CONVOY_RAY_METRICS``, on by default), and, when asked for
(``CONVOY_RAY_LOG_TO_DRIVER``), Ray's log monitor copying the hosts' log lines to serve's output.
What they cost at rest is measured by ``convoy bench idle``, not asserted here."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench import upstream as fp
from bench.idle import command_line, process_name, server_tree
from tests.conftest import TOOLS_ENV, Convoy, provider_env, start_convoy, stop_convoy, wait_until

pytestmark = pytest.mark.slow

EXPORT_TIMEOUT_S = 60.0  # Ray's workers hand their metrics to the agent every 10 s
ONE_MACHINE = Counter(
    {
        "convoy serve (API)": 1,
        "redis (embedded)": 1,
        "gcs_server": 1,
        "raylet": 1,
        "dashboard agent": 1,
        "runtime-env agent": 1,
        "conversation host": 2,
    }
)


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Convoy]:
    """``convoy serve`` with every setting at its default."""
    server = start_convoy(tmp_path_factory.mktemp("lean"))
    yield server
    assert not stop_convoy(server), "processes left behind"


@pytest.fixture(scope="module")
def chatty(tmp_path_factory: pytest.TempPathFactory, fake_provider: fp.FakeProvider) -> Iterator[Convoy]:
    """``convoy serve`` with Ray's log monitor on and metrics off."""
    env = {**provider_env(fake_provider), **TOOLS_ENV, "CONVOY_RAY_LOG_TO_DRIVER": "true", "CONVOY_RAY_METRICS": "false"}
    server = start_convoy(tmp_path_factory.mktemp("chatty"), env)
    yield server
    assert not stop_convoy(server), "processes left behind"


def processes(server: Convoy) -> Counter[str]:
    return Counter(process_name(command_line(pid)) if pid != server.process.pid else "convoy serve (API)" for pid in server_tree(server.process.pid))


def said(server: Convoy, prefix: str) -> str:
    return next(line for line in server.log().splitlines() if line.startswith(prefix))


def test_the_local_ray_runs_what_one_machine_needs_and_nothing_else(lean: Convoy) -> None:
    # No autoscaler monitor, dashboard head or log monitor; no idle worker started for nothing.
    wait_until(lambda: processes(lean) == ONE_MACHINE, 30, interval_s=0.2, message=f"only {dict(ONE_MACHINE)}")


def test_ray_daemons_log_no_error(lean: Convoy) -> None:
    # The agents start before the node registers, well before serve is healthy: an agent looking for a
    # dashboard that is not there (every second, with a traceback) has logged it by now.
    logs = Path(re.split(r"\s+", said(lean, "logs    hosts log to "))[4])
    for name in ("dashboard_agent.log", "runtime_env_agent.log"):
        errors = [line for line in (logs / name).read_text(errors="replace").splitlines() if "\tERROR " in line]
        assert not errors, f"{name}: {errors[:3]}"


def test_the_hosts_metrics_are_served_by_the_local_ray_metrics_agent(lean: Convoy) -> None:
    with httpx.Client(base_url=lean.url, timeout=60) as client:
        agent = client.post("/v1/agents", json={"name": "idle"}).json()
        conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]
        reply = client.post(f"/v1/conversations/{conv}/messages", json={"input": "counted", "streaming": False})
        assert reply.status_code == 200, reply.text
    exporter = re.search(r"http://\S+/metrics", said(lean, "metrics hosts at "))
    assert exporter, lean.log()

    def completed() -> float:
        text = httpx.get(exporter.group(0), timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "ray_convoy_runs_ended_total" and sample.labels.get("status") == "completed"
        )

    assert wait_until(completed, EXPORT_TIMEOUT_S, interval_s=0.5, message="the run in the agent's scrape") == 1


def test_asked_for_the_log_monitor_runs_and_copies_the_hosts_lines_to_serve(chatty: Convoy, fake_provider: fp.FakeProvider) -> None:
    assert processes(chatty) >= Counter({"log monitor": 1}), processes(chatty)
    assert "record none (CONVOY_RAY_METRICS=false)" in said(chatty, "metrics ")
    model = "gpt-idle-note"
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("n1", "note", '{"text": "seen by serve"}')])),
        fp.Stream(fp.chat_text(model, ["noted"])),
    )
    with httpx.Client(base_url=chatty.url, timeout=60) as client:
        agent = client.post("/v1/agents", json={"name": "idle", "model": f"openai/{model}", "tools": ["note"]}).json()
        conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()["id"]
        reply = client.post(f"/v1/conversations/{conv}/messages", json={"input": "take a note", "streaming": False})
        assert reply.status_code == 200, reply.text
    # Ray's log monitor prefixes each copied line with the worker it came from.
    wait_until(
        lambda: any("ConversationHost" in line and "note taken" in line for line in chatty.log().splitlines()),
        30,
        interval_s=0.2,
        message="the host's log line in serve's output",
    )
