"""The FastAPI application: routes, the error table, metrics, and the per-process state."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import Depends, FastAPI
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors import ray_boot
from api import errors
from api.auth import authenticate
from api.limits import RequestLimits
from api.metrics import HTTP_LATENCY, HTTP_REQUESTS, TailerMetrics
from api.openai import routes as chat
from api.routes import agents, conversations, health, models, page, runs, tools
from api.state import AppState
from runtime import heap
from runtime.settings import Settings


class MetricsMiddleware:
    """Counts responses by route template and times them to the first byte (pure ASGI, so
    streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                method = scope["method"]
                HTTP_REQUESTS.labels(method, template, str(message["status"])).inc()
                HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, send_wrapper)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ray_boot.connect(settings, start_local=False)
        state = AppState.build(settings)
        await state.start()
        app.state.convoy = state
        tailer_metrics = TailerMetrics(state.tailers)
        REGISTRY.register(tailer_metrics)
        heap.freeze()  # set up: keep what it made out of every later collection (runtime.heap)
        try:
            yield
        finally:
            REGISTRY.unregister(tailer_metrics)
            await state.stop()

    app = FastAPI(
        title="Convoy",
        version=version("convoy"),
        description="Streaming LLM agent conversations on virtual actors. Speaks the Letta API.",
        lifespan=lifespan,
    )
    errors.install(app)
    # Routes are matched in order, one after the other: the streaming ones, which carry the
    # traffic, come first. Health checks and metrics need no key.
    app.include_router(runs.stream_router)  # takes a key or a stream token (api.auth.StreamReader)
    for module in (conversations, runs, chat, agents, models, tools):
        app.include_router(module.router, dependencies=[Depends(authenticate)])
    app.include_router(health.router)
    page.install(app)  # the chat page at / (no key: it asks for one when the API does)
    app.add_middleware(RequestLimits, max_request_bytes=settings.max_request_bytes, max_header_bytes=settings.max_header_bytes)
    app.add_middleware(MetricsMiddleware)
    return app
