"""The chat page at ``/``, used as a person uses it, in real headless Chromium.

Each test drives the page served by a real ``convoy serve`` (models: the fake provider, paced so an
answer takes seconds; tools: ``tests/fakes/tools.py``) and writes a screenshot of each state it
reaches (``tests/e2e/conftest.py`` prints where). What is checked is what the page shows: the
answer's text exactly once (a gap or a repeat would change it), the cards, the run's footer, and
the run's outcome through the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from bench import upstream as fp
from tests.conftest import Convoy
from tests.e2e.conftest import Shot
from tests.integration.test_providers import unique

PIECE_PAUSE_S = 0.08  # between streamed pieces: under the tests' provider idle timeout (2 s)
WAIT_MS = 30_000


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i} " for i in range(n)]


def make_agent(client: httpx.Client, model: str, **agent: Any) -> str:
    """A new agent on the fake provider's ``model`` (script it first)."""
    body = {"name": "Atlas", "model": f"openai/{model}", "system": "You are helpful.", **agent}
    created = client.post("/v1/agents", json=body)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def paced_text(model: str, pieces: list[str], reasoning: tuple[str, ...] = ()) -> fp.Stream:
    return fp.Stream(fp.paced(fp.chat_text(model, pieces, reasoning=reasoning), PIECE_PAUSE_S))


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def api(convoy: Convoy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        yield client


def answer(page: Page, index: int = -1) -> str:
    texts = page.locator(".turn.assistant").nth(index).locator(".text").all_inner_texts()
    return "".join(texts)


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def conversation_of(page: Page) -> str:
    match = re.search(r"(conv-[0-9a-f-]{36})", page.url)
    assert match, page.url
    return match.group(1)


def test_send_and_watch_the_answer_stream_in(page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot) -> None:
    pieces = words(40, "token")
    model = unique("page")
    fake_provider.script(model, paced_text(model, pieces, reasoning=("Let me ", "think about ", "the question.")))
    agent = make_agent(api, model)
    page.goto(f"{convoy.url}/#/{agent}")
    expect(page.locator("#title")).to_have_text("Atlas")
    expect(page.locator("#subtitle")).to_contain_text(f"openai/{model}")
    shot(page, "agent-open")

    send(page, "Tell me how Convoy streams.")
    expect(page.locator(".turn.user .bubble")).to_have_text("Tell me how Convoy streams.")
    expect(page.locator(".turn.assistant .text")).to_contain_text("token3", timeout=WAIT_MS)
    expect(page.locator("#run-state")).to_have_text("Streaming")
    assert answer(page) != "".join(pieces), "the answer is still streaming"
    shot(page, "streaming")

    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page) == "".join(pieces)
    reasoning = page.locator("details.reasoning")
    expect(reasoning).to_have_count(1)
    assert reasoning.get_attribute("open") is None, "reasoning is folded"
    expect(page.locator(".run-foot")).to_contain_text("end turn")
    expect(page.locator(".run-foot")).to_contain_text("first token")
    expect(page.locator(".run-foot")).to_contain_text("out tokens")
    expect(page.locator("#run-state")).to_be_hidden()
    reasoning.locator("summary").click()
    expect(reasoning).to_contain_text("think about the question.")
    shot(page, "done")

    # The conversation is on record: a fresh load shows it the same way, from the history.
    page.reload()
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page) == "".join(pieces)
    expect(page.locator(".turn.user")).to_have_count(1)
