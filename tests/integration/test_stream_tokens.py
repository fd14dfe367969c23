"""Stream tokens: what lets a browser's ``EventSource`` read a stream with keys on, and nothing more.

On a server with keys on (``keyed_convoy``): a token minted by an authenticated call opens its run's
GET stream with no header, resumes with ``Last-Event-ID``, and opens nothing else: not another run,
not another tenant's run, not a non-stream route; forged, malformed and expired tokens are refused
with 401 and a message that says why. The secret is shared through Redis, so a token minted on one
replica is accepted by another.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from runtime.store.stream_tokens import StreamTokens
from tests.conftest import Convoy, KeyedConvoy, redis_snapshot


def start_run(client: httpx.Client, text: str = "one two three four", conversation: str | None = None) -> tuple[str, str]:
    """(conversation id, run id) of a finished echo turn."""
    if conversation is None:
        agent = client.post("/v1/agents", json={"name": "tokens"}).json()["id"]
        conversation = client.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
    reply = client.post(f"/v1/conversations/{conversation}/messages", json={"input": text, "streaming": False})
    assert reply.status_code == 200, reply.text
    return conversation, reply.json()["messages"][0]["run_id"]


def read_stream(url: str, run_id: str, token: str, headers: dict[str, str] | None = None) -> list[dict[str, Any] | str]:
    """Every event of a GET stream opened with no API key, only the token."""
    events: list[dict[str, Any] | str] = []
    with httpx.stream("GET", f"{url}/v1/runs/{run_id}/stream", params={"token": token}, headers=headers, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def refused(reply: httpx.Response, words: str) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.json()["code"] == "invalid_stream_token", reply.text
    assert words in reply.json()["detail"], reply.json()["detail"]


def test_a_run_token_opens_its_stream_without_a_key_and_resumes(keyed_convoy: KeyedConvoy) -> None:
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        _, run_id = start_run(acme)
        minted = acme.post(f"/v1/runs/{run_id}/stream-token")
        assert minted.status_code == 200, minted.text
        body = minted.json()
        assert body["run_id"] == run_id and 0 < body["expires_in_s"] <= 300 and body["token"].startswith("cvst-")

    anonymous = httpx.get(f"{keyed_convoy.url}/v1/runs/{run_id}/stream", timeout=30)
    assert anonymous.status_code == 401, "without the token, the stream needs a key"
    events = read_stream(keyed_convoy.url, run_id, body["token"])
    assert events[-1] == "[DONE]"
    text = "".join(e["content"] for e in events if isinstance(e, dict) and e["message_type"] == "assistant_message")
    assert text == "one two three four"
    # An EventSource reconnecting sends Last-Event-ID to the same URL, token included.
    resumed = read_stream(keyed_convoy.url, run_id, body["token"], headers={"Last-Event-ID": "3"})
    assert [e["seq_id"] for e in resumed if isinstance(e, dict)] == [e["seq_id"] for e in events if isinstance(e, dict)][3:]


def test_a_token_opens_only_its_own_run_or_conversation(keyed_convoy: KeyedConvoy) -> None:
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        conversation, first = start_run(acme)
        _, second = start_run(acme, conversation=conversation)
        _, elsewhere = start_run(acme)
        run_token = acme.post(f"/v1/runs/{first}/stream-token").json()["token"]
        conversation_token = acme.post(f"/v1/conversations/{conversation}/stream-token").json()
    assert conversation_token["conversation_id"] == conversation

    refused(httpx.get(f"{keyed_convoy.url}/v1/runs/{second}/stream", params={"token": run_token}), f"is for run {first}")
    # A conversation's token opens each of its runs, and no run of another conversation.
    for run_id in (first, second):
        assert read_stream(keyed_convoy.url, run_id, conversation_token["token"])[-1] == "[DONE]"
    refused(
        httpx.get(f"{keyed_convoy.url}/v1/runs/{elsewhere}/stream", params={"token": conversation_token["token"]}),
        f"is for conversation {conversation}",
    )


def test_a_tenant_cannot_mint_or_use_a_token_for_another_tenants_run(keyed_convoy: KeyedConvoy) -> None:
    with keyed_convoy.client(keyed_convoy.globex) as globex:
        theirs_conversation, theirs = start_run(globex)
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        assert acme.post(f"/v1/runs/{theirs}/stream-token").status_code == 404
        assert acme.post(f"/v1/conversations/{theirs_conversation}/stream-token").status_code == 404
        _, mine = start_run(acme)
        token = acme.post(f"/v1/runs/{mine}/stream-token").json()["token"]
    # Another tenant's run is not found, as on every route (its existence is not told).
    other = httpx.get(f"{keyed_convoy.url}/v1/runs/{theirs}/stream", params={"token": token})
    assert other.status_code == 404 and not other.text.count("data:"), other.text

    # Rewriting the claims (another tenant, another run) breaks the signature.
    claims, signature = token.removeprefix("cvst-").split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    decoded.update(tenant="globex", id=theirs)
    forged_claims = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    forged = f"cvst-{forged_claims}.{signature}"
    refused(httpx.get(f"{keyed_convoy.url}/v1/runs/{theirs}/stream", params={"token": forged}), "signature does not match")
    for bad in ("cvst-", "cvst-abc.def", "not-a-token", "cvst-" + "a" * 50):
        refused(httpx.get(f"{keyed_convoy.url}/v1/runs/{mine}/stream", params={"token": bad}), "stream token")


async def test_an_expired_token_is_refused_with_a_clear_message(keyed_convoy: KeyedConvoy) -> None:
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        _, run_id = start_run(acme)
        acme.post(f"/v1/runs/{run_id}/stream-token")  # the server's secret exists from here on
    redis = aioredis.Redis.from_url(keyed_convoy.server.redis_url)
    try:
        # Minted with the servers' own secret ten minutes ago, for a five-minute lifetime.
        old, _ = await StreamTokens(redis, ttl_s=300).mint("run", run_id, "acme", now_s=time.time() - 600)
    finally:
        await redis.aclose()
    reply = httpx.get(f"{keyed_convoy.url}/v1/runs/{run_id}/stream", params={"token": old})
    refused(reply, "expired")
    assert "stream-token" in reply.json()["detail"], "it says how to get a new one"


def test_a_token_opens_no_other_route(keyed_convoy: KeyedConvoy) -> None:
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        conversation, run_id = start_run(acme)
        token = acme.post(f"/v1/runs/{run_id}/stream-token").json()["token"]
    url = keyed_convoy.url
    elsewhere = [
        httpx.get(f"{url}/v1/runs/{run_id}", params={"token": token}),
        httpx.get(f"{url}/v1/runs/{run_id}/steps", params={"token": token}),
        httpx.post(f"{url}/v1/runs/{run_id}/stream", params={"token": token}, json={}),
        httpx.post(f"{url}/v1/runs/{run_id}/cancel", params={"token": token}),
        httpx.post(f"{url}/v1/runs/{run_id}/stream-token", params={"token": token}),
        httpx.get(f"{url}/v1/conversations/{conversation}/messages", params={"token": token}),
        httpx.get(f"{url}/v1/agents", headers={"Authorization": f"Bearer {token}"}),
        httpx.post(
            f"{url}/v1/conversations/{conversation}/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={"input": "let me in", "streaming": False},
        ),
    ]
    for reply in elsewhere:
        refused(reply, "opens only GET /v1/runs/{id}/stream")
    with keyed_convoy.client(keyed_convoy.acme) as acme:
        assert len(acme.get(f"/v1/conversations/{conversation}/messages").json()) == 2, "nothing was sent"


@pytest.mark.slow
def test_a_token_minted_on_one_replica_opens_the_stream_on_another(convoy: Convoy, replica: Convoy) -> None:
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        _, run_id = start_run(client, "minted here read there")
        token = client.post(f"/v1/runs/{run_id}/stream-token").json()["token"]
    events = read_stream(replica.url, run_id, token)
    assert events[-1] == "[DONE]"
    refused(httpx.get(f"{replica.url}/v1/runs/{run_id}/stream", params={"token": token[:-4] + "AAAA"}), "signature")


def test_a_refused_token_writes_nothing(convoy: Convoy, store: redis.Redis) -> None:
    """Checking a token never writes, not even the secret a first mint makes."""
    with httpx.Client(base_url=convoy.url, timeout=30) as client:
        _, run_id = start_run(client)
    claims = base64.urlsafe_b64encode(json.dumps({"scope": "run", "id": run_id, "tenant": "default", "exp": 2**40}).encode())
    forged = f"cvst-{claims.rstrip(b'=').decode()}.{base64.urlsafe_b64encode(bytes(32)).rstrip(b'=').decode()}"
    before = redis_snapshot(store)
    refused(httpx.get(f"{convoy.url}/v1/runs/{run_id}/stream", params={"token": forged}), "not valid")
    refused(httpx.get(f"{convoy.url}/v1/runs/{run_id}/stream", params={"token": "cvst-nothing"}), "malformed")
    assert redis_snapshot(store) == before
