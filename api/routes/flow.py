"""Flow metrics read from the store: rates, outcomes, stage latencies, peaks and backlog trend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from activities.flow import flow
from api.deps import CurrentUser, PoolDep, guarded
from api.problems import Problem
from infra.config import parse_duration

router = APIRouter(prefix="/api/flow", tags=["monitoring"])
MAX_WINDOW = timedelta(days=31)
MAX_BUCKETS = 1440


def duration_param(value: str, field: str) -> timedelta:
    try:
        d = parse_duration(value)
    except ValueError as exc:
        raise Problem(422, str(exc), field=field) from None
    if d.total_seconds() < 1:
        raise Problem(422, f"{field} must be at least 1s", field=field)
    return d


@router.get("", **guarded("viewer"))
async def get_flow(pool: PoolDep, user: CurrentUser, window: str = "5m", bucket: str = "1m",
                   channel: str | None = None, destination: str | None = None) -> dict[str, Any]:
    """Per channel and (channel, destination): rates, success/failure, latency per stage, peak, backlog trend."""
    w = duration_param(window, "window")
    b = duration_param(bucket, "bucket")
    if w > MAX_WINDOW:
        raise Problem(422, "window must be at most 31d", field="window")
    if b > w:
        raise Problem(422, "bucket must not be longer than window", field="bucket")
    if w / b > MAX_BUCKETS:
        raise Problem(422, f"window / bucket gives more than {MAX_BUCKETS} buckets", field="bucket")
    return await flow(pool, user.org, window=w, bucket=b, channel=channel or None, destination=destination or None)
