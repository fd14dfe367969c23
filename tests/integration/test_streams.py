"""Resumable streams through the real server: cursors, replicas, disconnects, expiry, idempotency, load."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import redis
from httpx_sse import aconnect_sse

from runtime.store import keyspace
from tests.conftest import Convoy, eventually
from tests.integration.test_actors import first_item, long_text, new_conversation, stop_of, text_of

Event = tuple[str | None, str | None, str]  # (id, event, data)


async def read(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[Event]:
    """Every SSE event of one response, read until the server closes it."""
    events: list[Event] = []
    async with aconnect_sse(client, method, url, **kw) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append((sse.id or None, sse.event if sse.event != "message" else None, sse.data))
    return events


def stored(events: list[Event]) -> list[Event]:
    """Without keepalive pings: they carry no ``id:``, not being part of the run's stream. An SSE
    client reports the last event id it saw for an event without one (the spec's "last event ID",
    as ``httpx-sse`` does), so a ping after an item shows that item's id again: an event is the
    stream's own when its id is there and new."""
    own: list[Event] = []
    last: str | None = None
    for event in events:
        if event[0] is not None and event[0] != last:
            own.append(event)
        last = event[0]
    return own


async def finished_run(client: httpx.AsyncClient, words: int = 12) -> tuple[str, str, list[Event]]:
    conv = await new_conversation(client)
    events = await read(client, "POST", f"/v1/conversations/{conv}/messages", json={"input": long_text("f", words), "stream_tokens": True})
    run_id = json.loads(events[0][2])["run_id"]
    return conv, run_id, stored(events)


async def test_resume_at_every_cursor_of_a_finished_run(client: httpx.AsyncClient) -> None:
    _, run_id, full = await finished_run(client)
    assert full[-1][2] == "[DONE]"
    for cursor in range(len(full) + 1):
        resumed = stored(await read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": cursor}))
        assert resumed == full[cursor:], f"cursor {cursor}"
        if cursor == len(full):  # past the last event: an EventSource is told to stop reconnecting
            ended = await client.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": str(cursor)})
            assert ended.status_code == 204, ended.text
            continue
        by_header = stored(
            await read(client, "GET", f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": str(cursor)})
        )
        assert by_header == full[cursor:], f"Last-Event-ID {cursor}"


async def test_resume_a_live_run_at_several_cursors_gives_the_same_items_once(
    client: httpx.AsyncClient, store: redis.Redis
) -> None:
    conv = await new_conversation(client)
    run_id, original = await first_item(client, conv, {"input": long_text("live", 600), "background": True})
    await eventually(lambda: store.xlen(keyspace.run_stream(conv, run_id)) >= 60, 15, message="the run to get going")
    cursors = [0, 1, 5, 50]
    resumes = [
        asyncio.create_task(read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": c}))
        for c in cursors
    ]
    await original
    full = stored(await read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": 0}))
    for cursor, task in zip(cursors, resumes, strict=True):
        assert stored(await task) == full[cursor:], f"cursor {cursor}"
    assert len(full) > 600


async def test_resume_through_a_second_api_process(client: httpx.AsyncClient, replica: Convoy) -> None:
    conv, run_id, full = await finished_run(client)
    async with httpx.AsyncClient(base_url=replica.url, timeout=60) as other:
        resumed = stored(await read(other, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": 2}))
        assert resumed == full[2:]
        by_conversation = stored(await read(other, "POST", f"/v1/conversations/{conv}/stream", json={"run_id": run_id}))
        assert by_conversation == full
        ended = await other.post(f"/v1/conversations/{conv}/stream", json={})
        assert ended.status_code == 400, "without a run id it resumes only a running run, as Letta"
        # The replica also sends: the conversation's owner is found through the directory.
        items = await read(other, "POST", f"/v1/conversations/{conv}/messages", json={"input": "via replica"})
        texts = [json.loads(d)["content"] for _, e, d in items if d != "[DONE]" and '"assistant_message"' in d]
        assert "".join(texts) == "via replica"


async def test_two_replicas_racing_to_activate_one_conversation(client: httpx.AsyncClient, replica: Convoy, store: redis.Redis) -> None:
    async with httpx.AsyncClient(base_url=replica.url, timeout=60) as other:
        for attempt in range(5):
            conv = await new_conversation(client)
            replies = await asyncio.gather(
                client.post(f"/v1/conversations/{conv}/messages", json={"input": f"from one {attempt}", "streaming": False}),
                other.post(f"/v1/conversations/{conv}/messages", json={"input": f"from two {attempt}", "streaming": False}),
            )
            texts = sorted(r.json()["messages"][0]["content"] for r in replies)
            assert texts == sorted([f"from one {attempt}", f"from two {attempt}"])
            run_ids = [r.json()["messages"][0]["run_id"] for r in replies]
            owners = {store.hget(keyspace.run(conv, rid), "owner") for rid in run_ids}
            assert len(owners) == 1, f"one activation ran both turns: {owners}"


async def test_foreground_disconnect_cancels_the_run(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    body = {"input": long_text("fg"), "background": False, "stream_tokens": True}
    async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json=body) as source:
        async for sse in source.aiter_sse():
            run_id = json.loads(sse.data)["run_id"]
            if json.loads(sse.data)["seq_id"] >= 5:
                break  # leave mid-run: closing the response disconnects

    async def cancelled() -> dict[str, Any] | None:
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        return run if run["status"] == "cancelled" else None

    run = await eventually(cancelled, 10, interval_s=0.05, message=f"run {run_id} to be cancelled")
    assert run["stop_reason"] == "cancelled"
    # The conversation is free for the next message at once.
    assert text_of(await _stream(client, conv, "next")) == "next"


async def test_background_disconnect_keeps_running_and_resume_gets_everything(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    text = long_text("bg", 400)
    got: list[Event] = []
    async with aconnect_sse(client, "POST", f"/v1/conversations/{conv}/messages", json={"input": text, "background": True, "stream_tokens": True}) as source:
        async for sse in source.aiter_sse():
            got.append((sse.id, None, sse.data))
            if len(got) >= 10:
                break
    first = stored(got)
    run_id = json.loads(first[0][2])["run_id"]
    cursor = int(first[-1][0])
    rest = stored(await read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": cursor}))
    items = [json.loads(d) for _, _, d in first + rest if d != "[DONE]"]
    assert [i["seq_id"] for i in items] == list(range(1, len(items) + 1)), "nothing lost, nothing twice"
    assert text_of(items) == text and stop_of(items) == "end_turn"
    assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "completed"


async def _stream(client: httpx.AsyncClient, conv: str, text: str | None, **extra: Any) -> list[dict[str, Any]]:
    body = {"input": text, "stream_tokens": True, **extra} if text is not None else extra
    events = await read(client, "POST", f"/v1/conversations/{conv}/messages", json=body)
    return [json.loads(d) for _, _, d in events if d != "[DONE]"]


async def test_trimmed_and_expired_cursors_are_refused_not_skipped(client: httpx.AsyncClient, store: redis.Redis) -> None:
    conv, run_id, full = await finished_run(client, words=30)
    stream_key = keyspace.run_stream(conv, run_id)
    store.xtrim(stream_key, minid="0-10", approximate=False)  # what MAXLEN trimming does to a long run
    gone = await client.post(f"/v1/runs/{run_id}/stream", json={"starting_after": 3})
    assert gone.status_code == 410 and "trimmed" in gone.json()["detail"]
    assert stored(await read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": 9})) == full[9:]

    store.delete(stream_key)  # what the TTL does eventually
    gone = await client.post(f"/v1/runs/{run_id}/stream", json={"starting_after": 0})
    assert gone.status_code == 410 and "expired" in gone.json()["detail"]
    assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "completed"


async def test_bad_cursors_are_clear_4xx(client: httpx.AsyncClient) -> None:
    _, run_id, full = await finished_run(client)
    for body in ({"starting_after": -1}, {"starting_after": 10**30}, {"starting_after": "x"}):
        assert (await client.post(f"/v1/runs/{run_id}/stream", json=body)).status_code == 422
    past = await client.post(f"/v1/runs/{run_id}/stream", json={"starting_after": len(full) + 5})
    assert past.status_code == 400 and "past the end" in past.json()["detail"]
    bad_header = await client.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "abc"})
    assert bad_header.status_code == 400
    missing = await client.post(f"/v1/runs/run-{uuid.uuid4()}/stream", json={})
    assert missing.status_code == 404


async def _ownerless_run(client: httpx.AsyncClient, store: redis.Redis) -> tuple[str, str]:
    """A run whose producer is gone for good: running, one item, and no process owning it."""
    run_id = f"run-{uuid.uuid4()}"
    conv = await new_conversation(client)
    store.hset(keyspace.run(conv, run_id), mapping={"status": "running"})
    store.hset(keyspace.run(conv, run_id), "doc", json.dumps({"id": run_id, "agent_id": "agent-x", "conversation_id": conv, "created_at": "2026-01-01T00:00:00Z"}))
    store.set(keyspace.run_ref(run_id), conv)
    store.xadd(keyspace.run_stream(conv, run_id), {"k": "data", "p": json.dumps({"message_type": "ping", "run_id": run_id, "seq_id": 1})}, id="0-1")
    return conv, run_id


async def test_a_reader_whose_stream_vanishes_ends_with_an_error(client: httpx.AsyncClient, store: redis.Redis) -> None:
    conv, run_id = await _ownerless_run(client, store)
    async with aconnect_sse(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": 0}) as source:
        events = source.aiter_sse()
        first = await anext(events)
        assert first.id == "1"
        store.delete(keyspace.run_stream(conv, run_id))  # expired under a waiting reader
        rest = [sse async for sse in events]
    error = next(e for e in rest if e.event == "error")
    assert json.loads(error.data)["error_type"] == "stream_lost"
    assert rest[-1].data == "[DONE]"
    assert all(e.id == "1" for e in rest), "made-up items carry no id: the cursor stays at the last stored item"


async def test_a_run_left_outside_any_mailbox_is_ended_for_its_readers(client: httpx.AsyncClient, store: redis.Redis) -> None:
    _conv, run_id = await _ownerless_run(client, store)
    started = time.monotonic()
    events = await asyncio.wait_for(read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": 1}), 30)
    error = next(json.loads(d) for _, e, d in events if e == "error")
    assert error["error_type"] == "owner_lost"
    assert [e[0] for e in events if e[0]] == ["2", "3", "4"], "the ending is stored: stop_reason, error, [DONE]"
    assert time.monotonic() - started < 15  # CONVOY_STREAM_IDLE_TIMEOUT_S=3 plus a ping interval
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "failed" and run["stop_reason"] == "error"


async def test_same_otid_joins_the_existing_run(client: httpx.AsyncClient, store: redis.Redis) -> None:
    conv = await new_conversation(client)
    body = {"messages": [{"role": "user", "content": "only once", "otid": str(uuid.uuid4())}]}
    first, second = await asyncio.gather(_stream(client, conv, None, **body), _stream(client, conv, None, **body))
    assert first[0]["run_id"] == second[0]["run_id"]
    assert text_of(first) == text_of(second) == "only once"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    one = await client.post(f"/v1/conversations/{conv}/messages", json={"input": "keyed", "streaming": False}, headers=headers)
    two = await client.post(f"/v1/conversations/{conv}/messages", json={"input": "keyed", "streaming": False}, headers=headers)
    assert one.json()["messages"][0]["run_id"] == two.json()["messages"][0]["run_id"]
    history = (await client.get(f"/v1/conversations/{conv}/messages", params={"order": "asc"})).json()
    assert [m["content"] for m in history if m["message_type"] == "user_message"] == ["only once", "keyed"]
    resumed = stored(await read(client, "POST", f"/v1/conversations/{conv}/stream", json={"otid": body["messages"][0]["otid"]}))
    assert json.loads(resumed[0][2])["run_id"] == first[0]["run_id"]
    # The retries left no trace: the conversation's index holds exactly its two runs.
    assert sorted(store.zrange(keyspace.conversation_runs(conv), 0, -1)) == sorted([first[0]["run_id"], one.json()["messages"][0]["run_id"]])


async def test_runs_list_and_history_pages(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    for i in range(3):
        await client.post(f"/v1/conversations/{conv}/messages", json={"input": f"turn {i}", "streaming": False})
    runs = (await client.get("/v1/runs", params={"conversation_id": conv})).json()
    assert len(runs) == 3 and all(r["status"] == "completed" for r in runs)
    assert [r["created_at"] for r in runs] == sorted((r["created_at"] for r in runs), reverse=True)
    assert (await client.get("/v1/runs", params={"conversation_id": conv, "active": "true"})).json() == []
    assert len((await client.get("/v1/runs", params={"conversation_id": conv, "statuses": ["completed"], "limit": 2})).json()) == 2
    history = (await client.get(f"/v1/conversations/{conv}/messages", params={"order": "asc"})).json()
    assert [m["message_type"] for m in history] == ["system_message"] + ["user_message", "assistant_message"] * 3
    page = (await client.get(f"/v1/conversations/{conv}/messages", params={"order": "asc", "after": history[2]["id"], "limit": 2})).json()
    assert [m["id"] for m in page] == [history[3]["id"], history[4]["id"]]
    newest = (await client.get(f"/v1/conversations/{conv}/messages", params={"limit": 1})).json()
    assert newest[0]["id"] == history[-1]["id"], "newest first by default, as Letta"


async def test_a_thousand_concurrent_sse_clients_on_one_api_worker(convoy: Convoy) -> None:
    limits = httpx.Limits(max_connections=1100, max_keepalive_connections=1100)
    async with httpx.AsyncClient(base_url=convoy.url, timeout=120, limits=limits) as client:
        runs = []
        for i in range(20):
            conv = await new_conversation(client)
            reply = await client.post(
                f"/v1/conversations/{conv}/messages", json={"input": long_text(f"m{i}-", 300), "streaming": False}
            )
            runs.append((reply.json()["messages"][0]["run_id"], reply.json()["messages"][0]["content"]))
        readers = [
            read(client, "POST", f"/v1/runs/{run_id}/stream", json={"starting_after": 0, "include_pings": False})
            for _ in range(50)
            for run_id, _ in runs
        ]
        results = await asyncio.gather(*readers, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} readers failed, e.g. {errors[0]!r}"
    expected = dict(runs)
    for events in results:
        items = [json.loads(d) for _, _, d in events if d != "[DONE]"]  # type: ignore[union-attr]
        assert events[-1][2] == "[DONE]"  # type: ignore[index]
        assert text_of(items) == expected[items[0]["run_id"]]
