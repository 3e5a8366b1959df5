"""Circuit breaker state per destination (activities/breaker.py), as the workers last recorded it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter

from api.deps import CurrentUser, PoolDep, guarded
from api.models import Public
from infra.store.breakers import list_breakers

router = APIRouter(prefix="/api/destinations", tags=["monitoring"])


class BreakerPublic(Public):
    destination: str
    state: Literal["closed", "open", "half_open"]
    failures: int  # connection failures in a row
    opened_at: datetime | None = None
    next_probe_at: datetime | None = None
    probe_interval_s: float | None = None
    last_error: str | None = None
    worker: str = ""
    updated_at: datetime


@router.get("/breakers", **guarded("viewer"))
async def get_breakers(pool: PoolDep, user: CurrentUser) -> list[BreakerPublic]:
    """Every destination of the caller's org whose breaker has changed state at least once."""
    return [BreakerPublic(**r) for r in await list_breakers(pool, user.org)]
