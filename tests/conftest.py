"""Shared fixtures: real infrastructure only.

- ``redis_url``: a real embedded Redis (the same Valkey binary ``convoy serve`` uses), one per session.
- ``convoy``: a real ``convoy serve`` subprocess (embedded Redis, local Ray, hosts, uvicorn), one per
  session, started exactly as a user would start it; its teardown checks that Ctrl-C leaves no
  process behind.

``--redis-cluster`` runs the same tests against a Redis Cluster: three Valkey primaries started for
the session (``bench.rediscluster``), which ``redis_url`` then names (``redis+cluster://...``) and the
session's ``convoy`` server (and its replica) uses; ``private_redis`` gives a module's own server a
cluster of its own. Only the tests that reach Redis through those fixtures run then (other servers a
test starts for itself keep their own embedded Redis, so that run would repeat the first), minus
the ones marked ``single_redis`` (they exercise one server's connection: a proxy in front of it,
its process frozen or killed) and the modules in ``NOT_ON_CLUSTER``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from bench import free_port, wait_until
from bench.rediscluster import LocalCluster
from bench.upstream import FakeProvider
from runtime.settings import Settings
from runtime.store.connection import connect, is_cluster_url
from runtime.store.embedded import EmbeddedRedis

SERVE_START_TIMEOUT_S = 120.0
SERVE_STOP_TIMEOUT_S = 60.0


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    timeout_s: float,
    *,
    interval_s: float = 0.01,
    message: str = "condition",
) -> object:
    """``wait_until`` on the event loop: await ``condition`` (a function, or a coroutine function)
    until it returns a truthy value (returned), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


def descendants(pid: int) -> set[int]:
    """All live descendant pids of ``pid`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


CLUSTER_FIXTURES = frozenset({"convoy", "replica", "redis_url", "redis_cluster", "private_redis"})
# Modules whose subject is not what Redis holds, left out of the cluster run (it stays a few minutes,
# and the whole suite within CI's budget): provider wire formats and errors (test_providers), input
# refused at the edge (test_hostile, test_bad_input), the agent loop and the API's shapes (test_agent_loop,
# test_chat_completions, test_model_settings, test_sse_wire, test_agent_routes, test_letta_parity).
NOT_ON_CLUSTER = frozenset(
    {
        "test_providers.py",
        "test_hostile.py",
        "test_bad_input.py",
        "test_agent_loop.py",
        "test_chat_completions.py",
        "test_model_settings.py",
        "test_sse_wire.py",
        "test_agent_routes.py",
        "test_letta_parity.py",
    }
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        help="run the tests that reach Redis through the shared fixtures against a local 3-primary Redis Cluster",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--redis-cluster"):
        return
    kept = [
        i
        for i in items
        if CLUSTER_FIXTURES & set(getattr(i, "fixturenames", ()))
        and not i.get_closest_marker("single_redis")
        and i.path.name not in NOT_ON_CLUSTER
    ]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | None]:
    """The session's Redis Cluster with ``--redis-cluster`` (else None)."""
    if not request.config.getoption("--redis-cluster"):
        yield None
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_url(redis_cluster: LocalCluster | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if redis_cluster is not None:
        yield redis_cluster.url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-home"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def private_redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """For a module whose server must have a Redis of its own (its API keys close open mode for
    everyone on it): with ``--redis-cluster`` a cluster of its own, as ``CONVOY_REDIS_URL`` settings
    to start that server with; else no settings (the server's embedded Redis)."""
    if not request.config.getoption("--redis-cluster"):
        yield {}
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("private-cluster")).start()
    yield {"CONVOY_REDIS_URL": cluster.url}
    cluster.stop()


def async_client(url: str):  # type: ignore[no-untyped-def]
    """Convoy's own client for ``url`` (one server's, or a cluster's)."""
    return connect(Settings(redis_url=url))


def sync_client(url: str, **options: object) -> redis.Redis:
    """A plain synchronous client for checking what was written (a cluster client for a cluster URL)."""
    if is_cluster_url(url):
        host, port = url.split("://", 1)[1].split(",")[0].rsplit(":", 1)
        return redis.RedisCluster(host=host, port=int(port), **options)  # type: ignore[return-value,arg-type]
    return redis.Redis.from_url(url, **options)  # type: ignore[arg-type]


@dataclass
class Convoy:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def redis_url(self) -> str:
        return self.env.get("CONVOY_REDIS_URL") or (self.home / "redis" / "url").read_text().strip()

    @property
    def ray_address(self) -> str:
        for line in self.log().splitlines():
            if line.startswith("ray ") and " at " in line:
                return line.rsplit(" at ", 1)[1].strip()
        raise AssertionError("convoy serve did not print its Ray address")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _spawn(command: str, home: Path, env: dict[str, str], log_name: str) -> Convoy:
    """Start ``convoy <command>`` on a free port of its own choosing (``--port 0``: no other process
    can take it between its choice and its use) and wait (bounded) until it answers healthy."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "convoy"), command, "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Convoy(url="", home=home, process=process, log_path=log_path, env=env)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"convoy {command} exited early ({process.returncode}):\n{server.log()}")
        if not server.url:
            printed = re.search(r"^api .*listening on (http://\S+)", server.log(), re.MULTILINE)
            if printed is None:
                return False
            server.url = printed[1]
        try:
            return httpx.get(f"{server.url}/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, SERVE_START_TIMEOUT_S, interval_s=0.2, message=f"convoy {command} to become healthy")
    return server


def _clean_env() -> dict[str, str]:
    # Google's variables too: GOOGLE_API_KEY would win over the tests' GEMINI_API_KEY, and
    # GOOGLE_GENAI_USE_VERTEXAI would send google/... models to Vertex AI.
    google = ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION")
    return {k: v for k, v in os.environ.items() if not k.startswith(("CONVOY_", "RAY_ADDRESS", *google))}


def start_convoy(home: Path, env_overrides: dict[str, str] | None = None) -> Convoy:
    env = _clean_env()
    env.update(
        {
            "CONVOY_HOME": str(home),
            "CONVOY_ECHO_DELAY_MS": "2",
            "CONVOY_IDLE_PASSIVATE_S": "2",
            "CONVOY_PING_INTERVAL_S": "1",
            "CONVOY_STREAM_IDLE_TIMEOUT_S": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_overrides or {})
    return _spawn("serve", home, env, "serve.log")


def stop_convoy(convoy: Convoy) -> set[int]:
    """Ctrl-C the server; returns the pids it had started that are still alive afterwards."""
    started = descendants(convoy.process.pid)
    convoy.process.send_signal(signal.SIGINT)
    try:
        convoy.process.wait(timeout=SERVE_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        convoy.process.kill()
        raise
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not any(alive(p) for p in started), 30, interval_s=0.2, message="children to exit")
    return {p for p in started if alive(p)}


# The models CONVOY_PROVIDERS configures for its provider ``listed`` (GET /v1/models lists them).
LISTED_MODELS = ("alpha-1", "beta-2")
# What the fake's own GET /models answers, read by provider ``compat`` (set once: Convoy keeps a
# server's list for a minute, so a test changing it would see whatever an earlier test cached).
COMPAT_MODELS = ("qwen-7b", "llama-8b")

# Deadlines and retries of provider calls, short enough for tests to exercise them quickly.
PROVIDER_POLICY_ENV = {
    "CONVOY_LLM_CONNECT_TIMEOUT_S": "2",
    "CONVOY_LLM_FIRST_TOKEN_TIMEOUT_S": "3",
    "CONVOY_LLM_IDLE_TIMEOUT_S": "2",
    "CONVOY_LLM_MAX_RETRIES": "1",
    "CONVOY_LLM_STREAM_RETRIES": "1",
}


# Server tools for agent-loop tests; every process of the server (API, hosts) imports them.
TOOLS_ENV = {"CONVOY_TOOL_MODULES": "tests.fakes.tools", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    """Local servers speaking OpenAI Chat, OpenAI Responses, Anthropic Messages and Gemini wire formats."""
    fake = FakeProvider()
    fake.listed_models = list(COMPAT_MODELS)
    with fake.start():
        yield fake


def provider_env(fake: FakeProvider) -> dict[str, str]:
    """What points a Convoy process at the fake providers: the SDKs' own variables, plus named
    OpenAI-compatible providers ``compat``, ``listed`` (with a configured model list), and
    ``unreachable`` whose port nothing listens on."""
    return {
        "OPENAI_API_KEY": "sk-test-openai",
        "OPENAI_BASE_URL": fake.openai_base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
        "GEMINI_API_KEY": "gk-test-gemini",
        "GOOGLE_GEMINI_BASE_URL": fake.gemini_base_url,
        "CONVOY_PROVIDERS": json.dumps(
            {
                "compat": {"base_url": f"{fake.url}/compat/v1"},  # lists what the fake's GET /models answers
                "listed": {"base_url": f"{fake.url}/listed/v1", "models": list(LISTED_MODELS)},
                "unreachable": {"base_url": f"http://127.0.0.1:{free_port()}/v1"},  # nothing listens there
            }
        ),
        "CONVOY_DEFAULT_MODEL": "echo/echo",
        **PROVIDER_POLICY_ENV,
    }


@pytest.fixture(scope="session")
def convoy(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider, redis_cluster: LocalCluster | None
) -> Iterator[Convoy]:
    on_cluster = {"CONVOY_REDIS_URL": redis_cluster.url} if redis_cluster is not None else {}
    server = start_convoy(tmp_path_factory.mktemp("convoy-home"), {**provider_env(fake_provider), **TOOLS_ENV, **on_cluster})
    yield server
    leftovers = stop_convoy(server)
    assert server.process.returncode == 0, server.log()
    assert not leftovers, f"processes left behind after Ctrl-C: {sorted(leftovers)}"


def start_api_replica(convoy: Convoy) -> Convoy:
    """One more API process (``convoy api``) against a running ``convoy serve``."""
    env = dict(convoy.env)  # the same providers, models and policies as the server it joins
    env.update({"CONVOY_HOME": str(convoy.home), "RAY_ADDRESS": convoy.ray_address, "PYTHONUNBUFFERED": "1"})
    return _spawn("api", convoy.home, env, "api.log")


@pytest.fixture(scope="session")
def replica(convoy: Convoy) -> Iterator[Convoy]:
    server = start_api_replica(convoy)
    yield server
    assert not stop_convoy(server), "processes left behind by the replica"


@pytest.fixture
async def client(convoy: Convoy) -> AsyncIterator[httpx.AsyncClient]:
    """An async HTTP client of the session's server."""
    async with httpx.AsyncClient(base_url=convoy.url, timeout=60) as c:
        yield c


@pytest.fixture
def store(convoy: Convoy) -> redis.Redis:
    """The session server's Redis, for checking what was (or was not) written."""
    return sync_client(convoy.redis_url, decode_responses=True)


def redis_snapshot(store: redis.Redis) -> dict[str, int]:
    """Every key Convoy wrote and its size: any write by a rejected request shows up as a difference.

    Activations come and go on their own (leases, epochs, host sets, tailers): those are not writes
    of a request and are left out."""
    keys = [
        key
        for raw in store.scan_iter(match="convoy:*", count=1000)
        if not (key := raw.decode() if isinstance(raw, bytes) else str(raw)).startswith(("convoy:tailer:", "convoy:host:", "convoy:hosts"))
        and not key.endswith((":lease", ":epoch"))
    ]
    # Two pipelined rounds, not two round trips per key: the shared Redis holds thousands of keys by
    # the time the hostile-input tests run, and each of their requests takes a snapshot twice.
    with store.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in pipe.execute()]
    sizers = {"stream": "xlen", "zset": "zcard", "hash": "hlen"}
    sizes: dict[str, int] = {key: 1 for key, kind in zip(keys, kinds, strict=True) if kind == "string"}
    sized = [(key, sizers[kind]) for key, kind in zip(keys, kinds, strict=True) if kind in sizers]
    with store.pipeline(transaction=False) as pipe:
        for key, command in sized:
            getattr(pipe, command)(key)
        for (key, _), size in zip(sized, pipe.execute(), strict=True):
            sizes[key] = int(size)
    return sizes


@dataclass
class KeyedConvoy:
    """A ``convoy serve`` with API keys on: one key for tenant ``acme``, one for ``globex``."""

    server: Convoy
    acme: str
    globex: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def create_key(server: Convoy, tenant: str) -> str:
    """``convoy keys create`` against ``server``'s Redis, as a user runs it; the key is the last word."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "convoy"), "keys", "create", "--tenant", tenant],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return out.split()[-1]


@pytest.fixture(scope="session")
def keyed_convoy(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[KeyedConvoy]:
    """A second server, with keys on (creating a key ends open mode for good, so never the session's)."""
    server = start_convoy(tmp_path_factory.mktemp("keyed-home"), {**provider_env(fake_provider), **TOOLS_ENV})
    yield KeyedConvoy(server, create_key(server, "acme"), create_key(server, "globex"))
    assert not stop_convoy(server), "processes left behind by the keyed server"
