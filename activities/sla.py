"""SLA compliance: objective values from the store, violations opened/closed idempotently, cases, alerts, escalation.

`evaluate()` is safe to run from several processes and as often as wanted: one open violation per
(org, sla, objective) is kept by a unique index, and each side effect (case feed, alert, escalation) is recorded
on the violation row so it happens once; a failed side effect is retried by the next evaluation.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from activities.oncall import Notifier, sla_event
from infra.config import LifelineConfig, Sla
from infra.store import sla as store_sla
from infra.store.audit import append as audit
from infra.store.flow import ScopeValues, db_now, scope_values
from workflows.contract import (
    SA_CASE_KIND,
    SA_DESTINATION,
    SA_ORG,
    SIGNAL_EVIDENCE,
    CaseInput,
    EvaluateSlaInput,
    EvaluateSlaResult,
    Evidence,
    case_workflow_id,
)

if TYPE_CHECKING:
    from infra.store import Db

log = logging.getLogger("lifeline.sla")

OBJECTIVES = ("p95_latency", "max_backlog_age", "min_success_rate", "uptime")
# Objectives a remediation case can act on (destination SLAs); the rest go to the SLA's alert webhook.
CASE_KIND = {"max_backlog_age": "backlog", "p95_latency": "latency_degraded",
             "min_success_rate": "destination_rejecting"}
# For these the worst value is the lowest one seen; for the others the highest.
_LOWER_IS_WORSE = frozenset({"min_success_rate", "uptime"})
CASE_WORKFLOW = "RemediationCaseWorkflow"

def _objectives(sla: Sla) -> list[tuple[str, float]]:
    """(objective, target) pairs configured for an SLA; targets in seconds or as a fraction."""
    out: list[tuple[str, float]] = []
    if sla.p95_latency is not None:
        out.append(("p95_latency", sla.p95_latency.total_seconds()))
    if sla.max_backlog_age is not None:
        out.append(("max_backlog_age", sla.max_backlog_age.total_seconds()))
    if sla.min_success_rate is not None:
        out.append(("min_success_rate", sla.min_success_rate))
    if sla.uptime_target is not None:
        out.append(("uptime", sla.uptime_target))
    return out


def _value(objective: str, v: ScopeValues, uptime: float) -> float | None:
    if objective == "p95_latency":
        return v.p95_latency_s
    if objective == "max_backlog_age":
        return v.backlog_oldest_age_s
    if objective == "min_success_rate":
        return v.success_rate
    return uptime


def _ok(objective: str, value: float | None, target: float) -> bool:
    if value is None:  # no traffic in the window: nothing to hold against the objective
        return True
    return value >= target if objective in _LOWER_IS_WORSE else value <= target


def _unit(objective: str) -> str:
    return "ratio" if objective in _LOWER_IS_WORSE else "seconds"


def violated_seconds(rows: list[Any], start: datetime, end: datetime, now: datetime) -> float:
    """Length of the union of [started_at, ended_at or now) intervals clipped to [start, end)."""
    spans = sorted((max(r["started_at"], start), min(r["ended_at"] or now, end)) for r in rows)
    total, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_s is not None and cur_e is not None:
                total += (cur_e - cur_s).total_seconds()
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_s is not None and cur_e is not None:
        total += (cur_e - cur_s).total_seconds()
    return total


async def _uptime(conn: Db, org_id: str, sla: Sla, now: datetime) -> float:
    start = now - sla.uptime_period
    rows = [r for r in await store_sla.violation_rows(conn, org_id, start, now, sla.name) if r["objective"] != "uptime"]
    return 1.0 - violated_seconds(rows, start, now, now) / sla.uptime_period.total_seconds()


async def _measure(conn: Db, sla: Sla, now: datetime) -> list[dict[str, Any]]:
    values = await scope_values(conn, sla.org, sla.channel, sla.destination, now - sla.window, now)
    uptime = await _uptime(conn, sla.org, sla, now) if sla.uptime_target is not None else 1.0
    out = []
    for objective, target in _objectives(sla):
        value = _value(objective, values, uptime)
        out.append({"objective": objective, "target": target, "unit": _unit(objective),
                    "value": None if value is None else round(value, 6), "ok": _ok(objective, value, target)})
    return out


async def sla_status(pool: asyncpg.Pool, config: LifelineConfig, org_id: str,
                     now: datetime | None = None) -> list[dict[str, Any]]:
    """GET /api/sla: per SLA of the org, each objective's current value, ok/violated and the open violation."""
    now = now or await db_now(pool)
    out = []
    open_rows = {(r["sla"], r["objective"]): r for r in await store_sla.open_violations(pool, org_id)}
    for sla in (s for s in config.sla if s.org == org_id):
        objectives = await _measure(pool, sla, now)
        for o in objectives:
            row = open_rows.get((sla.name, o["objective"]))
            o["violation"] = None if row is None else {
                "id": row["id"], "started_at": row["started_at"], "worst_value": row["worst_value"],
                "case_id": row["case_id"], "escalated_at": row["escalated_at"]}
        out.append({"name": sla.name, "subject": sla.subject, "channel": sla.channel,
                    "destination": sla.destination, "window_s": sla.window.total_seconds(),
                    "in_maintenance": sla.in_maintenance(now), "ok": all(o["ok"] for o in objectives),
                    "contacts": sla.contacts, "objectives": objectives})
    return out


class SlaEvaluator:
    """One evaluation pass over the configured SLAs; the Temporal client and HTTP client are optional."""

    def __init__(self, pool: asyncpg.Pool, config: LifelineConfig, *, client: Client | None = None,
                 task_queue: str = "lifeline", http: httpx.AsyncClient | None = None,
                 notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.config = config
        self.client = client
        self.task_queue = task_queue
        self.http = http
        self.notifier = notifier or Notifier(pool, config.oncall, http)

    async def evaluate(self, org_id: str = "", now: datetime | None = None) -> EvaluateSlaResult:
        now = now or await db_now(self.pool)
        result = EvaluateSlaResult()
        await self.notifier.deliver()  # on-call notifications an earlier run could not send yet
        for sla in self.config.sla:
            if org_id and sla.org != org_id:
                continue
            await self._evaluate_one(sla, now, result)
        if result.opened or result.closed or result.escalated:
            log.info("sla: opened %s closed %s escalated %s", result.opened, result.closed, result.escalated)
        return result

    async def _evaluate_one(self, sla: Sla, now: datetime, result: EvaluateSlaResult) -> None:
        maintenance = sla.in_maintenance(now)
        c = self.pool  # each store call is its own short org transaction: none spans a webhook post
        objectives = await _measure(c, sla, now)
        for o in objectives:
            result.evaluated += 1
            name = f"{sla.name}/{o['objective']}"
            if not o["ok"] and not maintenance:
                row = await store_sla.upsert_violation(c, sla.org, sla.name, o["objective"], sla.subject,
                                                       o["target"], now, o["value"],
                                                       o["objective"] in _LOWER_IS_WORSE)
                assert row is not None
                if row["inserted"]:
                    result.opened.append(name)
                    await audit(self.pool, org_id=sla.org, actor="lifeline", action="sla.violation.opened",
                                subject=name, detail={"value": o["value"], "target": o["target"],
                                                      "violation_id": row["id"]})
            elif o["ok"]:
                closed = await store_sla.close_violation(c, sla.org, sla.name, o["objective"], now)
                if closed is not None:
                    result.closed.append(name)
                    await audit(self.pool, org_id=sla.org, actor="lifeline", action="sla.violation.closed",
                                subject=name, detail={"value": o["value"], "violation_id": closed["id"]})
                    if closed["notified_at"] or closed["escalated_at"]:
                        await self._post(sla, {"event": "sla.violation.closed", "violation_id": closed["id"],
                                               **self._about(sla, o["objective"], o["value"], o["target"])})
                    if closed["escalated_at"]:
                        await self.notifier.notify(sla_event(
                            self.notifier.links, org_id=sla.org, sla=sla.name, objective=o["objective"],
                            violation_id=closed["id"], resolved=True, value=o["value"], target=o["target"]))
        open_rows = await store_sla.open_violations(c, sla.org, sla.name)
        for row in open_rows:
            await self._follow_up(c, sla, row, now, maintenance, result)

    def _about(self, sla: Sla, objective: str, value: Any, target: Any) -> dict[str, Any]:
        return {"org_id": sla.org, "sla": sla.name, "objective": objective, "subject": sla.subject,
                "value": value, "target": target, "contacts": sla.contacts}

    async def _follow_up(self, c: Db, sla: Sla, row: asyncpg.Record, now: datetime,
                         maintenance: bool, result: EvaluateSlaResult) -> None:
        objective = row["objective"]
        kind = CASE_KIND.get(objective)
        if kind and sla.destination:
            if row["case_id"] is None and self.client is not None:
                case_id = await self._feed_case(sla, kind, row, now)
                if case_id:
                    await store_sla.set_case(c, sla.org, row["id"], case_id)
                    result.cases.append(case_id)
        elif row["notified_at"] is None and sla.alert_webhook:
            payload = {"event": "sla.violation.opened", "violation_id": row["id"], "started_at": row["started_at"],
                       "worst_value": row["worst_value"],
                       **self._about(sla, objective, row["last_value"], row["target"])}
            if await self._post(sla, payload):
                await store_sla.set_notified(c, sla.org, row["id"], now)
        due = row["started_at"] + sla.escalate_after
        if row["escalated_at"] is None and not maintenance and now >= due:
            payload = {"event": "sla.violation.escalated", "violation_id": row["id"], "started_at": row["started_at"],
                       "worst_value": row["worst_value"], "case_id": row["case_id"],
                       **self._about(sla, objective, row["last_value"], row["target"])}
            if not sla.alert_webhook or await self._post(sla, payload):
                if await store_sla.set_escalated(c, sla.org, row["id"], now):
                    # recorded first, retried by later evaluations until sent: people hear of it once
                    await self.notifier.notify(sla_event(
                        self.notifier.links, org_id=sla.org, sla=sla.name, objective=objective,
                        violation_id=row["id"], resolved=False, value=row["last_value"], target=row["target"],
                        case_id=row["case_id"]))
                    name = f"{sla.name}/{objective}"
                    result.escalated.append(name)
                    await audit(self.pool, org_id=sla.org, actor="lifeline", action="sla.violation.escalated",
                                subject=name, detail={"violation_id": row["id"], "contacts": sla.contacts,
                                        "notified": bool(sla.alert_webhook)})

    async def _feed_case(self, sla: Sla, kind: str, row: asyncpg.Record, now: datetime) -> str | None:
        assert self.client is not None and sla.destination is not None
        subject = sla.subject
        workflow_id = case_workflow_id(sla.org, kind, subject)
        value, target = row["last_value"], row["target"]
        evidence = Evidence(kind=kind, subject=subject, observed_at=now.isoformat(),
                            summary=f"SLA {sla.name}: {row['objective']} is {value:g}, objective {target:g}",
                            metrics={"value": float(value), "target": float(target), "violation_id": float(row["id"])},
                            signature=f"sla:{row['objective']}")
        case = CaseInput(kind=kind, subject=subject, org_id=sla.org, mode=self.config.remediation.mode,
                         approval_timeout_s=self.config.remediation.approval_timeout.total_seconds(),
                         opened_by=f"sla:{sla.name}", notify_url=sla.alert_webhook or "",
                         settle_s=self.config.remediation.settle.total_seconds())
        pairs = [SearchAttributePair(SearchAttributeKey.for_keyword(SA_CASE_KIND), kind),
                 SearchAttributePair(SearchAttributeKey.for_keyword(SA_DESTINATION), sla.destination),
                 SearchAttributePair(SearchAttributeKey.for_keyword(SA_ORG), sla.org)]
        try:
            await self.client.start_workflow(
                CASE_WORKFLOW, case, id=workflow_id, task_queue=self.task_queue, start_signal=SIGNAL_EVIDENCE,
                start_signal_args=[evidence], id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=TypedSearchAttributes(pairs))
        except Exception as exc:  # noqa: BLE001 - Temporal down: the next evaluation feeds the case
            log.warning("sla %s: cannot feed case %s: %s", sla.name, workflow_id, exc)
            return None
        return workflow_id

    async def _post(self, sla: Sla, payload: dict[str, Any]) -> bool:
        if not sla.alert_webhook:
            return False
        body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in payload.items()}
        http = self.http or httpx.AsyncClient()
        try:
            resp = await http.post(sla.alert_webhook, json=body, timeout=10.0)
            resp.raise_for_status()
            return True
        except httpx.HTTPError as exc:
            log.warning("sla %s: alert webhook failed: %s", sla.name, type(exc).__name__)
            return False
        finally:
            if self.http is None:
                await http.aclose()


class SlaActivities:
    """The `evaluate_sla` activity (the flow monitor calls it each run); built once per worker."""

    def __init__(self, pool: asyncpg.Pool, config: LifelineConfig, client: Client | None, task_queue: str,
                 http: httpx.AsyncClient | None = None, notifier: Notifier | None = None) -> None:
        self.evaluator = SlaEvaluator(pool, config, client=client, task_queue=task_queue, http=http,
                                      notifier=notifier)

    @activity.defn(name="evaluate_sla")
    async def evaluate_sla(self, inp: EvaluateSlaInput | None = None) -> EvaluateSlaResult:
        """Open/close SLA violations for every configured SLA (or one org's), feed cases, alert and escalate."""
        return await self.evaluator.evaluate((inp or EvaluateSlaInput()).org_id)


# -- compliance over a period (reports) ---------------------------------------------------------------------------

async def sla_report(pool: asyncpg.Pool, config: LifelineConfig, org_id: str, start: datetime,
                     end: datetime) -> dict[str, Any]:
    """Violations overlapping [start, end) and, per SLA objective, the share of the period without a violation."""
    now = await db_now(pool)
    rows = await store_sla.violation_rows(pool, org_id, start, end)
    period = max((min(end, now) - start).total_seconds(), 1e-9)
    slas = []
    names = {s.name for s in config.sla if s.org == org_id} | {r["sla"] for r in rows}
    for name in sorted(names):
        sla = next((s for s in config.sla if s.org == org_id and s.name == name), None)
        objectives = [o for o, _ in _objectives(sla)] if sla else []
        objectives += sorted({r["objective"] for r in rows if r["sla"] == name} - set(objectives))
        items = []
        for objective in objectives:
            mine = [r for r in rows if r["sla"] == name and r["objective"] == objective]
            down = violated_seconds(mine, start, end, now)
            target = dict(_objectives(sla)).get(objective) if sla else (mine[0]["target"] if mine else None)
            items.append({"objective": objective, "target": target, "violations": len(mine),
                          "violated_s": round(down, 3), "compliance": round(max(0.0, 1 - down / period), 6)})
        slas.append({"name": name, "subject": sla.subject if sla else "", "objectives": items})
    violations = [{
        "id": r["id"], "sla": r["sla"], "objective": r["objective"], "subject": r["subject"], "target": r["target"],
        "started_at": r["started_at"], "ended_at": r["ended_at"],
        "duration_s": round(((r["ended_at"] or now) - r["started_at"]).total_seconds(), 3),
        "worst_value": r["worst_value"], "case_id": r["case_id"], "escalated_at": r["escalated_at"],
    } for r in rows]
    return {"from": start, "to": end, "period_s": round(period, 3), "slas": slas, "violations": violations}
