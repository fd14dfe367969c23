"""``/v1/health`` (200 only when Redis and Ray both answer) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.state import AppState, State

router = APIRouter(tags=["health"])
REDIS_TIMEOUT_S = 2.0
VERSION = version("convoy")  # read once: each read parses the package's metadata file (~0.8 ms)


async def _redis_ok(state: AppState) -> bool:
    try:
        return bool(await asyncio.wait_for(state.redis.ping(), REDIS_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - whatever the failure, Redis is not healthy
        return False


@router.get("/v1/health", summary="Health: Redis and Ray reachable")
@router.get("/v1/health/", include_in_schema=False)
async def health(state: State) -> JSONResponse:
    redis_ok, hosts = await asyncio.gather(_redis_ok(state), state.client.hosts_alive())
    if state.settings.placement == "dedicated":
        ray_ok = await state.client.ray_alive()
    else:
        ray_ok = hosts > 0
    ok = redis_ok and ray_ok
    body = {
        "status": "ok" if ok else "unavailable",
        "version": VERSION,
        "redis": "ok" if redis_ok else "unreachable",
        "ray": {"ok": ray_ok, "placement": state.settings.placement, "hosts_alive": hosts},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
