"""The event log: written by the store's own changes (triggers), read with filters and cursor paging, pruned past
its retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from activities.diagnostics import upsert_case
from infra.crypto import Cipher
from infra.store import events as store
from tests.delivery.harness import bearer
from tests.webhooks.conftest import add_versions, api, draining
from workflows.contract import CaseState

VIEWER = bearer("viewer")


async def case_through(pool: asyncpg.Pool, case_id: str, *stages: str) -> None:
    for stage in stages:
        await upsert_case(pool, CaseState(case_id, "destination_down", "destination:lab", stage=stage,
                                          org_id="default", opened_at="2026-01-01T00:00:00+00:00"), "run-1")


async def test_case_and_config_changes_are_logged_and_filtered(db_url: str, pool: asyncpg.Pool) -> None:
    await add_versions(pool, 2)
    await case_through(pool, "case:default:destination_down:destination:lab", "detected", "diagnosing",
                       "awaiting_approval", "remediating", "verifying", "resolved")
    async with api(db_url) as c:
        r = await c.get("/api/events/log", params={"type": "case.*"}, headers=VIEWER)
        assert r.status_code == 200, r.text
        assert [e["type"] for e in r.json()["items"]] == ["case.resolved", "case.verifying", "case.remediating",
                                                          "case.awaiting_approval", "case.opened"]
        opened = r.json()["items"][-1]
        assert opened["subject"] == "case:default:destination_down:destination:lab"
        assert opened["links"]["case"].endswith("/api/remediations/case%3Adefault%3Adestination_down%3A"
                                                "destination%3Alab")
        r = await c.get("/api/events/log", params=[("type", "config.changed"), ("type", "case.opened")],
                        headers=VIEWER)
        assert [e["type"] for e in r.json()["items"]] == ["case.opened", "config.changed", "config.changed"]

        # Cursor paging walks everything once, newest first.
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await c.get("/api/events/log", params=params, headers=VIEWER)).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 7 and seen == sorted(seen, reverse=True) and len(set(seen)) == 7

        # Time filters.
        future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert (await c.get("/api/events/log", params={"since": future}, headers=VIEWER)).json()["items"] == []
        assert len((await c.get("/api/events/log", params={"until": future}, headers=VIEWER)).json()["items"]) == 7
        assert (await c.get("/api/events/log", params={"limit": 0}, headers=VIEWER)).status_code == 422
        assert (await c.get("/api/events/log")).status_code == 401


async def test_retention_prunes_old_events_and_finished_sends(db_url: str, pool: asyncpg.Pool,
                                                              store_cipher: Cipher) -> None:
    await add_versions(pool, 3)
    await pool.execute("update events set occurred_at = now() - interval '40 days'"
                       " where id in (select id from events order by id limit 2)")
    async with draining(db_url, store_cipher) as drainer:  # the worker's periodic job, called directly
        assert drainer.retention == timedelta(days=30)
        assert await drainer.prune() == (2, 0)
        assert await drainer.prune(now=datetime.now(UTC) + timedelta(days=31)) == (1, 0)
    assert await pool.fetchval("select count(*) from events") == 0
    assert await store.list_events(pool, "default") == []


async def test_sla_and_message_events_are_logged(db_url: str, pool: asyncpg.Pool) -> None:
    from infra.store import sla

    now = datetime.now(UTC)
    row = await sla.upsert_violation(pool, "default", "lab-sla", "p95_latency", "destination:lab", 500.0, now,
                                     900.0, False)
    await sla.upsert_violation(pool, "default", "lab-sla", "p95_latency", "destination:lab", 500.0, now, 950.0,
                               False)  # still open: no new event
    assert await sla.set_escalated(pool, "default", row["id"], now)
    await sla.close_violation(pool, "default", "lab-sla", "p95_latency", now + timedelta(minutes=5))
    async with api(db_url) as c:
        sender = bearer("sender")
        ok = await c.post("/api/channels/adt-in/messages", headers={**sender, "content-type": "text/plain"},
                          content="MSH|^~\\&|EPIC|HOSP|LAB|LABF|20260101120000||ADT^A01|M1|P|2.5.1\r"
                                  "PID|1||QQMRN55^^^HOSP^MR||QQDOE^JANE")
        assert ok.status_code == 202, ok.text
        bad = await c.post("/api/channels/adt-in/messages", headers={**sender, "content-type": "text/plain"},
                           content="MSH|^~\\&|EPIC|HOSP|LAB|LABF|20260101120000||ADT^A01||P|2.5.1\r")
        assert bad.status_code == 422, bad.text
        items = (await c.get("/api/events/log", params=[("type", "sla.*"), ("type", "message.*")],
                             headers=VIEWER)).json()["items"]
    assert [e["type"] for e in items] == ["message.rejected", "message.received", "sla.restored", "sla.escalated",
                                          "sla.violated"]
    assert {e["subject"] for e in items if e["type"].startswith("sla.")} == {"lab-sla/p95_latency"}
    assert items[0]["data"]["status"] == "rejected" and items[0]["channel"] == "adt-in"
    assert items[1]["links"]["message"].endswith(f"/api/messages/{ok.json()['message_id']}")
    assert "QQMRN55" not in str(items) and "QQDOE" not in str(items)
