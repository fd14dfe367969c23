"""``convoy chat``: talk to an agent from a terminal, over HTTP only (local or ``--url``).

``convoy chat --model HANDLE`` creates an agent on that model, ``--agent ID`` reuses one (neither:
an agent on the server's default model); ``--conversation ID`` continues a conversation, else a
new one is made. ``CONVOY_API_KEY`` is sent as the bearer key when set.

What a person can count on:

- **Tokens as they come.** Every turn asks for ``stream_tokens: true`` and prints items as they
  arrive (``cli.chat_view``): the answer plain, reasoning dimmed, tool calls and their results.
- **Ctrl-C stops the answer at once**: the run is cancelled through the API (the model's stream is
  closed) and the prompt comes back; a second Ctrl-C, or Ctrl-C or Ctrl-D at the prompt, leaves.
- **Leaving does not lose an answer.** Turns run in the background (``background: true``): an
  answer still running when the terminal closes goes on, and ``convoy chat --conversation ID``
  prints it from its start and follows it live. A broken connection is resumed after the last
  item printed (``starting_after``), so nothing is printed twice or lost; while the server cannot
  be reached (restarting, a network down for a moment) it is tried again with a backoff, for
  ``RECONNECT_GIVE_UP_S``, saying so on a dim line; Ctrl-C still cancels the answer meanwhile.
- **Approvals are asked for.** A tool call that needs approval is shown with its arguments and
  asked y/n (and a reason on n); the answer goes back and the turn goes on.
- **Refusals are said in words**: the server's own reason (``detail``), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse
from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, Prompt
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from cli.chat_view import PendingCall, RunView, describe_call, describe_run, printable
from runtime.errors import ConvoyError
from runtime.settings import Settings

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # longer than the server's keepalive pings (CONVOY_PING_INTERVAL_S, 15 s)
# A server out of reach is tried again after 0.5 s, 1 s, 2 s… (at most RECONNECT_MAX_WAIT_S apart)
# for RECONNECT_GIVE_UP_S: long enough for a server to restart, and the run goes on there meanwhile.
RECONNECT_FIRST_WAIT_S = 0.5
RECONNECT_MAX_WAIT_S = 8.0
RECONNECT_GIVE_UP_S = 30.0
POLL_S = 0.1  # how soon Ctrl-C is acted on while an answer streams
RECONNECTING = "reconnecting…"
_END = object()  # a stream's end, as the reading thread hands it over
HISTORY_LIMIT = 1000


def approval_prompt(call: PendingCall) -> str:
    """The question asked before a call runs, in ``rich`` markup: the call as the model wrote it,
    escaped, so no part of it is read as markup (``[conceal]`` would hide what is approved)."""
    return f"[bold yellow]approve[/] {escape(describe_call(call))}?"


class ChatError(ConvoyError):
    """What ``convoy chat`` cannot go on without: the server's reason, in words."""


class Unreachable(ChatError):
    """The server could not be reached, so the request never left: a resume or a cancel tries it
    again (``Chat._reconnecting``), anything else says so in words."""


# A connection that broke, or could not be made again: what a resume or a cancel tries again.
_BROKEN = (httpx.TransportError, SSEError, Unreachable)


class Leave(Exception):
    """The person left (Ctrl-D, or Ctrl-C at a prompt)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    text = "chat with an agent in the terminal (tokens as they stream; Ctrl-C stops an answer)"
    cmd = sub.add_parser("chat", help=text, description=text + ". CONVOY_API_KEY is sent as the API key.")
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--agent", metavar="ID", help="talk to this agent")
    which.add_argument("--model", metavar="HANDLE", help="create an agent on this model (e.g. echo/echo, openai/gpt-4o-mini)")
    cmd.add_argument("--conversation", metavar="ID", help="continue this conversation (its running answer is followed)")
    cmd.add_argument("--url", default=None, help="the Convoy server (default http://127.0.0.1:8283)")
    cmd.add_argument("--system", default="You are a helpful assistant.", help="system prompt of an agent made by --model")


def run(settings: Settings, args: argparse.Namespace) -> int:
    # Ctrl-C is how a person stops an answer and leaves: honour it even when the process was started
    # with SIGINT ignored (as a shell's background job is, and Python then leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    url = args.url or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
        chat = Chat(Api(http), Console(highlight=False))
        try:
            chat.start(agent_id=args.agent, model=args.model, conversation_id=args.conversation, system=args.system)
            chat.loop()
        except Leave:
            pass
    return 0


class Api:
    """The server's HTTP API, each refusal turned into a ``ChatError`` with the server's reason."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._reaching():
            reply = self.http.request(method, path, **kwargs)
        if reply.status_code >= 400:
            raise ChatError(_refusal(reply))
        return reply.json()

    @contextlib.contextmanager
    def events(self, method: str, path: str, **kwargs: Any) -> Iterator[Iterator[tuple[str, str]]]:
        """A stream's events as (event name, data), ending after ``[DONE]``; none for a 204 (a
        resume at the end of a run that has ended: nothing is left to send)."""
        with self._reaching(), connect_sse(self.http, method, path, **kwargs) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise ChatError(_refusal(source.response))
            if source.response.status_code == 204:
                yield iter(())
                return
            yield ((event.event, event.data) for event in source.iter_sse())

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise Unreachable(f"cannot reach Convoy at {self.http.base_url} (is `convoy serve` running? see --url): {exc}") from exc


def _refusal(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return f"{reply.status_code} {reply.reason_phrase}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = body.get("message") or str(detail or body)
    retry = reply.headers.get("retry-after")
    return f"{detail} (HTTP {reply.status_code}{f', retry in {retry} s' if retry else ''})"


class Interrupted(Exception):
    """Ctrl-C while an answer streamed."""


class Interrupts:
    """Ctrl-C while an answer streams. The handler only takes note: an exception raised wherever
    the main thread happens to be would land inside httpx (a lock taken and never given back, which
    hangs the next request or the exit) or halfway through printing an item. So a thread reads the
    stream (``read_events``), and the main thread prints what it hands over and looks at the note
    between items and every ``POLL_S``."""

    def __init__(self) -> None:
        self.hit = threading.Event()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.hit.set()

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the server is tried again; ``Interrupted`` as soon as Ctrl-C is
        noted, so a person never waits out a backoff to stop an answer."""
        if self.hit.wait(seconds):
            raise Interrupted()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def read_events(self, api: Api, method: str, path: str, **kwargs: Any) -> Iterator[tuple[str, str]]:
        """The stream's events; ``Interrupted`` as soon as Ctrl-C is noted. The reading thread is
        left to finish on its own then (the server ends the stream of a cancelled run)."""
        handed: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def read() -> None:
            try:
                with api.events(method, path, **kwargs) as events:
                    for event in events:
                        handed.put(event)
                handed.put(_END)
            except Exception as exc:  # noqa: BLE001 - raised again by the main thread
                handed.put(exc)

        threading.Thread(target=read, name="convoy-chat-stream", daemon=True).start()
        while True:
            try:
                got = handed.get(timeout=POLL_S)
            except queue.Empty:
                got = None
            if self.hit.is_set():
                raise Interrupted()
            if got is _END:
                return
            if isinstance(got, Exception):
                raise got
            if got is not None:
                yield got


class Chat:
    def __init__(self, api: Api, console: Console) -> None:
        self.api = api
        self.console = console
        self.agent: dict[str, Any] = {}
        self.conversation = ""

    # -- starting -------------------------------------------------------------------------------

    def start(self, *, agent_id: str | None, model: str | None, conversation_id: str | None, system: str) -> None:
        if conversation_id:
            conversation = self.api.call("GET", f"/v1/conversations/{conversation_id}")
            if agent_id and conversation["agent_id"] != agent_id:
                raise ChatError(f"conversation {conversation_id} belongs to agent {conversation['agent_id']}, not {agent_id}")
            agent_id = conversation["agent_id"]
        if agent_id:
            self.agent = self.api.call("GET", f"/v1/agents/{agent_id}")
        else:
            body = {"name": "convoy chat", "system": system, **({"model": model} if model else {})}
            self.agent = self.api.call("POST", "/v1/agents", json=body)
        if conversation_id:
            self.conversation = conversation_id
        else:
            self.conversation = self.api.call("POST", "/v1/conversations", params={"agent_id": self.agent["id"]})["id"]
        name, model_handle, agent_id = (escape(printable(str(self.agent[k]))) for k in ("name", "model", "id"))
        self.console.print(
            f"[bold]{name}[/] [dim]· {model_handle} · agent {agent_id}[/]\n"
            f"[dim]conversation {self.conversation}\n"
            "Ctrl-C stops an answer; Ctrl-D (or Ctrl-C at the prompt) leaves.[/]"
        )
        if conversation_id:
            self._catch_up()

    def _catch_up(self) -> None:
        """Follow the conversation's running answers, then ask for a pending approval, if any."""
        active = self.api.call("GET", "/v1/runs", params={"conversation_id": self.conversation, "active": True, "order": "asc"})
        for run in active:
            self.console.print("[dim]following the answer that is running…[/]")
            self._follow(run["id"])
        latest = self.api.call("GET", "/v1/runs", params={"conversation_id": self.conversation, "limit": 1})
        if latest and latest[0]["stop_reason"] == "requires_approval" and not active:
            view = RunView(self.console)
            for message in self.api.call("GET", f"/v1/runs/{latest[0]['id']}/messages", params={"limit": HISTORY_LIMIT}):
                view.show(message)  # the run's messages in order (its input is not shown: show skips it)
            view.end()
            self._answer_approvals(view)

    # -- the conversation -----------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            try:
                text = self.console.input("[bold cyan]you ›[/] ")
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                raise Leave() from None
            if text.strip():
                self.turn([{"role": "user", "content": text}])

    def turn(self, messages: list[dict[str, Any]]) -> None:
        """Send ``messages`` and print the answer; then ask for approvals the answer needs."""
        body = {"messages": messages, "streaming": True, "stream_tokens": True, "background": True, "include_pings": True}
        view = RunView(self.console)
        try:
            run_id = self._print(view, "POST", f"/v1/conversations/{self.conversation}/messages", json=body)
        except ChatError as exc:
            self.console.print(f"refused: {exc}", style="red", markup=False)
            return
        self._finish(view, run_id)

    def _follow(self, run_id: str) -> None:
        view = RunView(self.console)
        self._print(view, "GET", f"/v1/runs/{run_id}/stream", run_id=run_id)
        self._finish(view, run_id)

    def _print(self, view: RunView, method: str, path: str, *, run_id: str | None = None, **kwargs: Any) -> str | None:
        """Print a run's stream; Ctrl-C cancels the run. Returns the run's id.

        A broken connection is resumed after the last item printed (``_resume``): the run goes on
        on the server whatever happens to the connection, so giving up on it loses an answer that
        completes there."""
        reading = _Reading(view, run_id)
        interrupts = Interrupts()
        self.console.print(f"[bold magenta]{escape(printable(str(self.agent['name'])))} ›[/]")
        try:
            with interrupts.installed():
                try:
                    return reading.through(interrupts.read_events(self.api, method, path, **kwargs))
                except _BROKEN as exc:
                    if reading.run_id is None:  # no run to resume (a send that never reached the server)
                        if isinstance(exc, ChatError):
                            raise
                        raise ChatError(f"the answer's stream broke off: {exc}") from exc
                return self._resume(reading, interrupts)
        except Interrupted:
            view.end()
            self._cancel(reading.run_id)
            return reading.run_id
        finally:
            view.end()

    def _resume(self, reading: _Reading, interrupts: Interrupts) -> str | None:
        """Read the run's stream again after the last item printed, until it ends. A break is tried
        again at once, then with a backoff while the server is out of reach; a resume that printed
        something before it broke again makes that a new break, with a backoff of its own (an answer
        may outlive several)."""
        while True:
            reading.broke_at = reading.last
            retrying = self._reconnecting(
                reading.stuck, pause=interrupts.pause, note=RECONNECTING, before=reading.view.end
            )
            try:
                return retrying(self._read_after, reading, interrupts)
            except _BROKEN as exc:
                if reading.stuck(exc):
                    raise ChatError(
                        f"lost the answer's stream and could not reach Convoy again in {RECONNECT_GIVE_UP_S:.0f} s "
                        f"({exc}); it goes on there: `convoy chat --conversation {self.conversation}` follows it"
                    ) from exc

    def _read_after(self, reading: _Reading, interrupts: Interrupts) -> str | None:
        path = f"/v1/runs/{reading.run_id}/stream"
        return reading.through(interrupts.read_events(self.api, "GET", path, params={"starting_after": reading.last}))

    def _reconnecting(
        self,
        still: Callable[[BaseException], bool],
        *,
        pause: Callable[[float], None],
        note: str,
        before: Callable[[], None] = lambda: None,
    ) -> Retrying:
        """How a connection that broke or cannot be made is tried again: at once, then after
        ``RECONNECT_FIRST_WAIT_S``, doubling, for ``RECONNECT_GIVE_UP_S`` in all, while ``still``
        says the failure is one to try again. ``note`` is said, dimmed, when the first try again
        fails (a blip that heals at once says nothing); ``pause`` is how a wait is waited (one
        Ctrl-C can end)."""

        def say(state: RetryCallState) -> None:
            if state.attempt_number == 1:
                before()
                self.console.print(note, style="dim", markup=False)

        return Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, _BROKEN) and still(exc)),
            wait=wait_exponential(multiplier=RECONNECT_FIRST_WAIT_S, max=RECONNECT_MAX_WAIT_S),
            stop=stop_after_delay(RECONNECT_GIVE_UP_S),
            sleep=pause,
            before_sleep=say,
            reraise=True,
        )

    def _cancel(self, run_id: str | None) -> None:
        """Ctrl-C during an answer: cancel it now. A server out of reach at that moment is tried
        again as a resume is, or the run would go on (a second Ctrl-C leaves at once)."""
        path = f"/v1/runs/{run_id}/cancel" if run_id else f"/v1/conversations/{self.conversation}/cancel"
        retrying = self._reconnecting(lambda exc: True, pause=time.sleep, note="reconnecting to cancel…")
        try:
            retrying(self.api.call, "POST", path)
        except _BROKEN as exc:
            raise ChatError(f"could not cancel the answer: {exc}") from exc
        except ChatError:
            if run_id is not None:  # the conversation's cancel answers 409 when nothing ran any more
                raise
        self.console.print("[yellow]cancelled[/]")

    def _finish(self, view: RunView, run_id: str | None) -> None:
        if run_id is None:
            return
        run = self.api.call("GET", f"/v1/runs/{run_id}")
        self.console.print(describe_run(run, view.usage), style="dim", markup=False)
        if run.get("stop_reason") == "requires_approval":
            self._answer_approvals(view)

    def _answer_approvals(self, view: RunView) -> None:
        answers = []
        for call in view.approvals.values():
            try:
                approve = Confirm.ask(approval_prompt(call), console=self.console)
                reason = "" if approve else Prompt.ask("reason (sent to the model)", default="", console=self.console)
            except (EOFError, KeyboardInterrupt):
                self.console.print("\n[dim]left unanswered: the conversation waits for it[/]")
                raise Leave() from None
            answer: dict[str, Any] = {"type": "approval", "tool_call_id": call.tool_call_id, "approve": approve}
            if reason:
                answer["reason"] = reason
            answers.append(answer)
        if answers:
            self.turn([{"type": "approval", "approvals": answers}])


@dataclass
class _Reading:
    """A run's stream as printed so far: the run's id once known, and the last item's seq_id,
    which a resume starts after."""

    view: RunView
    run_id: str | None
    last: int = 0
    broke_at: int = 0  # ``last`` when the stream last broke

    def stuck(self, exc: BaseException) -> bool:
        """Whether nothing was printed since the stream last broke: the same break, still being
        tried again (rather than a new one after the resume went on for a while)."""
        return self.last == self.broke_at

    def through(self, events: Iterator[tuple[str, str]]) -> str | None:
        """Print ``events`` up to ``[DONE]`` (or the stream's end: the run's outcome is read next);
        returns the run's id."""
        for name, data in events:
            if data == "[DONE]":
                break
            item = json_item(data)
            self.run_id = self.run_id or item.get("run_id")
            if item.get("seq_id"):
                self.last = int(item["seq_id"])
            if name == "error":
                item.setdefault("message_type", "error_message")
            self.view.show(item)
        return self.run_id


def json_item(data: str) -> dict[str, Any]:
    item = json.loads(data)
    return item if isinstance(item, dict) else {}
