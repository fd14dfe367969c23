"""Everything a request handler needs, built once per API process by the app's lifespan.

The read side (agents, conversations, runs, history, the stream tailers) is read directly, and a
run's items through ``follower`` (``actors.follow``); every write to a conversation goes through
``client``, the one door (``actors.client``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from actors.client import ConversationClient
from actors.follow import RunFollower
from api.callbacks import Callbacks
from api.metrics import ApiRecorder
from runtime.providers.registry import Providers
from runtime.settings import Settings
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.api_keys import Gate, KeyStore
from runtime.store.connection import connect
from runtime.store.history import HistoryStore
from runtime.store.runs import RunStore
from runtime.store.stream_tokens import StreamTokens
from runtime.stream.tailer import TailerPool
from runtime.tools import ToolRegistry, load

TAILERS_PER_PROCESS = 2


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    agents: AgentStore
    conversations: ConversationStore
    runs: RunStore
    history: HistoryStore
    tailers: TailerPool
    client: ConversationClient
    follower: RunFollower
    providers: Providers
    tools: ToolRegistry
    keys: KeyStore
    gate: Gate
    stream_tokens: StreamTokens
    callbacks: Callbacks

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        redis = connect(settings)
        runs = RunStore(redis, ttl_s=settings.stream_ttl_s, maxlen=settings.stream_maxlen)
        tailers = TailerPool(redis, block_ms=settings.read_block_ms, size=TAILERS_PER_PROCESS)
        key_store = KeyStore(redis)
        client = ConversationClient(settings, redis, runs, tailers, ApiRecorder())
        return cls(
            settings=settings,
            redis=redis,
            agents=AgentStore(redis),
            conversations=ConversationStore(redis),
            runs=runs,
            history=HistoryStore(redis),
            tailers=tailers,
            client=client,
            follower=RunFollower(settings, redis, runs, tailers, client),
            providers=Providers(settings),
            tools=load(settings.tool_modules),
            keys=key_store,
            gate=Gate(
                key_store,
                default_requests_per_minute=settings.key_requests_per_minute,
                default_concurrent_runs=settings.key_concurrent_runs,
            ),
            stream_tokens=StreamTokens(redis, ttl_s=settings.stream_token_ttl_s),
            callbacks=Callbacks(),
        )

    async def start(self) -> None:
        await self.tailers.start()

    async def stop(self) -> None:
        await self.callbacks.stop()
        await self.tailers.stop()
        await self.redis.aclose()


def get_state(request: Request) -> AppState:
    return request.app.state.convoy


async def _state_dependency(request: Request) -> AppState:
    """``get_state`` for ``Depends``: a coroutine, so FastAPI calls it on the event loop. A plain
    function dependency is run in a worker thread, one thread hop per request (measured: the
    largest share of what a request spent in FastAPI before its handler ran)."""
    return get_state(request)


State = Annotated[AppState, Depends(_state_dependency)]
