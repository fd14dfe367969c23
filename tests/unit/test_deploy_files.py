"""The deployment files say only what the code understands.

``cluster.yaml`` (Ray's cluster launcher) passes Ray's own validator; ``raycluster.yaml`` (KubeRay) is a
RayCluster for the Ray Convoy pins. In both, every ``convoy ...`` command parses with the ``convoy``
command line, every ``ray start`` with Ray's, every ``CONVOY_*`` name (comments included) is a setting of
``runtime/settings.py`` and every value they give one is accepted by it; so renaming a flag or a
setting fails here. The Grafana dashboard (``deploy/grafana/convoy.json``) queries only metrics the code
exports, and every metric the hosts export.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from pydantic import AliasChoices
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import start as ray_start

from cli.main import _parser
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYCLUSTER_YAML = ROOT / "raycluster.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "convoy.json"
SETTING = re.compile(r"\bCONVOY_[A-Z0-9_]+")
ASSIGNMENT = re.compile(r"\b(CONVOY_[A-Z0-9_]+)=(\S+?)'?$", re.MULTILINE)
METRIC = re.compile(r"\b(?:ray_)?convoy_[a-z_]+")
DEFINED_METRIC = re.compile(r"(?:Counter|Gauge|Histogram|MetricFamily)\(\s*\"(convoy_[a-z_]+)\"")


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def commands(shell: str, program: str) -> Iterator[list[str]]:
    """The arguments of every ``program`` invocation in a shell command line (by name or by path),
    each up to the next operator or redirection. A single word is a name (``cluster_name: convoy``)."""
    if not shell.strip() or len(shell.split()) == 1:
        return
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    for i, token in enumerate(tokens):
        if token == program or token.endswith(f"/{program}"):
            args = []
            for arg in tokens[i + 1 :]:
                if set(arg) <= set("();<>|&"):
                    break
                args.append(arg)
            yield args


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def known_settings() -> set[str]:
    """Every environment variable ``Settings`` reads."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(f"CONVOY_{name.upper()}")
    return names


def given_settings(path: Path) -> dict[str, str]:
    """The CONVOY_* values a file sets: `export NAME=value` lines and Kubernetes ConfigMaps and env."""
    values = dict(ASSIGNMENT.findall(path.read_text()))
    for doc in documents(path):
        if doc.get("kind") == "ConfigMap":
            values.update({k: v for k, v in doc["data"].items() if k.startswith("CONVOY_")})
        for text in strings(doc) if doc.get("kind") == "RayCluster" else ():
            assert "CONVOY_" not in text or text.startswith("CONVOY_"), f"a setting inside a command: {text}"
    return values


def pod_templates(raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = raycluster["spec"]
    return [spec["headGroupSpec"]["template"], *(group["template"] for group in spec["workerGroupSpecs"])]


# -- cluster.yaml ---------------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_validation() -> None:
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)
    assert config["provider"]["worker_ips"], "workers are declared"
    commands_ = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "convoy serve" in commands_ and "convoy api" in commands_, "API replicas are started on every node"
    assert "RAY_REDIS_ADDRESS" in " ".join(config["initialization_commands"]), "GCS fault tolerance is on"
    assert any("pip install" in c and "convoy" in c for c in config["setup_commands"])
    starts = [args for line in config["head_start_ray_commands"] + config["worker_start_ray_commands"] for args in commands(line, "ray")]
    assert all("--metrics-export-port=8080" in args for args in starts if args[0] == "start"), "a known metrics port on every node"


# -- raycluster.yaml -------------------------------------------------------------------------------------


def test_raycluster_runs_the_hosts_and_api_replicas_on_the_pinned_ray() -> None:
    docs = {doc["kind"]: doc for doc in documents(RAYCLUSTER_YAML)}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == ray.__version__
    for template in pod_templates(cluster):
        containers = template["spec"]["containers"]
        ports = {p["name"] for c in containers for p in c.get("ports", ())}
        assert {"metrics", "api"} <= ports, "every Pod serves its node's metrics and an API replica"
        assert all(c["image"] == containers[0]["image"] for c in containers), "one image: Ray with Convoy installed"
        # The API container joins its Pod's Ray node through the Ray temp dir they share.
        mounts = [{m["mountPath"] for m in c.get("volumeMounts", ())} for c in containers]
        assert all("/tmp/ray" in m for m in mounts)
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in docs["Service"]["spec"]["selector"].items() if k != "ray.io/cluster")
    head, *workers = [[args for s in strings(t) for args in commands(s, "convoy")] for t in pod_templates(cluster)]
    assert [args[0] for args in head] == ["serve"] and all([args[0] for args in w] == ["api"] for w in workers)
    assert {e["port"] for e in docs["PodMonitor"]["spec"]["podMetricsEndpoints"]} == {"metrics", "api"}


def test_raycluster_ray_start_params_are_ray_start_options() -> None:
    cluster = next(doc for doc in documents(RAYCLUSTER_YAML) if doc["kind"] == "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        params = group["rayStartParams"]
        ray_start.make_context("ray start", [f"--{key}={value}" for key, value in params.items()])
        assert params["metrics-export-port"] == "8080"


# -- both -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CLUSTER_YAML, RAYCLUSTER_YAML], ids=["cluster.yaml", "raycluster.yaml"])
def test_every_convoy_and_ray_command_parses(path: Path) -> None:
    found: dict[str, list[list[str]]] = {"convoy": [], "ray": []}
    for doc in documents(path):
        for text in strings(doc):
            for program in found:
                found[program] += commands(text, program)
    assert {"serve", "api"} <= {args[0] for args in found["convoy"]}
    for args in found["convoy"]:
        try:
            _parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{path.name}: `convoy {shlex.join(args)}` is not a command convoy takes")
    for args in found["ray"]:
        if args[0] == "start":
            ray_start.make_context("ray start", args[1:])


@pytest.mark.parametrize("path", [CLUSTER_YAML, RAYCLUSTER_YAML], ids=["cluster.yaml", "raycluster.yaml"])
def test_every_convoy_setting_named_is_one_the_code_reads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = set(SETTING.findall(path.read_text()))
    assert "CONVOY_REDIS_URL" in named
    unknown = named - known_settings()
    assert not unknown, f"{path.name} names settings runtime/settings.py does not read: {sorted(unknown)}"
    given = given_settings(path)
    assert given, "the file sets settings"
    for name in known_settings():
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_url == given["CONVOY_REDIS_URL"] and settings.log_json


# -- the Grafana dashboard --------------------------------------------------------------------------------


def test_the_dashboard_queries_what_the_code_exports_and_shows_every_host_metric() -> None:
    hosts = set(DEFINED_METRIC.findall((ROOT / "actors" / "metrics.py").read_text()))
    apis = set(DEFINED_METRIC.findall((ROOT / "api" / "metrics.py").read_text()))
    assert len(hosts) >= 10 and apis
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    queried = {m for e in exprs for m in METRIC.findall(e)}

    def base(name: str) -> str:
        return re.sub(r"_(bucket|count|sum)$", "", name)

    for name in queried:
        if name.startswith("ray_"):
            assert base(name.removeprefix("ray_")) in hosts, f"the hosts export no {name}"
        else:
            assert base(name) in apis or name.removesuffix("_total") in apis, f"the API exports no {name}"
    shown = {base(n.removeprefix("ray_")) for n in queried if n.startswith("ray_")}
    assert shown == hosts, f"host metrics missing from the dashboard: {sorted(hosts - shown)}"
