"""The chat page ships in the package: every file under ``api/static/`` matches a ``package-data``
pattern of pyproject.toml, so ``pip install .`` (not only an editable install) serves the page."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_static_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    static = ROOT / "api" / "static"
    files = [p.relative_to(ROOT / "api").as_posix() for p in static.rglob("*") if p.is_file()]
    assert "static/index.html" in files
    missing = [f for f in files if not any(fnmatch(f, pattern) and f.count("/") == pattern.count("/") for pattern in patterns)]
    assert not missing, f"not shipped by pip install .: {missing}; add them to [tool.setuptools.package-data]"
