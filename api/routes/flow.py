"""Flow metrics read from the store: rates, outcomes, stage latencies, peaks and backlog trend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from api.deps import ConfigDep, CurrentUser, PoolDep, guarded
from api.models import FileFlow, FlowChannel, FlowRoute, Public
from api.problems import Problem
from infra.config import parse_duration
from infra.store import db_now
from infra.store import ops as ops_store
from infra.store.files import file_flow
from infra.store.flow import flow

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


class FlowPublic(Public):
    from_: datetime = Field(alias="from", description="the window's start")
    to: datetime
    window_s: float
    bucket_s: float
    channels: list[FlowChannel]
    flows: list[FlowRoute]
    files: FileFlow = Field(description="file and SFTP sources and destinations (configured ones too)")


@router.get("", **guarded("viewer", 422))
async def get_flow(pool: PoolDep, user: CurrentUser, config: ConfigDep,
                   window: Annotated[str, Query(description="a duration: 30s, 5m, 1h, 1d (at most 31d)")] = "5m",
                   bucket: Annotated[str, Query(description="a duration, at most the window")] = "1m",
                   channel: str | None = None, destination: str | None = None) -> FlowPublic:
    """Per channel and (channel, destination): rates, success/failure, latency per stage, peak, backlog trend."""
    w = duration_param(window, "window")
    b = duration_param(bucket, "bucket")
    if w > MAX_WINDOW:
        raise Problem(422, "window must be at most 31d", field="window")
    if b > w:
        raise Problem(422, "bucket must not be longer than window", field="bucket")
    if w / b > MAX_BUCKETS:
        raise Problem(422, f"window / bucket gives more than {MAX_BUCKETS} buckets", field="bucket")
    out = await flow(pool, user.org, window=w, bucket=b, channel=channel or None, destination=destination or None)
    out["files"] = await file_flow(pool, user.org, config, channel or None)  # file/SFTP sources, destinations
    return FlowPublic.model_validate(out)


class FlowSeries(Public):
    """One (channel, destination): per bucket, deliveries finished, accept-to-delivered p50/p95 and backlog."""

    channel: str
    destination: str
    delivered: list[int]
    p50_ms: list[float | None]
    p95_ms: list[float | None]
    backlog: list[int]


class FlowSeriesPublic(Public):
    start: datetime
    end: datetime
    bucket_s: float
    t: list[float] = Field(description="bucket starts, Unix seconds")
    series: list[FlowSeries]


@router.get("/series", response_model=FlowSeriesPublic, **guarded("viewer", 422))
async def get_flow_series(pool: PoolDep, user: CurrentUser, window: str = "1h", bucket: str = "1m") -> FlowSeriesPublic:
    """Time series for the dashboard charts: throughput, latency p50/p95 and backlog per channel and destination."""
    w = duration_param(window, "window")
    b = duration_param(bucket, "bucket")
    if w > timedelta(days=1) or b > w or w / b > 1440:
        raise Problem(422, "window must be at most 1d and hold at most 1440 buckets", field="window")
    end = await db_now(pool)
    step = b.total_seconds()
    end = datetime.fromtimestamp((end.timestamp() // step + 1) * step, tz=UTC)  # the current bucket is the last
    start = end - w
    n = int(w / b)
    starts = [start + i * b for i in range(n)]
    data = await ops_store.flow_series(pool, user.org, start, end, b)
    series = []
    for (channel, destination), by_bucket in sorted(data.items()):
        cells = [by_bucket.get(t, {}) for t in starts]
        series.append(FlowSeries(
            channel=channel, destination=destination,
            delivered=[int(c.get("delivered") or 0) for c in cells],
            p50_ms=[c.get("p50_ms") for c in cells], p95_ms=[c.get("p95_ms") for c in cells],
            backlog=[int(c.get("backlog") or 0) for c in cells]))
    return FlowSeriesPublic(start=start, end=end, bucket_s=step, t=[t.timestamp() for t in starts], series=series)
