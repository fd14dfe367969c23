"""Everything a request handler needs, built once per API process by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from actors.directory import Directory
from actors.mailbox import Mailbox
from actors.router import ConversationRouter
from runtime.providers.registry import Providers
from runtime.settings import Settings
from runtime.store.agents import AgentStore, ConversationStore
from runtime.store.api_keys import Gate, KeyStore
from runtime.store.connection import connect
from runtime.store.history import HistoryStore
from runtime.store.runs import RunStore
from runtime.stream.tailer import TailerPool
from runtime.tools.registry import ToolRegistry, load

TAILERS_PER_PROCESS = 2


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    agents: AgentStore
    conversations: ConversationStore
    runs: RunStore
    history: HistoryStore
    mailbox: Mailbox
    directory: Directory
    router: ConversationRouter
    tailers: TailerPool
    providers: Providers
    tools: ToolRegistry
    keys: KeyStore
    gate: Gate
    _watch: asyncio.Task[None] = field(init=False)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        redis = connect(settings)
        directory = Directory(redis, lease_ttl_ms=settings.lease_ttl_ms)
        key_store = KeyStore(redis)
        return cls(
            settings=settings,
            redis=redis,
            agents=AgentStore(redis),
            conversations=ConversationStore(redis),
            runs=RunStore(redis, ttl_s=settings.stream_ttl_s, maxlen=settings.stream_maxlen),
            history=HistoryStore(redis),
            mailbox=Mailbox(redis),
            directory=directory,
            router=ConversationRouter(settings, directory, redis),
            tailers=TailerPool(redis, block_ms=settings.read_block_ms, size=TAILERS_PER_PROCESS),
            providers=Providers(settings),
            tools=load(settings.tool_modules),
            keys=key_store,
            gate=Gate(
                key_store,
                default_requests_per_minute=settings.key_requests_per_minute,
                default_concurrent_runs=settings.key_concurrent_runs,
            ),
        )

    async def start(self) -> None:
        await self.tailers.start()
        self._watch = asyncio.create_task(self.router.watch(), name="host-watch")

    async def stop(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        await self.tailers.stop()
        await self.redis.aclose()


def get_state(request: Request) -> AppState:
    return request.app.state.convoy  # type: ignore[no-any-return]


async def _state_dependency(request: Request) -> AppState:
    """``get_state`` for ``Depends``: a coroutine, so FastAPI calls it on the event loop. A plain
    function dependency is run in a worker thread, one thread hop per request (measured: the
    largest share of what a request spent in FastAPI before its handler ran)."""
    return get_state(request)


State = Annotated[AppState, Depends(_state_dependency)]
