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
  item printed (``starting_after``), so nothing is printed twice.
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
from collections.abc import Iterator
from types import FrameType
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse
from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, Prompt

from cli.chat_view import PendingCall, RunView, describe_call, describe_run, printable
from runtime.errors import ConvoyError
from runtime.settings import Settings

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # longer than the server's keepalive pings (CONVOY_PING_INTERVAL_S, 15 s)
RESUME_ATTEMPTS = 5
POLL_S = 0.1  # how soon Ctrl-C is acted on while an answer streams
_END = object()  # a stream's end, as the reading thread hands it over
HISTORY_LIMIT = 1000


def approval_prompt(call: PendingCall) -> str:
    """The question asked before a call runs, in ``rich`` markup: the call as the model wrote it,
    escaped, so no part of it is read as markup (``[conceal]`` would hide what is approved)."""
    return f"[bold yellow]approve[/] {escape(describe_call(call))}?"


class ChatError(ConvoyError):
    """What ``convoy chat`` cannot go on without: the server's reason, in words."""


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
        """A stream's events as (event name, data), ending after ``[DONE]``."""
        with self._reaching(), connect_sse(self.http, method, path, **kwargs) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise ChatError(_refusal(source.response))
            yield ((event.event, event.data) for event in source.iter_sse())

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise ChatError(f"cannot reach Convoy at {self.http.base_url} (is `convoy serve` running? see --url): {exc}") from exc


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
        """Print a run's stream; a broken connection is resumed after the last item printed.
        Ctrl-C cancels the run. Returns the run's id."""
        last = 0
        interrupts = Interrupts()
        self.console.print(f"[bold magenta]{escape(printable(str(self.agent['name'])))} ›[/]")
        try:
            for attempt in range(RESUME_ATTEMPTS + 1):
                try:
                    with interrupts.installed():
                        for name, data in interrupts.read_events(self.api, method, path, **kwargs):
                            if data == "[DONE]":
                                return run_id
                            item = json_item(data)
                            run_id = run_id or item.get("run_id")
                            if item.get("seq_id"):
                                last = int(item["seq_id"])
                            if name == "error":
                                item.setdefault("message_type", "error_message")
                            view.show(item)
                    return run_id  # closed without [DONE]: the run's outcome is read next
                except (httpx.TransportError, SSEError) as exc:
                    if run_id is None or attempt == RESUME_ATTEMPTS:
                        raise ChatError(f"the answer's stream broke off: {exc}") from exc
                    method, path, kwargs = "GET", f"/v1/runs/{run_id}/stream", {"params": {"starting_after": last}}
            return run_id
        except Interrupted:
            view.end()
            self._cancel(run_id)
            return run_id
        finally:
            view.end()

    def _cancel(self, run_id: str | None) -> None:
        """Ctrl-C during an answer: cancel it now (a second Ctrl-C leaves at once)."""
        if run_id is None:
            with contextlib.suppress(ChatError):  # 409: nothing was running any more
                self.api.call("POST", f"/v1/conversations/{self.conversation}/cancel")
        else:
            self.api.call("POST", f"/v1/runs/{run_id}/cancel")
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


def json_item(data: str) -> dict[str, Any]:
    item = json.loads(data)
    return item if isinstance(item, dict) else {}
