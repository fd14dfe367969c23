"""The code's shape, enforced: which room may import and change what (see ARCHITECTURE.md).

- Dependencies point one way: ``cli -> api -> actors -> runtime``; ``bench`` is a client of them
  all, and only the ``convoy`` command (``cli/``, the composition root) reaches into it; nothing
  imports ``cli``.
- Inside ``runtime/``: the provider adapters know nothing of the store, the streams or the agent
  loop; the store knows nothing of the agent loop, the tools or the providers; ``runtime.letta``
  (Letta's semantics over the stores) stands above them all, and none of them knows it.
- ``ray`` is imported only under ``actors/`` (and by the benchmarks).
- Redis keys are spelled only in ``runtime/store/keyspace.py``.
- No route writes a run's state or a conversation's history, or reaches a conversation but
  through ``actors.client``.
- The provider SDKs are loaded only by a process that calls a provider; the lint rules pass.
- The code type-checks: mypy as ``[tool.mypy]`` in pyproject.toml sets it (strict on ``runtime`` and
  ``actors``, mypy's default checks on ``api`` and ``cli``; every ``type: ignore`` names its error and is needed).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "actors", "api", "cli", "bench")
KEY_LITERAL = re.compile(r"[\"']convoy:[^\s\"']|\{PREFIX\}")
KEYSPACE = ROOT / "runtime" / "store" / "keyspace.py"

# (importing module prefix, imported module prefix) pairs that are refused.
FORBIDDEN = [
    ("runtime", "actors"),
    ("runtime", "api"),
    ("runtime", "bench"),
    ("runtime", "cli"),
    ("actors", "api"),
    ("actors", "bench"),
    ("actors", "cli"),
    ("api", "bench"),
    ("api", "cli"),
    ("bench", "cli"),
    ("runtime.providers", "runtime.store"),
    ("runtime.providers", "runtime.stream"),
    ("runtime.providers", "runtime.agent"),
    ("runtime.providers", "runtime.tools"),
    ("runtime.store", "runtime.agent"),
    ("runtime.store", "runtime.tools"),
    ("runtime.store", "runtime.providers"),
    *((room, "runtime.letta") for room in ("runtime.store", "runtime.stream", "runtime.agent", "runtime.tools", "runtime.providers", "runtime.schemas")),
]
# What only the conversations' door may touch: the mailbox, the directory, the router, the hosts.
CONVERSATION_INTERNALS = ("actors.mailbox", "actors.directory", "actors.router", "actors.host", "actors.conversation")
RUN_WRITES = re.compile(r"\bruns\.(end|_finish|request_cancel|add_step|start)\(|\bhistory\.(append|seed|forget)\(")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found.append((name, path))
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_dependencies_point_one_way() -> None:
    violations = []
    for module, path in _modules():
        for imported in _imports(path):
            for importer, banned in FORBIDDEN:
                if _within(module, importer) and _within(imported, banned):
                    violations.append(f"{path.relative_to(ROOT)} imports {imported} ({importer} may not use {banned})")
    assert not violations, "\n".join(sorted(set(violations)))


def test_ray_is_imported_only_by_the_actors_and_the_benchmarks() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {imported}"
        for module, path in _modules()
        if not (_within(module, "actors") or _within(module, "bench"))
        for imported in _imports(path)
        if _within(imported, "ray")
    ]
    assert not offenders, offenders


def test_only_the_keyspace_module_spells_redis_keys() -> None:
    offenders = [
        str(path.relative_to(ROOT)) for _, path in _modules() if path != KEYSPACE and KEY_LITERAL.search(path.read_text())
    ]
    assert not offenders, offenders


def test_the_api_reaches_conversations_only_through_their_door() -> None:
    offenders = []
    for module, path in _modules():
        if not _within(module, "api"):
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)} imports {i}" for i in _imports(path) if i.startswith(CONVERSATION_INTERNALS)]
        offenders += [f"{path.relative_to(ROOT)} writes a run or a history: {m.group(0)}" for m in RUN_WRITES.finditer(text)]
    assert not offenders, "\n".join(offenders)


def test_processes_that_never_call_a_provider_never_load_its_sdk() -> None:
    """The provider SDKs take seconds to import; the API and echo-only hosts skip them."""
    code = (
        "import sys, actors.host, api.app, runtime.providers.registry as r, runtime.settings as s\n"
        "r.Providers(s.Settings()).model('echo/echo')\n"
        "print(sorted(m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_lint_rules_pass() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_types_check() -> None:
    """Cold (no ``.mypy_cache``, as in CI) this takes about 30 s of CPU; warm, a few seconds."""
    out = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
