"""The chat page at ``/``, used as a person uses it, in real headless Chromium.

Each test drives the page served by a real ``convoy serve`` (models: the fake provider, paced so an
answer takes seconds; tools: ``tests/fakes/tools.py``) and writes a screenshot of each state it
reaches (``tests/e2e/conftest.py`` prints where). What is checked is what the page shows: the
answer's text exactly once (a gap or a repeat would change it), the cards, the run's footer, and
the run's outcome through the API.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from bench import upstream as fp
from bench import wait_until
from tests.conftest import Convoy, KeyedConvoy
from tests.e2e.conftest import CHROMIUM, Shot
from tests.fakes.proxy import Outages
from tests.integration.test_providers import unique

PIECE_PAUSE_S = 0.08  # between streamed pieces: under the tests' provider idle timeout (2 s)
WAIT_MS = 30_000
POLL_MS = 2000  # api/static/js/app.js: how often the page looks for turns sent elsewhere


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i} " for i in range(n)]


def make_agent(client: httpx.Client, handle: str, **agent: Any) -> str:
    """A new agent on model ``handle`` (script the fake provider's model first)."""
    body = {"name": "Atlas", "model": handle, "system": "You are helpful.", **agent}
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
    model = unique("gpt-4o")
    fake_provider.script(model, paced_text(model, pieces, reasoning=("Let me ", "think about ", "the question.")))
    agent = make_agent(api, f"openai/{model}")
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
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
    elsewhere = [url for url in fetched if not url.startswith((convoy.url, "data:"))]
    assert not elsewhere, f"the page must work offline, yet it fetched {elsewhere}"
    page.emulate_media(color_scheme="dark")
    shot(page, "done-dark")
    page.emulate_media(color_scheme="light")

    # The conversation is on record: a fresh load shows it the same way, from the history.
    page.reload()
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page) == "".join(pieces)
    expect(page.locator(".turn.user")).to_have_count(1)


def test_a_reload_mid_answer_picks_up_the_running_stream(
    page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot
) -> None:
    pieces = words(70)
    model = unique("gpt-4o")
    fake_provider.script(model, paced_text(model, pieces))
    agent = make_agent(api, f"openai/{model}", name="Counter")
    page.goto(f"{convoy.url}/#/{agent}")
    send(page, "Count for me.")
    expect(page.locator(".turn.assistant .text")).to_contain_text("w5", timeout=WAIT_MS)
    shot(page, "before-reload")

    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.reload()
    expect(page.locator(".turn.assistant .text")).to_contain_text("w1", timeout=WAIT_MS)
    expect(page.locator("#run-state")).to_have_text("Streaming")
    assert answer(page) != "".join(pieces), "picked up while the answer was still streaming"
    shot(page, "after-reload-streaming")
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    shot(page, "after-reload-done")

    assert answer(page) == "".join(pieces), "every piece once: no gap, no repeat"
    expect(page.locator(".turn.user")).to_have_count(1)
    expect(page.locator(".turn.assistant")).to_have_count(1)
    conversation = conversation_of(page)
    assert any(f"/v1/runs?conversation_id={conversation}&active=true" in url for url in asked), asked
    assert any(re.search(r"/v1/runs/run-[0-9a-f-]{36}/stream\?token=cvst-", url) for url in asked), asked


def test_two_tabs_show_the_same_live_answer(
    page: Page, browser: Browser, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot
) -> None:
    first, second = words(60, "a"), words(40, "b")
    model = unique("gpt-4o")
    fake_provider.script(model, paced_text(model, first), paced_text(model, second))
    agent = make_agent(api, f"openai/{model}", name="Narrator")
    page.goto(f"{convoy.url}/#/{agent}")
    send(page, "First question")
    expect(page.locator(".turn.assistant .text")).to_contain_text("a3", timeout=WAIT_MS)

    other = browser.new_context(viewport={"width": 1280, "height": 820})
    try:
        tab = other.new_page()
        tab.goto(page.url)
        expect(tab.locator("#run-state")).to_have_text("Streaming", timeout=WAIT_MS)
        expect(tab.locator(".turn.assistant .text")).to_contain_text("a10", timeout=WAIT_MS)
        assert answer(tab) != "".join(first), "the second tab joined while the answer streamed"
        shot(page, "tab-one-live")
        shot(tab, "tab-two-live")
        for each in (page, tab):
            expect(each.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
            assert answer(each) == "".join(first)

        # A message sent from the second tab streams live in the first one too.
        send(tab, "Second question")
        expect(page.locator(".turn.assistant").nth(1).locator(".text")).to_contain_text("b2", timeout=WAIT_MS)
        assert answer(page, 1) != "".join(second), "the first tab follows it live"
        for each in (page, tab):
            expect(each.locator(".run-foot").nth(1)).to_contain_text("completed", timeout=WAIT_MS)
            assert answer(each, 1) == "".join(second)
        expect(page.locator(".turn.user")).to_have_count(2)
        shot(page, "tab-one-after-second-question")
    finally:
        other.close()


def test_approve_a_tool_call(page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot) -> None:
    model = unique("gpt-4o")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("t1", "transfer", '{"amount": 5,', ' "to": "bob"}')], content=["I'll ", "send ", "it now."])),
        paced_text(model, ["Done: ", "5 ", "went ", "to ", "Bob."]),
    )
    agent = make_agent(api, f"openai/{model}", tools=["transfer", "add"], name="Treasurer")
    page.goto(f"{convoy.url}/#/{agent}")
    send(page, "Pay Bob 5.")
    card = page.locator(".card.approval")
    expect(card.locator("button", has_text="Approve")).to_be_visible(timeout=WAIT_MS)
    expect(card.locator(".tool-name")).to_have_text("transfer")
    expect(card.locator(".args")).to_contain_text('"to": "bob"')
    expect(page.locator("#run-state")).to_have_text("Waiting for your approval")
    expect(page.locator(".run-foot")).to_contain_text("requires approval")
    shot(page, "approval-requested")

    send(page, "Are you there?")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner-title")).to_have_text("Answer the approval request first")
    expect(page.locator("#banner-detail")).to_contain_text("Please approve or deny the pending request")
    shot(page, "message-refused-while-pending")
    page.fill("#input", "")

    card.locator("button", has_text="Approve").click()
    expect(card.locator(".decision")).to_have_text("Approved")
    expect(card.locator(".card-result")).to_contain_text("sent 5 to bob", timeout=WAIT_MS)
    expect(page.locator(".turn.assistant").nth(1).locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page, 0) == "I'll send it now." and answer(page, 1) == "Done: 5 went to Bob."
    shot(page, "approved")

    runs = api.get("/v1/runs", params={"conversation_id": conversation_of(page)}).json()
    assert [(r["status"], r["stop_reason"]) for r in runs] == [("completed", "end_turn"), ("completed", "requires_approval")]
    page.reload()  # from the history: the decision and the result, no buttons
    expect(page.locator(".card.approval .decision")).to_have_text("Approved", timeout=WAIT_MS)
    expect(page.locator(".card.approval .card-result")).to_contain_text("sent 5 to bob")
    expect(page.locator(".card.approval button")).to_have_count(0)


def test_deny_a_tool_call_with_a_reason(page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot) -> None:
    model = unique("gpt-4o")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("t1", "transfer", '{"amount": 900, "to": "eve"}')])),
        fp.Stream(fp.chat_text(model, ["Understood, ", "no transfer."])),
    )
    agent = make_agent(api, f"openai/{model}", tools=["transfer"], name="Cashier")
    page.goto(f"{convoy.url}/#/{agent}")
    send(page, "Pay Eve 900.")
    card = page.locator(".card.approval")
    card.locator("button", has_text="Deny…").click(timeout=WAIT_MS)
    card.locator("input.reason").fill("too much")
    shot(page, "deny-with-reason")
    card.locator("button.danger", has_text="Deny").click()
    expect(card.locator(".decision")).to_have_text("Denied: too much")
    expect(card.locator(".card-result .status")).to_have_text("Error", timeout=WAIT_MS)
    expect(card.locator(".card-result")).to_contain_text("too much")
    expect(page.locator(".turn.assistant").nth(1).locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page, 1) == "Understood, no transfer."
    denial = fake_provider.calls(model)[-1].body["messages"][-1]
    assert denial["role"] == "tool" and "too much" in denial["content"]
    shot(page, "denied")


def test_stop_cancels_the_answer_at_once(page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot) -> None:
    pieces = words(300)
    model = unique("gpt-4o")
    fake_provider.script(model, paced_text(model, pieces))
    agent = make_agent(api, f"openai/{model}", name="Storyteller")
    page.goto(f"{convoy.url}/#/{agent}")
    send(page, "Go on for a while.")
    expect(page.locator(".turn.assistant .text")).to_contain_text("w5", timeout=WAIT_MS)
    shot(page, "before-stop")
    page.click("#stop")
    expect(page.locator(".run-foot")).to_contain_text("cancelled", timeout=WAIT_MS)
    expect(page.locator("#stop")).to_be_hidden()
    shot(page, "stopped")

    (run,) = api.get("/v1/runs", params={"conversation_id": conversation_of(page)}).json()
    assert (run["status"], run["stop_reason"]) == ("cancelled", "cancelled")
    call = fake_provider.calls(model)[0]
    assert call.disconnected.wait(10), "the model's stream was closed"
    assert len(answer(page).split()) < len(pieces) // 2, "the answer stopped at once"


def test_errors_are_shown_as_messages(page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot) -> None:
    model = unique("gpt-4o")
    fake_provider.script(model, fp.openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded"), repeat=True)
    agent = make_agent(api, f"openai/{model}", name="Limited")
    page.goto(f"{convoy.url}/#/{agent}")
    send(page, "Hello?")
    error = page.locator(".card.error")
    expect(error).to_have_attribute("data-error-type", "llm_rate_limit", timeout=WAIT_MS)
    expect(error).to_contain_text("The model provider is rate limiting requests")
    expect(error).to_contain_text("Rate limit reached")
    expect(page.locator(".run-foot")).to_contain_text("failed")
    shot(page, "provider-rate-limited")

    down = make_agent(api, "unreachable/model", name="Unreachable")
    page.goto(f"{convoy.url}/#/{down}")
    expect(page.locator("#title")).to_have_text("Unreachable")
    send(page, "Hello?")
    expect(page.locator(".card.error")).to_contain_text("The model provider is unavailable", timeout=WAIT_MS)
    shot(page, "provider-down")

    page.goto(f"{convoy.url}/#/agent-00000000-0000-4000-8000-000000000000")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner-title")).to_have_text("Not found")
    shot(page, "unknown-agent")


def test_with_keys_on_the_page_asks_for_a_key_once_per_tab(
    page: Page, keyed_convoy: KeyedConvoy, fake_provider: fp.FakeProvider, shot: Shot
) -> None:
    model = unique("gpt-4o")
    fake_provider.script(model, paced_text(model, words(30, "k")))
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        agent = make_agent(acme, f"openai/{model}", name="Keyed")
    page.goto(f"{keyed_convoy.url}/#/{agent}")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("This server needs an API key")
    shot(page, "key-asked")
    page.fill("#key-input", "cvy-wrong")
    page.click("#key-dialog button")
    expect(page.locator("#key-reason")).to_contain_text("That key was refused")
    page.fill("#key-input", keyed_convoy.acme)
    page.click("#key-dialog button")
    expect(page.locator("#title")).to_have_text("Keyed")

    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    send(page, "Hello with a key")
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page) == "".join(words(30, "k"))
    streams = [url for url in asked if re.search(r"/v1/runs/run-[0-9a-f-]{36}/stream\?", url)]
    assert streams and all("token=cvst-" in url for url in streams), streams
    shot(page, "keyed-answer")

    page.reload()  # the key is kept for the tab
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    expect(dialog).to_be_hidden()


def test_redis_unreachable_is_said_in_words(page: Page, keyed_convoy: KeyedConvoy, shot: Shot) -> None:
    with keyed_convoy.client(keyed_convoy.globex) as globex:
        agent = make_agent(globex, "echo/echo", name="Patient")
    page.goto(f"{keyed_convoy.url}/#/{agent}")
    page.fill("#key-input", keyed_convoy.globex)
    page.click("#key-dialog button")
    expect(page.locator("#title")).to_have_text("Patient")

    redis_pid = int((keyed_convoy.server.home / "redis" / "server.pid").read_text())
    os.kill(redis_pid, signal.SIGSTOP)  # frozen: requests meet timeouts, not refusals
    try:
        page.click("#new-conversation")
        expect(page.locator("#banner-title")).to_have_text("Convoy is unavailable", timeout=WAIT_MS)
        expect(page.locator("#banner-detail")).to_contain_text("store (Redis) is unreachable")
        shot(page, "redis-unreachable")
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    page.click("#banner-close")
    page.click("#new-conversation")  # Redis is back: the same click works
    expect(page).to_have_url(re.compile(r"conv-[0-9a-f-]{36}$"), timeout=WAIT_MS)
    expect(page.locator("#banner")).to_be_hidden()


def test_create_an_agent_and_move_between_its_conversations(page: Page, convoy: Convoy, shot: Shot) -> None:
    page.goto(convoy.url)
    page.click("#new-agent")
    dialog = page.locator("#agent-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#model-options option[value='echo/echo']")).to_have_count(1)
    assert page.input_value("#agent-model"), "a model is offered"
    tools = dialog.locator("label.check")
    expect(tools.filter(has_text="transfer").locator(".badge")).to_have_text("approval")
    page.fill("#agent-name", "Scout")
    page.fill("#agent-model", "echo/echo")
    page.fill("#agent-system", "You repeat what you hear.")
    tools.filter(has_text="add").locator("input").check()
    shot(page, "new-agent")
    page.click("#agent-create")
    expect(page.locator("#title")).to_have_text("Scout")
    expect(page.locator("#subtitle")).to_have_text("echo/echo · tools: add")

    send(page, "first conversation")  # the first message makes the conversation
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    first = conversation_of(page)
    page.click("#new-conversation")
    expect(page).not_to_have_url(re.compile(first))
    send(page, "second conversation")
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page) == "second conversation"
    conversations = page.locator("#conversation-list .item")
    expect(conversations).to_have_count(2)
    shot(page, "two-conversations")

    conversations.filter(has_text="first conversation").click()
    expect(page).to_have_url(re.compile(first))
    expect(page.locator(".turn.user .bubble")).to_have_text("first conversation")
    assert answer(page) == "first conversation"


def test_a_turn_sent_elsewhere_that_ends_between_two_polls_shows_up(
    page: Page, api: httpx.Client, convoy: Convoy, shot: Shot
) -> None:
    """Another client's turn on the open conversation, over before the page's next poll: the page
    used to look only for active runs, so it never showed that turn, nor its answer."""
    agent = make_agent(api, "echo/echo", name="Echo")
    conversation = api.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
    first = api.post(f"/v1/conversations/{conversation}/messages", json={"messages": [{"role": "user", "content": "first turn"}], "streaming": False})
    assert first.status_code == 200, first.text
    page.goto(f"{convoy.url}/#/{agent}/{conversation}")
    expect(page.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page) == "first turn"

    elsewhere = "second turn, sent elsewhere"
    second = api.post(f"/v1/conversations/{conversation}/messages", json={"messages": [{"role": "user", "content": elsewhere}], "streaming": False})
    assert second.status_code == 200 and second.json()["stop_reason"]["stop_reason"] == "end_turn", second.text
    expect(page.locator(".turn.user").nth(1).locator(".bubble")).to_have_text(elsewhere, timeout=5_000)
    expect(page.locator(".turn.assistant").nth(1).locator(".text")).to_have_text(elsewhere, timeout=5_000)
    expect(page.locator(".run-foot").nth(1)).to_contain_text("completed")
    expect(page.locator(".turn.user")).to_have_count(2)
    expect(page.locator(".turn.assistant")).to_have_count(2)
    assert answer(page, 0) == "first turn", "what was on the page stays as it was"
    shot(page, "turn-from-elsewhere")


@pytest.fixture
def route(convoy: Convoy) -> Iterator[Outages]:
    """The page's only way to the API, which the test cuts (the API unreachable for a while) and restores."""
    cuttable = Outages(convoy.url)
    yield cuttable
    cuttable.close()


TO_BOB = ("t1", "transfer", '{"amount": 5, "to": "bob"}')
TO_CAROL = ("t2", "transfer", '{"amount": 7, "to": "carol"}')


def approval_requested(
    page: Page, api: httpx.Client, fake_provider: fp.FakeProvider, url: str, calls: list[fp.ToolCall], after: tuple[str, ...] = ()
) -> None:
    """A new agent, opened at ``url``, asked for transfers (``calls``, made at once) that wait for
    approval; the model answers ``after`` once they are done."""
    model = unique("gpt-4o")
    fake_provider.script(model, fp.Stream(fp.chat_tool_calls(model, calls)), fp.Stream(fp.chat_text(model, list(after))))
    agent = make_agent(api, f"openai/{model}", tools=["transfer"], name="Treasurer")
    page.goto(f"{url}/#/{agent}")
    send(page, "Make the transfers.")
    expect(page.locator(".card.approval button", has_text="Approve")).to_have_count(len(calls), timeout=WAIT_MS)


def test_an_approval_that_does_not_reach_the_server_is_not_shown_as_decided_and_can_be_sent_again(
    page: Page, api: httpx.Client, route: Outages, fake_provider: fp.FakeProvider, shot: Shot
) -> None:
    """The cards used to say "Approved" as soon as they were clicked, before the POST that carries
    the answers: with the API unreachable the person saw decisions the server never got, and had no
    way to send them again. Two calls made at once: their answers go in one request, once both
    have one."""
    approval_requested(page, api, fake_provider, route.url, [TO_BOB, TO_CAROL], after=("Done: ", "both sent."))
    bob, carol = page.locator(".card.approval").nth(0), page.locator(".card.approval").nth(1)
    conversation = conversation_of(page)

    route.cut()
    bob.locator("button", has_text="Approve").click()
    expect(bob.locator(".decision-note")).to_have_text("Approve — sent once every call here has an answer")
    carol.locator("button", has_text="Approve").click()
    for card in (bob, carol):
        note = card.locator(".decision-note")
        expect(note).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
        expect(note).to_contain_text("Your answer did not go through. Cannot reach Convoy: The server did not answer.")
        expect(card.locator(".decision")).to_have_count(0)
        expect(card.locator(".badge")).to_have_text("Needs approval")
        expect(card.locator("button", has_text="Approve")).to_be_enabled()
    expect(page.locator("#run-state")).to_have_text("Waiting for your approval")
    shot(page, "approvals-not-sent")
    runs = api.get("/v1/runs", params={"conversation_id": conversation}).json()
    assert [(r["status"], r["stop_reason"]) for r in runs] == [("completed", "requires_approval")], "nothing reached the server"

    route.restore()
    bob.locator("button", has_text="Approve").click()  # the same buttons, again
    carol.locator("button", has_text="Approve").click()
    for card, result in ((bob, "sent 5 to bob"), (carol, "sent 7 to carol")):
        expect(card.locator(".decision")).to_have_text("Approved", timeout=WAIT_MS)
        expect(card.locator(".decision-note")).to_have_count(0)
        expect(card.locator(".card-result")).to_contain_text(result, timeout=WAIT_MS)
    expect(page.locator(".turn.assistant").nth(1).locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(page, 1) == "Done: both sent."
    shot(page, "approvals-sent-again")
    runs = api.get("/v1/runs", params={"conversation_id": conversation}).json()
    assert [(r["status"], r["stop_reason"]) for r in runs] == [("completed", "end_turn"), ("completed", "requires_approval")]


def test_an_approval_the_server_refuses_shows_the_servers_reason_and_stays_open(
    page: Page, api: httpx.Client, convoy: Convoy, fake_provider: fp.FakeProvider, shot: Shot
) -> None:
    """The conversation was deleted elsewhere while its card waited: the server answers 404, and
    the card says so in the server's words instead of "Denied"."""
    approval_requested(page, api, fake_provider, convoy.url, [TO_BOB])
    conversation = conversation_of(page)
    deleted = api.delete(f"/v1/conversations/{conversation}")
    assert deleted.status_code == 200, deleted.text
    refusal = api.post(f"/v1/conversations/{conversation}/messages", json={"messages": [{"type": "approval", "approve": False}]})
    assert refusal.status_code == 404, refusal.text
    reason = refusal.json()["detail"]

    card = page.locator(".card.approval")
    card.locator("button", has_text="Deny…").click()
    card.locator("input.reason").fill("not today")
    card.locator("button.danger", has_text="Deny").click()
    note = card.locator(".decision-note")
    expect(note).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    expect(note).to_contain_text(f"Not found: {reason}")
    expect(card.locator(".decision")).to_have_count(0)
    expect(card.locator("button.danger", has_text="Deny")).to_be_enabled()
    expect(card.locator("input.reason")).to_have_value("not today")
    shot(page, "approval-refused")


@pytest.fixture
def own_chromium(browser: Browser, tmp_path: Path) -> Iterator[Browser]:
    """A Chromium of its own, connected without Playwright's page defaults: Playwright emulates
    focus on the pages it makes, which keeps them visible whatever happens to their tab. Its first
    tab shares a window with any tab opened next, so switching tabs hides it for real."""
    assert CHROMIUM is not None  # the `browser` fixture skipped otherwise
    profile = tmp_path / "chromium"
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,820",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        announced = profile / "DevToolsActivePort"  # its port, first line, once it listens
        port = wait_until(lambda: announced.exists() and announced.read_text().split("\n")[0], 30, message="chromium's DevTools port")
        connected = browser.browser_type.connect_over_cdp(f"http://127.0.0.1:{port}", no_defaults=True)
        yield connected
        connected.close()
    finally:
        process.kill()
        process.wait()


def test_a_hidden_tab_catches_up_as_soon_as_it_is_shown(own_chromium: Browser, api: httpx.Client, convoy: Convoy, shot: Shot) -> None:
    """A hidden tab skips its polls and looks for what it missed the moment it is shown again. The
    page's timers run on Playwright's clock, paused, and are moved on by hand: the poll's own timer
    (every POLL_MS) never fires after the tab is shown, so only the page's answer to becoming
    visible can bring the turn sent meanwhile."""
    agent = make_agent(api, "echo/echo", name="Echo")
    conversation = api.post("/v1/conversations", params={"agent_id": agent}).json()["id"]

    def turn(text: str) -> None:
        sent = api.post(f"/v1/conversations/{conversation}/messages", json={"messages": [{"role": "user", "content": text}], "streaming": False})
        assert sent.status_code == 200, sent.text

    turn("first turn")
    context = own_chromium.contexts[0]
    tab = context.pages[0]
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    polls: list[str] = []
    tab.on("request", lambda request: polls.append(request.url) if "/v1/runs?" in request.url else None)
    tab.clock.install()
    tab.clock.pause_at(tab.evaluate("Date.now()") + 1000)
    tab.goto(f"{convoy.url}/#/{agent}/{conversation}")
    expect(tab.locator(".run-foot")).to_contain_text("completed", timeout=WAIT_MS)
    assert answer(tab) == "first turn"

    browser_session = own_chromium.new_browser_cdp_session()
    this_tab = context.new_cdp_session(tab).send("Target.getTargetInfo")["targetInfo"]["targetId"]
    browser_session.send("Target.createTarget", {"url": "about:blank", "newWindow": False})  # another tab comes to the front
    tab.wait_for_function("document.visibilityState === 'hidden'", polling=50)
    polls.clear()
    tab.clock.run_for(POLL_MS + 100)  # a poll is due: hidden, the tab skips it
    assert tab.evaluate("fetch('/v1/health').then((r) => r.status)") == 200  # any request made before this one is seen by now
    assert polls == [], "a hidden tab does not poll"

    elsewhere = "second turn, sent while the tab was hidden"
    turn(elsewhere)
    browser_session.send("Target.activateTarget", {"targetId": this_tab})
    tab.wait_for_function("document.visibilityState === 'visible'", polling=50)
    tab.clock.run_for(1)  # what is due now, not the next poll
    expect(tab.locator(".turn.assistant").nth(1).locator(".text")).to_have_text(elsewhere, timeout=5_000)
    expect(tab.locator(".turn.user").nth(1).locator(".bubble")).to_have_text(elsewhere)
    expect(tab.locator(".run-foot").nth(1)).to_contain_text("completed")
    assert polls, "it asked as soon as it was shown"
    shot(tab, "caught-up-when-shown")
    assert not errors, f"the page threw: {errors}"
