"""A host loads the SDKs of the providers it can call while it sets up, not on a turn's path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]


def _loaded_after_warm(env: dict[str, str]) -> list[str]:
    code = (
        "import asyncio, sys, runtime.providers.registry as r, runtime.settings as s\n"
        "async def main():\n"
        "    r.Providers(s.Settings()).warm()\n"  # aiohttp clients are made on a running loop, as in a host
        "asyncio.run(main())\n"
        "print(json.dumps(sorted(m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules)))"
    )
    clean = {"PATH": "/usr/bin:/bin", **env}  # no credentials but those given
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True, cwd=ROOT, env=clean)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_sdks_of_configured_providers_are_loaded_and_no_others() -> None:
    local = {"CONVOY_PROVIDERS": json.dumps({"local": {"base_url": "http://127.0.0.1:9/v1"}})}
    assert _loaded_after_warm(local) == ["openai"]
    assert _loaded_after_warm({"ANTHROPIC_API_KEY": "sk-ant-test"}) == ["anthropic"]


def test_an_echo_only_host_loads_none() -> None:
    assert _loaded_after_warm({}) == []
