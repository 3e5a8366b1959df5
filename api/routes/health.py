"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import guarded
from infra.store import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", **guarded("viewer"))
async def readyz(request: Request) -> JSONResponse:
    """PostgreSQL and Temporal are reachable (503 naming which is not)."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(3):
            await ping(request.app.state.pool)
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(3):
            client = await request.app.state.temporal()
            await client.service_client.check_health()
        checks["temporal"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["temporal"] = f"unreachable: {type(exc).__name__}"
    down = [k for k, v in checks.items() if v != "ok"]
    status = 503 if down else 200
    body = {"status": "ready" if not down else f"not ready: {', '.join(down)} unreachable", **checks}
    return JSONResponse(body, status_code=status)
