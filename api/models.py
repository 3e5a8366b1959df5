"""Response models shared by several routes (each route module keeps its own); every JSON answer has one.

`Public` forbids members it does not declare: a store query that grows a column fails the API's tests loudly
instead of leaking an undocumented member (or silently dropping one a client reads).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Trend = Literal["rising", "falling", "steady"]


class Public(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StoredFinding(Public):
    """A validation finding as stored with a message (located like ERR-2)."""

    segment: str
    occurrence: int
    field: int | None
    component: int | None
    code: str = Field(description="HL7 table 0357 error code")
    severity: str = Field(description="error | warning | info")
    text: str


# -- flow (GET /api/flow, the dashboard snapshot) ----------------------------------------------------------------

class Rates(Public):
    per_second: float
    per_minute: float
    per_hour: float


class Bucket(Public):
    start: datetime
    count: int


class Peak(Public):
    start: datetime
    count: int
    per_minute: float
    ratio_to_mean: float


class FlowChannel(Public):
    """Intake of one channel over the window (and the window before it)."""

    channel: str
    received: int
    accepted: int
    rejected: int
    previous_received: int
    outbox_depth: int = Field(description="accepted messages not yet routed")
    outbox_oldest_age_s: float
    rate: Rates
    rejected_rate: float
    rate_trend: Trend
    buckets: list[Bucket]
    peak: Peak


class StageLatency(Public):
    avg_ms: float | None
    p95_ms: float | None


class Latencies(Public):
    end_to_end: StageLatency
    accept_to_dispatch: StageLatency
    dispatch_to_first_attempt: StageLatency
    first_attempt_to_delivered: StageLatency


class Backlog(Public):
    depth: int
    oldest_age_s: float
    previous_depth: int
    previous_oldest_age_s: float
    trend: Trend


class FlowRoute(Public):
    """One (channel, destination) over the window: messages routed, attempts, outcomes, latency per stage, backlog."""

    channel: str
    destination: str
    messages: int
    previous_messages: int
    attempts_succeeded: int
    attempts_failed: int
    attempts_rejected: int
    delivered: int
    dead_lettered: int
    latency: Latencies
    backlog: Backlog
    success_rate: float | None
    failure_rate: float | None
    rate: Rates
    rate_trend: Trend
    buckets: list[Bucket]
    peak: Peak


class FileSource(Public):
    channel: str
    kind: str = Field(description="file | sftp")
    location: str
    files_total: int
    error_files: int
    consecutive_failures: int
    last_poll_at: datetime | None
    last_ok_at: datetime | None
    last_file_at: datetime | None
    last_error_class: str | None
    last_error: str | None
    state: Literal["ok", "failing", "never polled"]


class FileDestination(Public):
    destination: str
    kind: str
    location: str
    batched: bool
    open_batch_messages: int
    open_batch_since: datetime | None


class FileFlow(Public):
    sources: list[FileSource]
    destinations: list[FileDestination]
