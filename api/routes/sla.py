"""SLA compliance now, and reports over a period (SLA: csv/pdf/json; deliveries: csv/json)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field

from activities.sla import sla_report, sla_status
from api.deps import ConfigDep, CurrentUser, PoolDep, guarded
from api.models import Public
from api.problems import Problem
from api.render import sla_pdf, to_csv
from infra.store.flow import db_now, delivery_report

router = APIRouter(tags=["sla and reports"])
MAX_PERIOD = timedelta(days=400)

SLA_CSV_COLUMNS = ("record", "sla", "objective", "target", "violation_id", "started_at", "ended_at", "duration_s",
                   "worst_value", "violations", "violated_s", "compliance", "case_id")
DELIVERY_CSV_COLUMNS = ("channel", "destination", "messages", "delivered", "dead_lettered", "pending", "skipped",
                        "attempts", "success_rate", "avg_latency_ms", "p95_latency_ms", "received", "accepted",
                        "rejected")


def parse_instant(value: str, field: str) -> datetime:
    """ISO 8601 date or date-time; a naive one is UTC."""
    text = value.strip().replace("Z", "+00:00")
    if "T" in text and " " in text:  # an unencoded '+' of the offset arrives as a space
        text = text.replace(" ", "+")
    try:
        at = datetime.combine(date.fromisoformat(text), time(0)) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise Problem(422, f"{value!r} is not an ISO 8601 date or date-time", field=field) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


async def period(pool: Any, from_: str | None, to: str | None, default: timedelta,
                 max_period: timedelta = MAX_PERIOD) -> tuple[datetime, datetime]:
    end = parse_instant(to, "to") if to else await db_now(pool)
    start = parse_instant(from_, "from") if from_ else end - default
    if start >= end:
        raise Problem(422, "from must be before to", field="from")
    if end - start > max_period:
        raise Problem(422, f"the period may be at most {max_period.days} days", field="from")
    return start, end


From = Annotated[str | None, Query(alias="from", description="ISO 8601 date or date-time (default: to - 30d/1d)")]
To = Annotated[str | None, Query(description="ISO 8601 date or date-time (default: now)")]


Objective = Literal["p95_latency", "max_backlog_age", "min_success_rate", "uptime"]


class OpenViolation(Public):
    id: int
    started_at: datetime
    worst_value: float = Field(description="the highest latency/age or lowest rate seen while open")
    case_id: str | None = Field(description="the remediation case it feeds")
    escalated_at: datetime | None


class ObjectiveStatus(Public):
    objective: Objective
    target: float
    unit: str
    value: float | None = Field(description="now, over the SLA's window; null when there was nothing to measure")
    ok: bool
    violation: OpenViolation | None


class SlaStatus(Public):
    name: str
    subject: str = Field(description="destination:<name> | channel:<name> | org")
    channel: str | None
    destination: str | None
    window_s: float
    in_maintenance: bool
    ok: bool
    contacts: list[str]
    objectives: list[ObjectiveStatus]


class SlaNow(Public):
    items: list[SlaStatus]
    ok: bool = Field(description="every objective of every SLA is met")


class ObjectiveCompliance(Public):
    objective: str
    target: float | None
    violations: int
    violated_s: float
    compliance: float = Field(ge=0, le=1, description="share of the period without a violation")


class SlaCompliance(Public):
    name: str
    subject: str
    objectives: list[ObjectiveCompliance]


class Violation(Public):
    id: int
    sla: str
    objective: str
    subject: str
    target: float
    started_at: datetime
    ended_at: datetime | None
    duration_s: float
    worst_value: float
    case_id: str | None
    escalated_at: datetime | None


class SlaReport(Public):
    from_: datetime = Field(alias="from")
    to: datetime
    period_s: float
    slas: list[SlaCompliance]
    violations: list[Violation]


class ChannelIntake(Public):
    channel: str
    received: int
    accepted: int
    rejected: int


class FlowOutcome(Public):
    channel: str
    destination: str
    messages: int
    delivered: int
    dead_lettered: int
    pending: int
    skipped: int
    attempts: int
    success_rate: float | None
    avg_latency_ms: float | None
    p95_latency_ms: float | None


class DeliveryReport(Public):
    from_: datetime = Field(alias="from")
    to: datetime
    channels: list[ChannelIntake]
    flows: list[FlowOutcome]


CSV = {"text/csv": {"schema": {"type": "string"}}}
PDF = {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}


def _or_file(content: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "JSON, or the file ?format= asks for", "content": content}}


@router.get("/api/sla", **guarded("viewer"))
async def sla(pool: PoolDep, config: ConfigDep, user: CurrentUser) -> SlaNow:
    """Real-time compliance: each SLA objective's current value, ok/violated, maintenance, open violation."""
    items = await sla_status(pool, config, user.org)
    return SlaNow.model_validate({"items": items, "ok": all(i["ok"] for i in items)})


@router.get("/api/reports/sla", response_model=SlaReport, **guarded("viewer", 422, responses=_or_file({**CSV, **PDF})))
async def report_sla(pool: PoolDep, config: ConfigDep, user: CurrentUser, from_: From = None, to: To = None,
                     format: Literal["json", "csv", "pdf"] = "json") -> Any:  # noqa: A002
    """Violations and per-objective compliance over [from, to)."""
    start, end = await period(pool, from_, to, timedelta(days=30))
    report = await sla_report(pool, config, user.org, start, end)
    stamp = f"{start:%Y%m%d}-{end:%Y%m%d}"
    if format == "pdf":
        return Response(sla_pdf(report, user.org), media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="sla-{stamp}.pdf"'})
    if format == "csv":
        rows: list[dict[str, Any]] = [
            {"record": "compliance", "sla": s["name"], **o} for s in report["slas"] for o in s["objectives"]]
        rows += [{"record": "violation", "violation_id": v["id"], **v} for v in report["violations"]]
        return Response(to_csv(SLA_CSV_COLUMNS, rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="sla-{stamp}.csv"'})
    return report


@router.get("/api/reports/deliveries", response_model=DeliveryReport, **guarded("viewer", 422, responses=_or_file(CSV)))
async def report_deliveries(pool: PoolDep, user: CurrentUser, from_: From = None, to: To = None,
                            format: Literal["json", "csv"] = "json") -> Any:  # noqa: A002
    """Delivery summary per channel and destination for messages received in [from, to)."""
    start, end = await period(pool, from_, to, timedelta(days=1))
    report = await delivery_report(pool, user.org, start, end)
    if format == "csv":
        intake = {c["channel"]: c for c in report["channels"]}
        rows = [{**intake.get(f["channel"], {}), **f} for f in report["flows"]]
        # Channels whose messages went nowhere (all rejected or unrouted) still get a line.
        rows += [{**c, "destination": ""} for name, c in intake.items()
                 if not any(f["channel"] == name for f in report["flows"])]
        return Response(to_csv(DELIVERY_CSV_COLUMNS, rows), media_type="text/csv",
                        headers={"Content-Disposition":
                                 f'attachment; filename="deliveries-{start:%Y%m%d}-{end:%Y%m%d}.csv"'})
    return report
