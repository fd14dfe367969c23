"""``convoy chat`` in a pseudo-terminal (pexpect), as a person types at it, against a real server.

The model is the fake provider, paced so an answer takes seconds; what is checked is what the
terminal shows (ANSI styles stripped, except where the style is the point) and the run's outcome
through the API.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from bench import upstream as fp
from tests.conftest import Convoy, KeyedConvoy, _clean_env
from tests.fakes.proxy import Outages
from tests.integration.test_providers import unique

CONVOY = str(Path(sys.executable).parent / "convoy")
PROMPT = "you ›"
TIMEOUT_S = 30
PIECE_PAUSE_S = 0.08
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DIM_ITALIC = "\x1b[2;3m"
OUTAGE_S = 1.5  # how long the proxy refuses connections after cutting them: a server restarting
RECONNECTING = "reconnecting…"


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i} " for i in range(n)]


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


class Terminal:
    """``convoy chat ...`` in a pseudo-terminal; ``seen`` is everything it printed so far."""

    def __init__(self, *args: str, key: str | None = None) -> None:
        env = {**_clean_env(), "TERM": "xterm-256color", "COLUMNS": "200"}
        if key:
            env["CONVOY_API_KEY"] = key
        # Started with SIGINT ignored, as from a shell's background job: Ctrl-C must work all the same.
        self.child = pexpect.spawn(
            CONVOY,
            ["chat", *args],
            env=env,
            encoding="utf-8",
            timeout=TIMEOUT_S,
            dimensions=(50, 200),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        self.log: list[str] = []
        self.child.logfile_read = self  # type: ignore[assignment]

    def write(self, text: str) -> None:
        self.log.append(text)

    def flush(self) -> None:
        pass

    @property
    def seen(self) -> str:
        return "".join(self.log)

    def expect(self, pattern: str) -> None:
        self.child.expect_exact(pattern)

    def conversation(self) -> str:
        self.child.expect(r"conversation (conv-[0-9a-f-]{36})")
        return str(self.child.match.group(1))

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.child.close(force=True)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def chat(terminals: list[Terminal], *args: str, key: str | None = None) -> Terminal:
    terminal = Terminal(*args, key=key)
    terminals.append(terminal)
    return terminal


def runs_of(url: str, conversation: str, key: str | None = None) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/v1/runs", params={"conversation_id": conversation}, headers=headers, timeout=30).json()  # type: ignore[no-any-return]


@pytest.fixture
def outages(convoy: Convoy) -> Iterator[Outages]:
    found = Outages(convoy.url)
    yield found
    found.close()


def paced(model: str, pieces: list[str], reasoning: tuple[str, ...] = ()) -> fp.Stream:
    return fp.Stream(fp.paced(fp.chat_text(model, pieces, reasoning=reasoning), PIECE_PAUSE_S))


def test_an_answer_streams_in_with_its_reasoning_dimmed(convoy: Convoy, fake_provider: fp.FakeProvider, terminals: list[Terminal]) -> None:
    model = unique("cli")
    pieces = words(40)
    fake_provider.script(model, paced(model, pieces, reasoning=("Weighing ", "the question.")))
    term = chat(terminals, "--url", convoy.url, "--model", f"openai/{model}")
    conversation = term.conversation()
    term.expect(PROMPT)
    term.child.sendline("Stream to me.")
    term.expect("w3 ")
    (running,) = httpx.get(f"{convoy.url}/v1/runs", params={"conversation_id": conversation, "active": True}).json()
    assert running["status"] == "running", "tokens are printed as they come, while the run goes on"
    term.expect("completed · end_turn")
    term.expect(PROMPT)
    shown = plain(term.seen)
    assert "".join(pieces).strip() in shown
    assert f"{DIM_ITALIC}thinking: " in term.seen and "Weighing the question." in shown
    assert re.search(r"first token \d+ ms · [\d.]+ s · 12 in / 7 out tokens", shown), shown
    term.child.sendeof()
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0


def test_approvals_are_asked_yes_or_no_with_a_reason(
    convoy: Convoy, fake_provider: fp.FakeProvider, terminals: list[Terminal]
) -> None:
    model = unique("cli")
    fake_provider.script(
        model,
        fp.Stream(fp.chat_tool_calls(model, [("t1", "transfer", '{"amount": 5,', ' "to": "bob"}')])),
        fp.Stream(fp.chat_text(model, ["Sent."])),
        fp.Stream(fp.chat_tool_calls(model, [("t2", "transfer", '{"amount": 900, "to": "eve"}')])),
        fp.Stream(fp.chat_text(model, ["Understood."])),
    )
    agent = httpx.post(f"{convoy.url}/v1/agents", json={"name": "payer", "model": f"openai/{model}", "tools": ["transfer"]}).json()
    term = chat(terminals, "--url", convoy.url, "--agent", agent["id"])
    term.expect(PROMPT)
    term.child.sendline("Pay Bob 5.")
    term.expect('transfer({"amount": 5, "to": "bob"})?')
    term.child.sendline("y")
    term.expect("↳ sent 5 to bob")
    term.expect("Sent.")
    term.expect(PROMPT)

    term.child.sendline("Pay Eve 900.")
    term.expect('transfer({"amount": 900, "to": "eve"})?')
    term.child.sendline("n")
    term.expect("reason")
    term.child.sendline("far too much")
    term.expect("far too much")  # the denial, as the tool's error result
    term.expect("Understood.")
    term.expect(PROMPT)
    denial = fake_provider.calls(model)[-1].body["messages"][-1]
    assert denial["role"] == "tool" and "far too much" in denial["content"]


def test_ctrl_c_cancels_the_answer_and_a_second_leaves(
    convoy: Convoy, fake_provider: fp.FakeProvider, terminals: list[Terminal]
) -> None:
    model = unique("cli")
    pieces = words(300)
    fake_provider.script(model, paced(model, pieces))
    term = chat(terminals, "--url", convoy.url, "--model", f"openai/{model}")
    conversation = term.conversation()
    term.expect(PROMPT)
    term.child.sendline("Go on for a while.")
    term.expect("w3 ")
    term.child.sendintr()
    term.expect("cancelled")
    term.expect(PROMPT)
    (run,) = runs_of(convoy.url, conversation)
    assert (run["status"], run["stop_reason"]) == ("cancelled", "cancelled")
    assert fake_provider.calls(model)[0].disconnected.wait(10), "the model's stream was closed"
    assert "w200" not in plain(term.seen), "the answer stopped at once"
    term.child.sendintr()
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0


def test_started_again_on_a_conversation_it_follows_the_running_answer(
    convoy: Convoy, fake_provider: fp.FakeProvider, terminals: list[Terminal]
) -> None:
    model = unique("cli")
    pieces = words(60)
    fake_provider.script(model, paced(model, pieces))
    first = chat(terminals, "--url", convoy.url, "--model", f"openai/{model}")
    conversation = first.conversation()
    first.expect(PROMPT)
    first.child.sendline("Count slowly.")
    first.expect("w3 ")
    first.close()  # the terminal is gone (SIGKILL): the answer goes on in the background

    again = chat(terminals, "--url", convoy.url, "--conversation", conversation)
    again.expect("following the answer that is running")
    again.expect("completed · end_turn")
    again.expect(PROMPT)
    shown = plain(again.seen)
    assert shown.count("w0 ") == 1 and "".join(pieces).strip() in shown, "the whole answer, once"
    (run,) = runs_of(convoy.url, conversation)
    assert run["status"] == "completed"


def test_with_keys_on_it_sends_convoy_api_key(keyed_convoy: KeyedConvoy, terminals: list[Terminal]) -> None:
    refused = chat(terminals, "--url", keyed_convoy.url, "--model", "echo/echo")
    refused.child.expect(pexpect.EOF)
    refused.child.close()
    assert refused.child.exitstatus == 2
    assert "this server needs an API key" in plain(refused.seen)

    term = chat(terminals, "--url", keyed_convoy.url, "--model", "echo/echo", key=keyed_convoy.acme)
    conversation = term.conversation()
    term.expect(PROMPT)
    term.child.sendline("hello with a key")
    term.expect("completed · end_turn")
    assert runs_of(keyed_convoy.url, conversation, keyed_convoy.acme)[0]["status"] == "completed"


def test_a_stream_cut_while_the_server_is_out_of_reach_is_resumed_once_it_is_back(
    convoy: Convoy, fake_provider: fp.FakeProvider, terminals: list[Terminal], outages: Outages
) -> None:
    """The connection is cut mid-answer and new ones are refused for ``OUTAGE_S``: ``convoy chat``
    used to give up at once ("cannot reach Convoy"), its resumes run back to back, and the answer
    that went on on the server was lost to the terminal."""
    model = unique("cli")
    pieces = words(60)
    fake_provider.script(model, paced(model, pieces))
    term = chat(terminals, "--url", outages.url, "--model", f"openai/{model}")
    conversation = term.conversation()
    term.expect(PROMPT)
    term.child.sendline("Count slowly.")
    term.expect("w5 ")
    outages.cut(OUTAGE_S)
    ended = term.child.expect_exact(["completed · end_turn", "refused:"])
    assert ended == 0, f"it gave up: {plain(term.seen)[-300:]}"
    term.expect(PROMPT)
    shown = plain(term.seen)
    assert RECONNECTING in shown, "the wait is said"
    answer = shown.replace(f"\n{RECONNECTING}\n", "")
    assert re.findall(r"\bw\d+\b", answer) == [piece.strip() for piece in pieces], "the whole answer, once, in order"
    (run,) = runs_of(convoy.url, conversation)
    assert run["status"] == "completed"


def test_ctrl_c_while_it_reconnects_still_cancels_the_answer(
    convoy: Convoy, fake_provider: fp.FakeProvider, terminals: list[Terminal], outages: Outages
) -> None:
    model = unique("cli")
    pieces = words(300)
    fake_provider.script(model, paced(model, pieces))
    term = chat(terminals, "--url", outages.url, "--model", f"openai/{model}")
    conversation = term.conversation()
    term.expect(PROMPT)
    term.child.sendline("Go on for a while.")
    term.expect("w3 ")
    outages.cut()
    term.expect(RECONNECTING)
    term.child.sendintr()
    term.expect("reconnecting to cancel")  # the server is still out of reach: the cancel waits for it
    outages.restore()
    term.expect("cancelled")
    term.expect(PROMPT)
    (run,) = runs_of(convoy.url, conversation)
    assert (run["status"], run["stop_reason"]) == ("cancelled", "cancelled")
    assert fake_provider.calls(model)[0].disconnected.wait(10), "the model's stream was closed"
    assert "w200" not in plain(term.seen), "the answer stopped"
