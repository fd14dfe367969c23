"""The code's shape: the dependency direction api -> actors -> runtime holds (and runtime imports
neither), Redis keys are spelled in one module, and the lint rules in pyproject.toml pass."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY_LITERAL = re.compile(r"[\"']convoy:[^\s\"']")
FORBIDDEN = {"runtime": {"actors", "api"}, "actors": {"api"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_point_one_way() -> None:
    violations = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(path) & banned
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_only_keys_module_spells_redis_keys() -> None:
    offenders = []
    for package in ("runtime", "actors", "api"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "keys.py":
                continue
            if KEY_LITERAL.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


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
