"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from api.deps import RATE_LIMITED, readiness_principal, require
from api.models import Public
from api.problems import merge_responses, problem_responses
from infra.store import ping

router = APIRouter(tags=["health"])


class Health(Public):
    status: Literal["ok"]


class Readiness(Public):
    model_config = {"json_schema_extra": {"examples": [
        {"status": "ready", "postgres": "ok", "temporal": "ok"},
        {"status": "not ready: temporal unreachable", "postgres": "ok", "temporal": "unreachable: RuntimeError"}]}}

    status: str = Field(description="ready, or 'not ready: <dependencies> unreachable'")
    postgres: str = Field(description="ok, or 'unreachable: <error class>'")
    temporal: str = Field(description="ok, or 'unreachable: <error class>'")


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, dependencies=[Depends(require("viewer", readiness_principal))],
            openapi_extra={"x-required-role": "viewer"},
            responses={**merge_responses(problem_responses(401, 403, 429), RATE_LIMITED),
                       503: {"model": Readiness, "description": "a dependency is unreachable (named in the body)"}})
async def readyz(request: Request) -> Readiness | JSONResponse:
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
    body = Readiness(status="ready" if not down else f"not ready: {', '.join(down)} unreachable", **checks)
    if down:
        return JSONResponse(body.model_dump(), status_code=503)
    return body
