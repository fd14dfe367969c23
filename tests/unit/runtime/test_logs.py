"""Log lines carry what they concern by themselves (``runtime.logs``): fields bound for a block or a
task reach every line logged meanwhile, in tasks and threads started from it, and no line after."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from runtime.logs import bind, configure_logging, log_context
from runtime.settings import Settings

log = logging.getLogger("tests.logs")


@pytest.fixture
def json_logs() -> Iterator[None]:
    """Convoy's handler in JSON (configured in the test, to write to its captured stderr), removed after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _read(capsys: pytest.CaptureFixture[str]) -> dict[object, dict[str, object]]:
    """The JSON lines written, by message."""
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return {line["msg"]: line for line in lines}


async def test_bound_fields_reach_every_line_of_the_block_and_what_it_starts(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_json=True))

    async def in_a_task() -> None:
        log.info("from a task")

    with log_context(run_id="run-1", conversation_id="conv-1"):
        with log_context(tenant="acme"):  # added once known
            log.info("inside")
            await asyncio.create_task(in_a_task())
            await asyncio.to_thread(log.info, "from a thread")
            log.info("explicit", extra={"run_id": "run-other"})
        log.info("tenant block left")
    log.info("outside")
    got = _read(capsys)
    for msg in ("inside", "from a task", "from a thread"):
        assert (got[msg]["run_id"], got[msg]["conversation_id"], got[msg]["tenant"]) == ("run-1", "conv-1", "acme"), msg
    assert got["explicit"]["run_id"] == "run-other", "a field given in extra wins"
    assert "tenant" not in got["tenant block left"] and got["tenant block left"]["run_id"] == "run-1"
    assert not {"run_id", "conversation_id", "tenant"} & set(got["outside"])


async def test_bind_lasts_to_the_end_of_its_task_only(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_json=True))

    async def request() -> None:
        bind(tenant="acme", run_id=None)  # None: left out
        log.info("in the request")

    await asyncio.create_task(request())
    log.info("after the request")
    got = _read(capsys)
    assert got["in the request"]["tenant"] == "acme" and "run_id" not in got["in the request"]
    assert "tenant" not in got["after the request"]
