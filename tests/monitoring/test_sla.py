"""SLA: a backlog breach is recorded with its start and end, alerts/cases fire once, reports contain it."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import asyncpg
import httpx
from pypdf import PdfReader
from temporalio.client import Client

from activities.sla import SlaEvaluator
from tests.monitoring.conftest import Seeder, bearer, make_config

M = timedelta(minutes=1)


async def test_backlog_breach_opens_closes_and_is_reported(api: httpx.AsyncClient, seed: Seeder,
                                                           pool: asyncpg.Pool) -> None:
    hooks: list[dict[str, object]] = []

    def hook(request: httpx.Request) -> httpx.Response:
        hooks.append(json.loads(request.content))
        return httpx.Response(204)

    config = make_config(sla=[{"name": "adt-backlog", "channel": "adt-in", "max_backlog_age": "5m",
                               "p95_latency": None, "min_success_rate": None, "uptime_target": None,
                               "escalate_after": "10m", "contacts": ["oncall@example.org"],
                               "alert_webhook": "https://hooks.example.org/sla"}])
    async with httpx.AsyncClient(transport=httpx.MockTransport(hook)) as http:
        ev = SlaEvaluator(pool, config, http=http)
        now = await pool.fetchval("select now()")
        mid = await seed.message(received_at=now - 8 * M)
        await seed.delivery(mid, "lab", created_at=now - 7 * M)

        first = await ev.evaluate()
        assert first.opened == ["adt-backlog/max_backlog_age"] and first.evaluated == 1
        again = await ev.evaluate()  # idempotent: still one open row, no second alert
        assert again.opened == [] and again.closed == []
        rows = await pool.fetch("select * from sla_violations")
        assert len(rows) == 1 and rows[0]["ended_at"] is None and rows[0]["worst_value"] >= 7 * 60
        assert rows[0]["subject"] == "channel:adt-in" and rows[0]["notified_at"] is not None
        assert [h["event"] for h in hooks] == ["sla.violation.opened"]
        assert hooks[0]["contacts"] == ["oncall@example.org"]

        status = (await _get_sla(api, config)).json()
        item = status["items"][0]
        assert status["ok"] is False and item["name"] == "adt-backlog" and item["in_maintenance"] is False
        obj = item["objectives"][0]
        assert obj["objective"] == "max_backlog_age" and obj["ok"] is False and obj["value"] >= 7 * 60
        assert obj["violation"]["id"] == rows[0]["id"]

        # Still open 10 minutes after it started: escalated once.
        later = await ev.evaluate(now=now + 11 * M)
        assert later.escalated == ["adt-backlog/max_backlog_age"]
        assert (await ev.evaluate(now=now + 11 * M)).escalated == []
        assert [h["event"] for h in hooks][-1] == "sla.violation.escalated"

        # The backlog clears: the next evaluation closes the violation.
        await pool.execute("update deliveries set status = 'delivered', finished_at = now()")
        end_now = await pool.fetchval("select now()")
        done = await ev.evaluate(now=end_now + 12 * M)
        assert done.closed == ["adt-backlog/max_backlog_age"]
        row = await pool.fetchrow("select * from sla_violations")
        assert row["ended_at"] is not None and row["ended_at"] > row["started_at"]
        assert row["escalated_at"] is not None
        assert hooks[-1]["event"] == "sla.violation.closed"
    actions = [r["action"] for r in await pool.fetch("select action from audit_log order by id")]
    assert actions == ["sla.violation.opened", "sla.violation.escalated", "sla.violation.closed"]

    period = {"from": (now - 60 * M).isoformat(), "to": (end_now + 60 * M).isoformat()}
    r = await api.get("/api/reports/sla", params={**period, "format": "csv"}, headers=bearer("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(r.text)))
    violation = next(x for x in records if x["record"] == "violation")
    assert violation["sla"] == "adt-backlog" and violation["objective"] == "max_backlog_age"
    assert violation["violation_id"] == str(row["id"]) and violation["ended_at"]
    r = await api.get("/api/reports/sla", params={**period, "format": "pdf"}, headers=bearer("viewer"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(r.content)).pages)
    assert "Lifeline SLA report" in text and "adt-backlog" in text and "max_backlog_age" in text
    assert str(row["ended_at"].isoformat())[:19] in text
    r = await api.get("/api/reports/sla", params=period, headers=bearer("viewer"))
    assert r.json()["violations"][0]["id"] == row["id"]

    r = await api.get("/api/reports/sla", params={"from": "yesterday"}, headers=bearer("viewer"))
    assert r.status_code == 422 and r.json()["field"] == "from"
    r = await api.get("/api/reports/sla", params={"from": "2026-02-01", "to": "2026-01-01"}, headers=bearer("viewer"))
    assert r.status_code == 422 and r.json()["field"] == "from"


async def _get_sla(api: httpx.AsyncClient, config: object) -> httpx.Response:
    api.app.state.config = config  # type: ignore[attr-defined]
    r = await api.get("/api/sla", headers=bearer("viewer"))
    assert r.status_code == 200, r.text
    return r


async def test_destination_breach_feeds_a_remediation_case(seed: Seeder, pool: asyncpg.Pool,
                                                           temporal_client: Client, task_queue: str) -> None:
    config = make_config()  # lab-sla: destination lab, max_backlog_age 5m
    now = await pool.fetchval("select now()")
    mid = await seed.message(received_at=now - 10 * M)
    await seed.delivery(mid, "lab", created_at=now - 9 * M)
    ev = SlaEvaluator(pool, config, client=temporal_client, task_queue=task_queue)
    result = await ev.evaluate()
    assert result.opened == ["lab-sla/max_backlog_age"]
    assert result.cases == ["case:default:backlog:destination:lab"]
    assert (await ev.evaluate()).cases == []  # fed once
    assert await pool.fetchval("select case_id from sla_violations") == "case:default:backlog:destination:lab"
    handle = temporal_client.get_workflow_handle("case:default:backlog:destination:lab")
    desc = await handle.describe()
    assert desc.workflow_type == "RemediationCaseWorkflow"
    await handle.terminate("test done")


async def test_delivery_report_csv_and_json(api: httpx.AsyncClient, seed: Seeder, pool: asyncpg.Pool) -> None:
    now = await pool.fetchval("select now()")
    ids = [await seed.message(received_at=now - 30 * M) for _ in range(3)]
    await seed.message(raw="GARBAGE", received_at=now - 30 * M)
    for mid in ids[:2]:
        await seed.delivered(mid, "lab", base=now - 30 * M, created=timedelta(seconds=1),
                             first=timedelta(seconds=2), done=timedelta(seconds=4))
    await seed.delivery(ids[2], "lab", created_at=now - 29 * M, status="started")
    await seed.dead_letter(ids[2], "lab", at=now - 20 * M)
    params = {"from": (now - 60 * M).isoformat(), "to": now.isoformat()}
    body = (await api.get("/api/reports/deliveries", params=params, headers=bearer("viewer"))).json()
    assert body["channels"] == [{"channel": "adt-in", "received": 4, "accepted": 3, "rejected": 1}]
    f = body["flows"][0]
    assert (f["messages"], f["delivered"], f["dead_lettered"], f["success_rate"]) == (3, 2, 1, round(2 / 3, 4))
    assert f["avg_latency_ms"] == 4000
    r = await api.get("/api/reports/deliveries", params={**params, "format": "csv"}, headers=bearer("viewer"))
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["destination"] == "lab" and rows[0]["delivered"] == "2" and rows[0]["rejected"] == "1"
    r = await api.get("/api/reports/deliveries", params={**params, "format": "pdf"}, headers=bearer("viewer"))
    assert r.status_code == 422 and r.json()["field"] == "query.format"
