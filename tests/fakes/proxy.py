"""A TCP proxy in front of a real server that can make its connections go silent (both directions
stop and the sockets stay open: a dead peer that no error reports), drop them (both sockets close),
lose their replies (what the client sends still reaches the server: a connection that broke after
a command left), refuse new connections (the server is gone) and accept them again (it is back),
or freeze (every connection, new ones included, accepted and never answered: a server stopped with
SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
OUTAGES_TIMEOUT_S = 30.0  # for a step on the proxy's own loop (cut, restore, close)


class SilencingProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self.connections: list[asyncio.Event] = []  # one per connection, in order; set = silenced
        self.subscribers: list[asyncio.Event] = []  # those that sent SSUBSCRIBE
        self._muted: list[asyncio.Event] = []  # one per connection; set = the server's replies are dropped
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._frozen = False
        self.port = 0

    async def __aenter__(self) -> SilencingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def silence_all(self) -> None:
        for silenced in self.connections:
            silenced.set()

    def drop_all(self) -> None:
        for writer in self._writers:
            writer.close()

    def lose_replies(self) -> None:
        """From now on the open connections deliver what clients send, and drop what the server
        answers (connections opened later are not touched)."""
        for muted in self._muted:
            muted.set()

    def freeze(self) -> None:
        """Every connection goes silent, and so does each new one as soon as it is accepted."""
        self._frozen = True
        self.silence_all()

    def refuse_new(self) -> None:
        """Stop listening: new connections are refused, as by a server that is gone."""
        assert self._server is not None
        self._server.close()

    async def accept_again(self) -> None:
        """Listen again on the same port after ``refuse_new``: the server is back, at the address
        its clients know."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        silenced, muted = asyncio.Event(), asyncio.Event()
        if self._frozen:
            silenced.set()
        self.connections.append(silenced)
        self._muted.append(muted)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            while data := await src.read(65536):
                if upstream and b"SSUBSCRIBE" in data and silenced not in self.subscribers:
                    self.subscribers.append(silenced)
                if silenced.is_set():
                    await asyncio.Event().wait()  # silent for good
                if not upstream and muted.is_set():
                    continue  # the reply is lost on its way back
                dst.write(data)
                await dst.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        writer.close()
        up_writer.close()


class Outages:
    """A ``SilencingProxy`` in front of an HTTP server (``url``: the proxy's), on an event loop of
    its own thread, for a test that drives its client synchronously (a terminal, a browser): its
    connections cut and new ones refused (``cut``), then accepted again (``restore``, or by itself
    ``outage_s`` later)."""

    def __init__(self, upstream_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="outages", daemon=True)
        self._thread.start()
        self.proxy = self._run(SilencingProxy(int(upstream_url.rsplit(":", 1)[1])).__aenter__)
        self.url = f"http://127.0.0.1:{self.proxy.port}"
        self._back: asyncio.Task[None] | None = None

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(OUTAGES_TIMEOUT_S)

    def cut(self, outage_s: float | None = None) -> None:
        """Every open connection closed and new ones refused; with ``outage_s``, accepted again
        that much later (the length of the outage, not a wait on anything)."""

        def back() -> None:
            self._back = self._loop.create_task(self.proxy.accept_again())  # held: a task only weakly held may vanish

        async def cut() -> None:
            self.proxy.refuse_new()
            self.proxy.drop_all()
            if outage_s is not None:
                self._loop.call_later(outage_s, back)

        self._run(cut)

    def restore(self) -> None:
        self._run(self.proxy.accept_again)

    def close(self) -> None:
        async def close() -> None:
            self.proxy.refuse_new()
            self.proxy.drop_all()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        self._run(close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(OUTAGES_TIMEOUT_S)
        self._loop.close()
