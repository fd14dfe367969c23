"""API keys, tenants and per-key limits, on a server of their own (creating a key ends open mode)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from letta_client import Letta
from letta_client import NotFoundError as LettaNotFound

from tests.conftest import Convoy, start_convoy, stop_convoy, wait_until

CLI_TIMEOUT_S = 60


def convoy_cli(server: Convoy, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``convoy <args>`` against ``server``'s Redis (found through its CONVOY_HOME, as a user would)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "convoy"), *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=check,
    )


def new_key(server: Convoy, *args: str) -> str:
    out = convoy_cli(server, "keys", "create", *args).stdout
    return out.split()[-1]  # the key is the last word of the output


def as_key(server: Convoy, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def send(client: httpx.Client, conversation_id: str, text: str, **extra: object) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], "streaming": False, **extra}
    return client.post(f"/v1/conversations/{conversation_id}/messages", json=body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, private_redis: dict[str, str]) -> Iterator[Convoy]:
    server = start_convoy(tmp_path_factory.mktemp("auth-home"), {"CONVOY_ECHO_DELAY_MS": "20", **private_redis})
    yield server
    assert not stop_convoy(server)


@pytest.fixture(scope="module")
def open_agent(server: Convoy) -> str:
    """An agent created while the server still ran open (before any key existed)."""
    with as_key(server, None) as client:
        return str(client.post("/v1/agents", json={"name": "made-while-open"}).json()["id"])


@pytest.fixture(scope="module")
def acme(server: Convoy, open_agent: str) -> str:
    return new_key(server, "--tenant", "acme", "--name", "acme-ci")


@pytest.fixture(scope="module")
def globex(server: Convoy, acme: str) -> str:
    return new_key(server, "--tenant", "globex")


def test_open_mode_ends_with_the_first_key_without_a_restart(server: Convoy, open_agent: str, acme: str) -> None:
    assert "auth    OPEN" in server.log()
    with as_key(server, None) as anonymous:
        refused = anonymous.get("/v1/agents")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "convoy keys create" in refused.json()["detail"]
        assert anonymous.get("/v1/health").status_code == 200  # health checks need no key
    with as_key(server, "cvy-not-a-key") as wrong:
        assert wrong.get("/v1/agents").json()["detail"] == "unknown or revoked API key"
    with as_key(server, acme) as client:
        assert client.get("/v1/agents").json() == []
        assert client.get(f"/v1/agents/{open_agent}").status_code == 404
    # What was made while open belongs to the default tenant, which a key for it then sees.
    default = new_key(server, "--tenant", "default")
    with as_key(server, default) as client:
        assert [a["id"] for a in client.get("/v1/agents").json()] == [open_agent]


def test_a_tenant_sees_nothing_of_another(server: Convoy, acme: str, globex: str) -> None:
    letta = Letta(base_url=server.url, api_key=acme)
    agent = letta.agents.create(name="acme-agent")
    conversation = letta.conversations.create(agent_id=agent.id)
    with as_key(server, acme) as mine:
        reply = send(mine, conversation.id, "mine only")
        assert reply.status_code == 200, reply.text
        run_id = reply.json()["messages"][0]["run_id"]
        assert mine.get(f"/v1/runs/{run_id}").json()["status"] == "completed"

    with as_key(server, globex) as other:
        not_found = [
            other.get(f"/v1/agents/{agent.id}"),
            other.patch(f"/v1/agents/{agent.id}", json={"name": "stolen"}),
            other.post("/v1/conversations", params={"agent_id": agent.id}),
            other.get("/v1/conversations", params={"agent_id": agent.id}),
            other.get(f"/v1/conversations/{conversation.id}"),
            other.get(f"/v1/conversations/{conversation.id}/messages"),
            send(other, conversation.id, "let me in"),
            other.post(f"/v1/agents/{agent.id}/messages", json={"input": "let me in"}),
            other.post(f"/v1/conversations/{conversation.id}/stream", json={}),
            other.post(f"/v1/conversations/{conversation.id}/cancel"),
            other.post(f"/v1/agents/{agent.id}/messages/cancel"),
            other.get(f"/v1/runs/{run_id}"),
            other.get(f"/v1/runs/{run_id}/steps"),
            other.post(f"/v1/runs/{run_id}/stream", json={}),
            other.get(f"/v1/runs/{run_id}/stream"),
            other.post(f"/v1/runs/{run_id}/cancel"),
            other.get("/v1/runs", params={"agent_id": agent.id}),
            other.get("/v1/runs", params={"conversation_id": conversation.id}),
            other.delete(f"/v1/agents/{agent.id}"),
        ]
        assert [r.status_code for r in not_found] == [404] * len(not_found), [
            (r.request.method, r.request.url.path, r.status_code) for r in not_found if r.status_code != 404
        ]
        assert other.get("/v1/agents").json() == []
        assert other.get("/v1/conversations").json() == []
        assert other.get("/v1/runs").json() == []

    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key=globex, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        chat.chat.completions.create(model=agent.id, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(LettaNotFound):
        Letta(base_url=server.url, api_key=globex).agents.retrieve(agent.id)

    # Nothing was changed by the other tenant, and the owner still has everything.
    assert letta.agents.retrieve(agent.id).name == "acme-agent"
    with as_key(server, acme) as mine:
        assert [a["id"] for a in mine.get("/v1/agents").json()] == [agent.id]
        assert [r["id"] for r in mine.get("/v1/runs").json()] == [run_id]
        texts = [m.get("content") for m in mine.get(f"/v1/conversations/{conversation.id}/messages").json()]
        assert "mine only" in texts


def test_openai_sdk_authenticates_with_its_own_convention(server: Convoy, acme: str) -> None:
    agent = Letta(base_url=server.url, api_key=acme).agents.create(name="chat")
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key=acme, max_retries=0)
    answer = chat.chat.completions.create(model=agent.id, messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == "hello there"
    anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="cvy-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        anonymous.chat.completions.create(model=agent.id, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["message"] == "unknown or revoked API key"  # type: ignore[index]


def test_models_are_listed_with_a_key_and_only_what_has_credentials(server: Convoy, acme: str) -> None:
    """This server has no provider key: both listings show echo/echo alone, and only to a key."""
    listed = openai.OpenAI(base_url=f"{server.url}/v1", api_key=acme, max_retries=0).models.list()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [("echo/echo", "model", "echo")]
    assert [m.handle for m in Letta(base_url=server.url, api_key=acme).models.list()] == ["echo/echo"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="cvy-wrong", max_retries=0).models.list()


def test_keys_are_listed_without_secrets_and_revoked_at_once(server: Convoy, acme: str) -> None:
    doomed = new_key(server, "--tenant", "acme", "--name", "doomed")
    with as_key(server, doomed) as client:
        assert client.get("/v1/agents").status_code == 200
    listing = convoy_cli(server, "keys", "list").stdout
    assert "name=doomed" in listing and "tenant=acme" in listing
    assert doomed not in listing and acme not in listing
    key_id = next(line.split()[0] for line in listing.splitlines() if "name=doomed" in line)
    assert "revoked" in convoy_cli(server, "keys", "revoke", key_id).stdout
    with as_key(server, doomed) as client:
        assert client.get("/v1/agents").status_code == 401
    assert key_id not in convoy_cli(server, "keys", "list").stdout
    again = convoy_cli(server, "keys", "revoke", key_id, check=False)
    assert again.returncode != 0 and f"no API key {key_id}" in again.stderr
    bad = convoy_cli(server, "keys", "create", "--tenant", "Not A Tenant", check=False)
    assert bad.returncode == 2 and "tenant" in bad.stderr


def test_a_key_over_its_request_rate_gets_429_with_retry_after(server: Convoy) -> None:
    key = new_key(server, "--tenant", "acme", "--requests-per-minute", "5")
    with as_key(server, key) as client:
        statuses = [client.get("/v1/agents").status_code for _ in range(5)]
        assert statuses == [200] * 5
        refused = client.get("/v1/agents")
        assert refused.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 12  # one request regained every 12 s
        assert "request rate" in refused.json()["detail"]


def test_a_key_over_its_concurrent_runs_gets_429_until_one_ends(server: Convoy) -> None:
    key = new_key(server, "--tenant", "acme", "--concurrent-runs", "1")
    with as_key(server, key) as client:
        agent = client.post("/v1/agents", json={"name": "busy"}).json()["id"]
        first = client.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
        second = client.post("/v1/conversations", params={"agent_id": agent}).json()["id"]
        run_id = _start_in_background(client, first, " ".join(["word"] * 400))
        refused = send(client, second, "me too")
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "unfinished runs" in refused.json()["detail"]
        client.post(f"/v1/runs/{run_id}/cancel").raise_for_status()
        wait_until(lambda: client.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled", 10, message="cancelled")
        # The slot came back with the run's end.
        assert send(client, second, "my turn now").status_code == 200


def _start_in_background(client: httpx.Client, conversation_id: str, text: str) -> str:
    """Start a background run, read its first item, and leave (the run goes on)."""
    body = {"messages": [{"role": "user", "content": text}], "background": True}
    with client.stream("POST", f"/v1/conversations/{conversation_id}/messages", json=body) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: "):
                return str(json.loads(line[6:])["run_id"])
    raise AssertionError("the stream ended before its first item")


def test_serving_a_non_loopback_address_without_a_key_is_refused(tmp_path: Path, server: Convoy) -> None:
    env = {k: v for k, v in server.env.items() if k not in ("CONVOY_HOME", "CONVOY_REDIS_URL")}
    env["CONVOY_HOME"] = str(tmp_path)  # a Redis of its own, where no key was ever created
    started = time.monotonic()
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "convoy"), "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refusing to listen on 0.0.0.0 with no API key" in refused.stderr
    assert time.monotonic() - started < CLI_TIMEOUT_S
