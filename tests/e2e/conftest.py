"""A real browser for the end-to-end tests: Debian's ``chromium``, driven by Playwright through
``executable_path`` (Playwright never downloads a browser here). ``.ci/run`` installs Chromium;
outside CI the browser tests are skipped when it is absent.

Tests that look at the chat page write screenshots of each state to one directory per session
(``$CONVOY_SCREENSHOTS`` if set, else under pytest's temporary directory), printed at the end of
the run, so a person can look at what the page showed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_written: list[Path] = []


@pytest.fixture
def browser_available() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must install it")
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: Playwright's sync API holds an event loop on the main thread while it runs, and
    no asyncio test can run until it stops."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must install it")
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CONVOY_SCREENSHOTS")
    where = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


Shot = Callable[[Page, str], Path]


@pytest.fixture
def shot(screenshot_dir: Path, request: pytest.FixtureRequest) -> Shot:
    """``shot(page, "state")`` saves the page as ``<test>-<n>-<state>.png`` and returns the path."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    count = [0]

    def take(page: Page, state: str) -> Path:
        count[0] += 1
        path = screenshot_dir / f"{test}-{count[0]:02d}-{state}.png"
        page.screenshot(path=path)
        _written.append(path)
        return path

    return take


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _written:
        terminalreporter.write_line(f"chat page screenshots ({len(_written)}): {_written[0].parent}")
