"""Faults on real infrastructure, and what a user sees: Redis killed mid-run (gracefully and not;
``convoy serve`` restarts it), Redis frozen for longer than the lease TTL and for longer than the
owner waits, an API process killed mid-stream, clients that read slowly or never.

(A provider answering garbage is in ``test_providers.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import redis
from httpx_sse import aconnect_sse

from bench import upstream as fp
from runtime.errors import FencedError
from runtime.store import keyspace
from runtime.stream.items import StoredItem, read_after
from runtime.stream.tailer import SUBSCRIPTION_BUFFER_BYTES, StreamTailer
from runtime.stream.writer import ChunkWriter
from tests.conftest import (
    Convoy,
    alive,
    async_client,
    eventually,
    start_api_replica,
    start_convoy,
    stop_convoy,
    wait_until,
)
from tests.integration.test_actors import (
    first_item,
    long_text,
    new_conversation,
    stop_of,
    stream,
    text_of,
)
from tests.integration.test_providers import conversation as provider_conversation
from tests.integration.test_providers import unique

# -- Redis restarted, frozen or gone mid-run ---------------------------------------------------

RESTART_ENV = {
    "CONVOY_ECHO_DELAY_MS": "4",  # 1000 words: a run of ~4 s
    "CONVOY_IDLE_PASSIVATE_S": "60",  # conversations stay active across the restart: the doorbell is used
    "CONVOY_STREAM_IDLE_TIMEOUT_S": "6",  # a reader waits 6 s before waking an owner, 12 s before giving up
    "CONVOY_LEASE_TTL_MS": "3000",
    "CONVOY_REDIS_SOCKET_TIMEOUT_S": "3",  # a frozen Redis is noticed within 3 s
}
# Redis frozen longer than the lease TTL and the socket timeout, shorter than a reader waits.
OUTAGE_S = 8.0
LEAVING_OUTAGE_S = 5.0  # longer than the socket timeout: the first try of a cancel fails
# The owner's patience in the server whose runs must outlast it, and a longer outage; conversations
# let go after a second idle, with a lease that outlives the outages here.
IMPATIENT_ENV = {
    **RESTART_ENV,
    "CONVOY_STORE_OUTAGE_S": "4",
    "CONVOY_STREAM_IDLE_TIMEOUT_S": "3",
    "CONVOY_IDLE_PASSIVATE_S": "1",
    "CONVOY_LEASE_TTL_MS": "10000",
}
LONG_OUTAGE_S = 12.0
RECOVERY_S = 15.0
RESTARTED = "embedded Redis exited; starting it again"


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Convoy]:
    """A server whose owners wait 4 s for Redis, and whose conversations passivate after 1 s."""
    server = start_convoy(tmp_path_factory.mktemp("impatient") / "home", IMPATIENT_ENV)
    try:
        yield server
    finally:
        leftovers = stop_convoy(server)
        assert not leftovers, f"processes left behind: {sorted(leftovers)}"


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Convoy]:
    """A server of this module's own: its Redis is killed, frozen and restarted."""
    server = start_convoy(tmp_path_factory.mktemp("restartable") / "home", RESTART_ENV)
    try:
        yield server
    finally:
        leftovers = stop_convoy(server)
        assert not leftovers, f"processes left behind: {sorted(leftovers)}"


def redis_pid(server: Convoy) -> int:
    return int((server.home / "redis" / "server.pid").read_text())


def wait_restarted(server: Convoy, dead: int, url: str) -> int:
    """``convoy serve`` noticed its embedded Redis (pid ``dead``) exit, reaped it, logged it and
    started it again on the same URL (so with the same data directory); returns the new pid."""
    new: int = wait_until(lambda: (p := redis_pid(server)) != dead and alive(p) and p, RECOVERY_S, 0.02, "a new Redis")
    assert server.redis_url == url, "the same port"
    assert not Path(f"/proc/{dead}").exists(), "the dead Redis was reaped, not left a zombie"
    restarts = sum(1 for line in server.log().splitlines() if RESTARTED in line)
    assert restarts >= 1 and f"restarts={restarts}" in server.log(), server.log()[-2000:]
    return new


def kill_redis(server: Convoy, how: signal.Signals) -> int:
    """Stop the server's embedded Redis (SIGTERM: gracefully; SIGKILL: a crash) and wait until
    ``convoy serve`` has started it again; returns the new pid."""
    pid, url = redis_pid(server), server.redis_url
    os.kill(pid, how)
    return wait_restarted(server, pid, url)


@contextlib.asynccontextmanager
async def frozen_redis(server: Convoy, end: signal.Signals) -> AsyncIterator[float]:
    """Freeze the server's Redis (SIGSTOP: it holds its connections and answers nothing, so clients
    meet timeouts, not refusals) for as long as the block runs; yields when the outage began. Then
    ``end`` ends the outage: SIGCONT thaws it (what it had received runs then), SIGKILL kills it and
    ``convoy serve`` starts it again."""
    pid, url = redis_pid(server), server.redis_url
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        os.kill(pid, end)
        if end != signal.SIGCONT:
            await asyncio.to_thread(wait_restarted, server, pid, url)


async def _going(server: Convoy, conv: str, run_id: str) -> None:
    store = redis.Redis.from_url(server.redis_url)
    try:
        await asyncio.to_thread(
            wait_until, lambda: store.xlen(keyspace.run_stream(conv, run_id)) > 50, 15, 0.02, "the run to get going"
        )
    finally:
        store.close()


def _held(server: Convoy, conv: str) -> tuple[str | None, str | None]:
    """The conversation's lease holder and fencing epoch (a fresh client: Redis may have restarted)."""
    store = redis.Redis.from_url(server.redis_url, decode_responses=True)
    try:
        return store.get(keyspace.lease(conv)), store.get(keyspace.epoch(conv))
    finally:
        store.close()


async def _ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any] | None:
    """The run, once it has ended."""
    run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
    return run if run["status"] not in ("created", "running") else None


def _exactly_once(items: list[dict[str, Any]]) -> list[int]:
    seqs = [i["seq_id"] for i in items if "seq_id" in i]
    assert seqs == list(range(1, len(seqs) + 1)), "nothing lost, nothing twice"
    return seqs


async def _live_run_through_a_restart(server: Convoy, client: httpx.AsyncClient, conv: str, how: signal.Signals) -> None:
    """Stream a run and queue a message behind it, kill Redis mid-run (``how``), and check both
    complete with nothing lost or doubled and the conversation kept its owner."""
    store = redis.Redis.from_url(server.redis_url, decode_responses=True)
    text = long_text(f"live-{how.name}-", 1000)
    run_id, live = await first_item(client, conv, {"input": text, "background": True})
    _, queued = await first_item(client, conv, {"input": f"queued before {how.name}"})
    await _going(server, conv, run_id)
    owner = store.get(keyspace.lease(conv))
    kill_redis(server, how)

    def subscribed() -> int:
        return int(store.pubsub_shardnumsub(keyspace.run_stream(conv, run_id))[0][1])

    # The API's tailer listens to the stream's notifications again.
    await asyncio.to_thread(wait_until, subscribed, RECOVERY_S, 0.05, "the tailer to subscribe again")
    items = await asyncio.wait_for(live, RECOVERY_S)
    seqs = _exactly_once(items)
    assert text_of(items) == text and stop_of(items) == "end_turn" and items[-1]["message_type"] == "[DONE]"
    assert text_of(await asyncio.wait_for(queued, RECOVERY_S)) == f"queued before {how.name}"
    assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "completed"
    # What Redis holds is what the reader saw: resuming from the start gives the same items.
    resumed = [e for e in await read_events(client, f"/v1/runs/{run_id}/stream", {"starting_after": 0}) if "seq_id" in e]
    assert [i["seq_id"] for i in resumed] == seqs and text_of(resumed) == text
    # The run outlived the lease TTL: the owner kept renewing it through the restart.
    assert store.get(keyspace.lease(conv)) == owner


async def read_events(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with aconnect_sse(client, "POST", url, json=body) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                out.append({"message_type": "[DONE]"})
                continue
            doc = json.loads(sse.data)
            if sse.event == "error":
                doc["sse_event"] = "error"
            out.append(doc)
    return out


async def test_a_killed_redis_is_restarted_by_serve_and_runs_stream_through(restartable: Convoy) -> None:
    """``convoy serve`` restarts its embedded Redis when it dies (SIGTERM or SIGKILL by someone
    else): same port, same data, the old process reaped, logged; the API is healthy again at once,
    live runs carry on, and what was stored before is still there."""
    server = restartable
    restarts = sum(1 for line in server.log().splitlines() if RESTARTED in line)
    store = redis.Redis.from_url(server.redis_url, decode_responses=True)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        conv = await new_conversation(client)
        before = await stream(client, conv, {"input": "kept across restarts"})

        for how in (signal.SIGTERM, signal.SIGKILL):
            restarted_at = time.time()
            await _live_run_through_a_restart(server, client, conv, how)

            # The same (still active) conversation and a new one take new turns at once.
            started_at = time.monotonic()
            assert text_of(await stream(client, conv, {"input": f"after {how.name}"})) == f"after {how.name}"
            assert time.monotonic() - started_at < 2.5, "rung through the host's doorbell, not woken by a stalled reader"
            other = await new_conversation(client)
            assert text_of(await stream(client, other, {"input": "new conversation"})) == "new conversation"
            health = await client.get("/v1/health")
            assert health.status_code == 200, health.text

            def beating(since: float = restarted_at) -> bool:
                return all(json.loads(b)["ts"] > since + 1 for b in store.hgetall(keyspace.hosts()).values())

            await asyncio.to_thread(wait_until, beating, 10, 0.1, "heartbeats after the restart")

        # Accepted messages and finished runs survived both restarts.
        assert (await client.get(f"/v1/runs/{before[0]['run_id']}")).json()["status"] == "completed"
        history = (await client.get(f"/v1/conversations/{conv}/messages", params={"limit": 100, "order": "asc"})).json()
        users = [m["content"] for m in history if m["message_type"] == "user_message"]
        assert users[0] == "kept across restarts" and len(users) == 7
        assert users[3] == "after SIGTERM" and users[6] == "after SIGKILL"
    assert sum(1 for line in server.log().splitlines() if RESTARTED in line) == restarts + 2


async def test_a_redis_outage_longer_than_the_lease_ttl_ends_no_run(restartable: Convoy) -> None:
    """Issue 16, item 4: Redis unreachable for longer than the lease TTL while a run streams. The
    owner's lease lapses meanwhile, but nobody else took it (its epoch is unchanged): the owner
    takes it back and carries on, its writes waiting for Redis. The live stream completes with
    every item once; the same owner holds the conversation after. Once thawed (what Redis had
    received then runs), once killed frozen (what it had received is lost) and restarted by serve."""
    server = restartable
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        conv = await new_conversation(client)
        for end in (signal.SIGCONT, signal.SIGKILL):
            text = long_text(f"outage-{end.name}-", 1000)
            run_id, live = await first_item(client, conv, {"input": text})
            await _going(server, conv, run_id)
            owner, epoch = _held(server, conv)
            async with frozen_redis(server, end):
                await asyncio.sleep(OUTAGE_S)  # the outage itself (its length is the scenario), not a synchronisation
            items = await asyncio.wait_for(live, RECOVERY_S + OUTAGE_S)
            _exactly_once(items)
            assert not [i for i in items if i.get("sse_event") == "error"], items[-4:]
            assert text_of(items) == text and stop_of(items) == "end_turn" and items[-1]["message_type"] == "[DONE]"
            run = (await client.get(f"/v1/runs/{run_id}")).json()
            assert run["status"] == "completed", run
            assert _held(server, conv) == (owner, epoch), "the same owner, never re-acquired: no change of owner"
        assert text_of(await stream(client, conv, {"input": "after the outages"})) == "after the outages"


async def test_a_foreground_client_that_leaves_during_an_outage_still_cancels_its_run(restartable: Convoy) -> None:
    """Found by reading the soak's Redis outage: a foreground client that disconnects while Redis is
    unreachable must still have its run cancelled. The API's cancel waits for Redis, as the run's
    owner would, instead of failing at its first try and leaving the run to complete."""
    server = restartable
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        conv = await new_conversation(client)
        received: list[dict[str, Any]] = []
        pid = redis_pid(server)
        try:
            async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json={"input": long_text("left", 1000), "stream_tokens": True}) as source:
                async for sse in source.aiter_sse():
                    received.append(json.loads(sse.data))
                    if len(received) == 20:
                        break
                os.kill(pid, signal.SIGSTOP)  # Redis freezes as the client leaves, mid-run
            await asyncio.sleep(LEAVING_OUTAGE_S)  # the outage itself, not a synchronisation
        finally:
            os.kill(pid, signal.SIGCONT)
        run = await eventually(lambda: _ended(client, received[0]["run_id"]), RECOVERY_S, interval_s=0.1, message="the run to end")
        assert run["status"] == "cancelled", run  # type: ignore[index]
        stored = await read_events(client, f"/v1/runs/{received[0]['run_id']}/stream", {"starting_after": 0})
        _exactly_once(stored)
        assert stop_of(stored) == "cancelled" and [i["message_type"] for i in stored[-2:]] == ["usage_statistics", "[DONE]"]


async def test_an_outage_longer_than_the_owner_waits_fails_its_run_store_unavailable(impatient: Convoy) -> None:
    """Redis frozen for longer than a reader waits and than the owner's patience
    (``CONVOY_STORE_OUTAGE_S``), then killed (serve restarts it). The live reader gives up in
    bounded time with a typed error; the owner's writes give up after its patience, and it ends
    its run ``store_unavailable`` (never ``owner_lost``: it never lost the conversation) once Redis
    is back; the stored stream ends with the terminal sequence, and the conversation goes on."""
    server = impatient
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        conv = await new_conversation(client)
        run_id, live = await first_item(client, conv, {"input": long_text("outage", 1000), "background": True})
        await _going(server, conv, run_id)
        async with frozen_redis(server, signal.SIGKILL) as frozen_at:
            items = await asyncio.wait_for(live, LONG_OUTAGE_S)
            given_up_after = time.monotonic() - frozen_at
            # Twice the idle timeout (3 s) from the first failed check, each check bounded too.
            assert given_up_after < LONG_OUTAGE_S - 1, f"the reader gave up {given_up_after:.1f} s into the outage"
            # Redis is still frozen: this ending is the reader's own, not stored.
            error = next(i for i in items if i.get("sse_event") == "error")
            assert error["error_type"] == "store_unavailable" and items[-1]["message_type"] == "[DONE]"
            await asyncio.sleep(LONG_OUTAGE_S - given_up_after)  # the rest of the outage, not a synchronisation

        run = await eventually(lambda: _ended(client, run_id), RECOVERY_S, interval_s=0.1, message="the owner to end its run")
        failure = run["metadata"]["error"]  # type: ignore[index]
        assert run["status"] == "failed" and failure["error_type"] == "store_unavailable", run  # type: ignore[index]
        assert "unreachable for" in failure["detail"], failure
        stored = await read_events(client, f"/v1/runs/{run_id}/stream", {"starting_after": 0})
        _exactly_once(stored)
        assert [i["message_type"] for i in stored[-3:]] == ["stop_reason", "error_message", "[DONE]"]
        assert stored[-2]["error_type"] == "store_unavailable" and "unreachable for" in stored[-2]["detail"], "the owner's ending"
        after = await asyncio.wait_for(stream(client, conv, {"input": "after the outage"}), RECOVERY_S)
        assert text_of(after) == "after the outage"


async def test_a_conversation_let_go_during_an_outage_takes_its_next_message(impatient: Convoy) -> None:
    """Found by the soak's Redis outage: an activation that passivated while Redis was frozen could
    not let go of its conversation (its lease and its host's entry stayed), so a message accepted
    once Redis was back rang that host, which would not activate the conversation again while the
    lease lingered, and the message waited for a reader to wake it (with none, for ever). Letting
    go now waits for Redis, as an owner's writes do."""
    server = impatient
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        conv = await new_conversation(client)
        assert text_of(await stream(client, conv, {"input": "before"})) == "before"
        pid = redis_pid(server)
        os.kill(pid, signal.SIGSTOP)  # idle from now: it passivates after 1 s, Redis frozen
        try:
            await asyncio.sleep(LEAVING_OUTAGE_S)  # the outage (its lease, 10 s, outlives it), not a synchronisation
        finally:
            os.kill(pid, signal.SIGCONT)
        # A background run nobody reads: only its owner can end it.
        async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json={"input": "after", "background": True, "stream_tokens": True}) as source:
            run_id = json.loads((await anext(source.aiter_sse())).data)["run_id"]
        run = await eventually(lambda: _ended(client, run_id), 6, interval_s=0.1, message="the next message to be taken")
        assert run["status"] == "completed", run  # type: ignore[index]


# -- an API process killed mid-stream ------------------------------------------------------------


async def test_api_process_killed_mid_stream_resumes_through_another(convoy: Convoy, replica: Convoy) -> None:
    victim = start_api_replica(convoy)
    text = long_text("killed", 1500)
    received: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=victim.url, timeout=30) as client:
            conv = await new_conversation(client)
            body = {"input": text, "background": True, "stream_tokens": True}
            with pytest.raises(httpx.TransportError):
                async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json=body) as source:
                    async for sse in source.aiter_sse():
                        # An item of the run's stream has an id of its own; a keepalive ping has
                        # none, and the SSE client reports the last one again for it.
                        if sse.id and (not received or sse.id != str(received[-1]["seq_id"])):
                            received.append(json.loads(sse.data))
                        if len(received) == 20:
                            victim.process.kill()  # SIGKILL: no shutdown, no goodbye
    finally:
        victim.process.kill()
        victim.process.wait()
    assert received and received[-1].get("message_type") != "[DONE]", "killed mid-run"
    run_id, cursor = received[0]["run_id"], received[-1]["seq_id"]
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as other:
        assert (await other.get(f"/v1/runs/{run_id}")).json()["status"] == "running", "the run went on"
        rest = await asyncio.wait_for(read_events(other, f"/v1/runs/{run_id}/stream", {"starting_after": cursor}), 30)
        run = (await other.get(f"/v1/runs/{run_id}")).json()
    items = received + rest
    seqs = [i["seq_id"] for i in items if "seq_id" in i]
    assert seqs == list(range(1, len(seqs) + 1)), "every item exactly once"
    assert [i["message_type"] for i in items[-3:]] == ["stop_reason", "usage_statistics", "[DONE]"]
    assert text_of(items) == text and stop_of(items) == "end_turn"
    assert run["status"] == "completed"


# -- clients that read slowly or never -------------------------------------------------------------

SLOW_ITEMS = 600
SLOW_ITEM_BYTES = 10 * 1024  # a run of ~6 MiB: more than the kernel's socket buffers absorb
LIVE_NEVER_READERS = 3
CATCH_UP_NEVER_READERS = 16


class SlowClient:
    """An SSE client on a raw socket with a tiny receive buffer, which reads only when told to."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._address = (host, int(port))
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._sock.setblocking(False)
        self._http = h11.Connection(h11.CLIENT)

    async def open(self, path: str, body: dict[str, Any]) -> SlowClient:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self._sock, self._address)
        payload = json.dumps(body).encode()
        headers = [("Host", "convoy"), ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        request = self._http.send(h11.Request(method="POST", target=path, headers=headers))
        request += self._http.send(h11.Data(data=payload)) + self._http.send(h11.EndOfMessage())
        await loop.sock_sendall(self._sock, request)
        return self

    async def trickle(self, stop: asyncio.Event) -> None:
        """Read one byte per second until ``stop``."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._http.receive_data(await loop.sock_recv(self._sock, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)  # the client's pace, not a synchronisation

    async def read_all(self) -> list[tuple[str | None, str]]:
        """Read the rest of the response; its SSE events as (id, data)."""
        loop = asyncio.get_running_loop()
        body = bytearray()
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                self._http.receive_data(await loop.sock_recv(self._sock, 1 << 16))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        events = []
        for block in bytes(body).decode().split("\n\n")[:-1]:
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((fields.get("id"), fields["data"]))
        return events

    def close(self) -> None:
        self._sock.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_clients_that_never_read_slow_no_one_and_cost_bounded_memory(
    convoy: Convoy, fake_provider: fp.FakeProvider
) -> None:
    model = unique("gpt")
    pieces = [f"{i:05d}" + "x" * (SLOW_ITEM_BYTES - 6) + " " for i in range(SLOW_ITEMS)]
    frames = fp.split_frames(fp.chat_text(model, pieces, obfuscate=False), 1 << 16)
    fake_provider.script(model, fp.Stream(frames), repeat=True)
    slow: list[SlowClient] = []
    stop = asyncio.Event()
    trickling: asyncio.Task[None] | None = None
    async with httpx.AsyncClient(base_url=convoy.url, timeout=60) as client:
        conv = await provider_conversation(client, f"openai/{model}")
        other = await new_conversation(client)
        baseline = rss_bytes(convoy.process.pid)
        try:
            # The sender never reads its stream (the run is in the background), nor do readers that
            # join while it runs; one reads a byte per second.
            sender = await SlowClient(convoy.url).open(f"/v1/conversations/{conv}/messages", {"input": "go", "background": True, "stream_tokens": True})
            slow.append(sender)

            def accepted() -> list[dict[str, Any]]:
                return httpx.get(f"{convoy.url}/v1/runs", params={"conversation_id": conv}).json()

            run_id = (await asyncio.to_thread(wait_until, accepted, 15, 0.05, "the run to be accepted"))[0]["id"]
            resume = f"/v1/runs/{run_id}/stream"
            for _ in range(LIVE_NEVER_READERS):
                slow.append(await SlowClient(convoy.url).open(resume, {"starting_after": 0}))
            slow.append(await SlowClient(convoy.url).open(resume, {"starting_after": 0}))
            trickling = asyncio.create_task(slow[-1].trickle(stop))

            # Meanwhile another client's stream keeps pace with its run.
            items = await asyncio.wait_for(stream(client, other, {"input": long_text("other", 1000)}), 30)
            assert text_of(items) == long_text("other", 1000)
            completed_at = (await client.get(f"/v1/runs/{items[0]['run_id']}")).json()["completed_at"]
            assert time.time() - datetime.fromisoformat(completed_at).timestamp() < 1.0, "[DONE] came with the run's end"

            def completed() -> bool:
                return bool(httpx.get(f"{convoy.url}/v1/runs/{run_id}").json()["status"] == "completed")

            await asyncio.to_thread(wait_until, completed, 60, 0.1, "the run to complete with nobody reading it")

            # Readers that join the finished run and never read cost a bounded amount of memory: the
            # server holds neither their whole stream nor a copy per reader.
            for _ in range(CATCH_UP_NEVER_READERS):
                slow.append(await SlowClient(convoy.url).open(resume, {"starting_after": 0}))
            full = await asyncio.wait_for(read_events(client, resume, {"starting_after": 0}), 30)  # they were fed alongside
            grown = rss_bytes(convoy.process.pid) - baseline
            owed = len(slow) * sum(len(json.dumps(i)) for i in full)
            assert grown < owed / 4, f"the process grew {grown >> 20} MiB while never-readers are owed {owed >> 20} MiB"

            # A client that finally reads gets everything, once, in order.
            for late in (sender, slow[-1]):
                events = await asyncio.wait_for(late.read_all(), 30)
                assert [int(i) for i, _ in events if i] == list(range(1, len(full) + 1)), "[DONE] has an id too"
                assert events[-1][1] == "[DONE]"
            assert "".join(e.get("content", "") for e in full if e["message_type"] == "assistant_message") == "".join(pieces)
        finally:
            stop.set()
            if trickling is not None:
                await trickling
            for c in slow:
                c.close()


async def test_a_reader_that_never_takes_holds_a_bounded_buffer_and_loses_nothing(redis_url: str) -> None:
    client = async_client(redis_url)
    tailer = StreamTailer(client, block_ms=200)
    await tailer.start()
    key = f"test:{{{uuid.uuid4()}}}"  # its epoch key in the same slot
    await client.set(f"{key}:epoch", 1)
    writer = ChunkWriter(client, stream_key=key, epoch_key=f"{key}:epoch", epoch=1, next_seq=1, maxlen=10_000, ttl_s=60, patience_s=5)
    payload = b"x" * 4096
    try:
        live = tailer.subscribe(key, 0)  # fed item by item as they are published
        for i in range(1000):  # 4 MiB
            await writer.write("data", b"%05d" % i + payload)
        await writer.flush()
        late = tailer.subscribe(key, 0)  # fed by reading the stream, 512 items at a time
        for sub in (live, late):
            await asyncio.to_thread(wait_until, lambda s=sub: s.paused, 10, 0.01, "the reader to be paused")
            assert sub.buffered_bytes <= SUBSCRIPTION_BUFFER_BYTES + len(payload) + 5
        for sub in (live, late):
            got: list[StoredItem] = []
            while len(got) < 1000:
                batch = await sub.get(timeout_s=5)
                assert batch is not None, f"only {len(got)} items arrived"
                got.extend(batch)
            assert [i.seq for i in got] == list(range(1, 1001)), "paused and resumed at its cursor: nothing lost or doubled"
    finally:
        await tailer.stop()
        await client.aclose()


async def test_a_chunk_batch_sent_again_after_its_reply_was_lost_is_not_doubled(redis_url: str) -> None:
    """What the writer relies on to re-send a pipeline whose connection broke mid-flight."""
    client = async_client(redis_url)
    key = f"test:{{{uuid.uuid4()}}}"  # its epoch key in the same slot
    await client.set(f"{key}:epoch", 1)

    async def send(*payloads: bytes) -> None:
        writer = ChunkWriter(
            client, stream_key=key, epoch_key=f"{key}:epoch", epoch=1, next_seq=1, maxlen=100, ttl_s=60, patience_s=5
        )
        for payload in payloads:
            await writer.write("data", payload)
        await writer.flush()

    try:
        await send(b"a", b"b", b"c")
        await send(b"a", b"b", b"c")  # the same batch again: it had landed
        assert [i.payload for i in await read_after(client, key, 0)] == [b"a", b"b", b"c"]
        with pytest.raises(FencedError):  # a different item under a taken id is refused as before
            await send(b"a", b"b", b"x")
        assert [i.payload for i in await read_after(client, key, 0)] == [b"a", b"b", b"c"]
    finally:
        await client.aclose()
