"""The README's own examples, run as a newcomer runs them, against a real ``convoy serve``.

The quickstart's curl commands run in bash, the Letta SDK example in Python, both as written but
for the address (the test server listens on a free port); what they print is compared with what
the README shows. A README that drifts from the server fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import Convoy

README = Path(__file__).resolve().parents[2] / "README.md"
FIELD = re.compile(r'"(\w+)":("(?:[^"\\]|\\.)*"|-?\d+|true|false|null)')


def fences(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of ``text``: (language, body), in order."""
    found: list[tuple[str, str]] = []
    language: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if language is None and line.startswith("```"):
            language, body = line[3:].strip(), []
        elif language is not None and line.startswith("```"):
            found.append((language, "\n".join(body) + "\n"))
            language = None
        elif language is not None:
            body.append(line)
    return found


def quickstart(language: str, containing: str) -> str:
    """The Quickstart's first code block of ``language`` that contains ``containing``."""
    text = README.read_text()
    section = text[text.index("## Quickstart") : text.index("## What works today")]
    return next(body for lang, body in fences(section) if lang == language and containing in body)


def shown_events(block: str) -> list[tuple[int, dict[str, object] | str]]:
    """The events an example stream shows: (id, the fields shown in full, or "[DONE]"). Values with
    an ellipsis (ids, dates) and elided events stand for anything."""
    events: list[tuple[int, dict[str, object] | str]] = []
    for chunk in block.strip().split("\n\n"):
        lines = [line for line in chunk.splitlines() if line != "…"]
        ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
        data = [line[6:] for line in lines if line.startswith("data: ")]
        if not ids or not data:
            continue
        if data[0] == "[DONE]":
            events.append((ids[0], "[DONE]"))
            continue
        fields = {key: json.loads(value) for key, value in FIELD.findall(data[0]) if "…" not in value}
        events.append((ids[0], fields))
    return events


def received_events(output: str) -> dict[int, dict[str, object] | str]:
    events: dict[int, dict[str, object] | str] = {}
    for chunk in output.strip().split("\n\n"):
        lines = chunk.splitlines()
        ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
        data = [line[6:] for line in lines if line.startswith("data: ")]
        if ids and data:
            events[ids[0]] = "[DONE]" if data[0] == "[DONE]" else json.loads(data[0])
    return events


def local(code: str, convoy: Convoy) -> str:
    port = convoy.url.rsplit(":", 1)[1]
    return code.replace("localhost:8283", f"127.0.0.1:{port}").replace("127.0.0.1:8283", f"127.0.0.1:{port}")


def test_the_quickstart_curl_session_prints_what_the_readme_shows(convoy: Convoy) -> None:
    curl = quickstart("bash", "curl")
    shown = quickstart("", "id: 1")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", local(curl, convoy)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    received = received_events(run.stdout)
    expected = shown_events(shown)
    assert expected and max(received) == expected[-1][0], f"the stream has {max(received)} events, the README shows {expected[-1][0]}"
    for seq, fields in expected:
        got = received[seq]
        if fields == "[DONE]":
            assert got == "[DONE]"
            continue
        assert isinstance(got, dict) and isinstance(fields, dict)
        assert {k: got.get(k) for k in fields} == fields, f"event {seq}: the README shows {fields}, the server sent {got}"


def test_the_quickstart_letta_sdk_example_runs_and_prints_what_it_says(convoy: Convoy) -> None:
    example = quickstart("python", "letta_client")
    run = subprocess.run([sys.executable, "-c", local(example, convoy)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    said = re.search(r"#\s*(.+)$", example.strip().splitlines()[-1])
    assert said is not None
    assert run.stdout.startswith("hello from convoy") and run.stdout.split()[-2:] == said.group(1).split()


def test_the_readme_cursor_rules_hold(convoy: Convoy) -> None:
    """What "Cursors are checked before anything is sent" says, on a finished run of the quickstart's size."""
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        agent = client.post("/v1/agents", json={"name": "cursors"}).json()
        conv = client.post("/v1/conversations", params={"agent_id": agent["id"]}).json()
        reply = client.post(f"/v1/conversations/{conv['id']}/messages", json={"input": "hello from convoy", "streaming": False})
        run_id = reply.json()["messages"][0]["run_id"]
        for cursor, status in ((-1, 422), (2**53 + 1, 422), (10**12, 400)):
            answer = client.post(f"/v1/runs/{run_id}/stream", json={"starting_after": cursor})
            assert answer.status_code == status, (cursor, answer.text)
