"""Audit trail: append-only in the database, `lifeline audit verify` finds edits and deletions, API reads it."""

from __future__ import annotations

import asyncio
import csv
import io

import asyncpg
import httpx
import pytest

from activities.store import audit
from infra.store.audit import list_audit
from tests.monitoring.conftest import bearer
from workers.cli import main


async def _append(pool: asyncpg.Pool, n: int, org: str = "default") -> list[int]:
    for i in range(n):
        await audit(pool, org_id=org, actor=f"user{i % 2}", action="dead_letters.replay" if i % 2 else "message.read",
                    subject=f"s{i}", role="operator", detail={"i": i, "why": "test ü", "rate": 0.1})
    return sorted(r["id"] for r in await list_audit(pool, org, limit=1000))


async def verify(db_url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, ["audit", "verify", "--database-url", db_url, *extra])
    return code, capsys.readouterr().out.strip()


async def test_verify_ok_then_detects_an_edited_and_a_deleted_row(app_pool: asyncpg.Pool,
                                                                  superuser_pool: asyncpg.Pool, db_url: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ids = await _append(app_pool, 6)
    await _append(app_pool, 2, org="other")
    assert await verify(db_url, capsys) == (0, "ok: 8 rows in 2 orgs")
    assert await verify(db_url, capsys, "--org", "default") == (0, "ok: 6 rows")

    # The table refuses changes; tampering needs the owner/superuser to disable the trigger first.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await superuser_pool.execute("update audit_log set actor = 'mallory' where id = $1", ids[2])
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await superuser_pool.execute("delete from audit_log where id = $1", ids[2])
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await superuser_pool.execute("truncate audit_log")

    async with superuser_pool.acquire() as c:
        await c.execute("alter table audit_log disable trigger audit_log_no_update_delete")
        await c.execute("update audit_log set detail = '{\"i\": 99}' where id = $1", ids[2])
        await c.execute("alter table audit_log enable trigger audit_log_no_update_delete")
    code, out = await verify(db_url, capsys)
    assert code == 1 and f"row {ids[2]} " in out and "edited" in out
    assert await verify(db_url, capsys, "--org", "other") == (0, "ok: 2 rows")


async def test_verify_detects_a_deleted_row(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool, db_url: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ids = await _append(app_pool, 5)
    async with superuser_pool.acquire() as c:
        await c.execute("alter table audit_log disable trigger audit_log_no_update_delete")
        await c.execute("delete from audit_log where id = $1", ids[1])
        await c.execute("alter table audit_log enable trigger audit_log_no_update_delete")
    code, out = await verify(db_url, capsys)
    assert code == 1 and f"row {ids[2]} " in out and "deleted" in out


async def test_audit_api_filters_pages_and_exports(api: httpx.AsyncClient, app_pool: asyncpg.Pool) -> None:
    await _append(app_pool, 6)
    await _append(app_pool, 1, org="other")
    assert (await api.get("/api/audit", headers=bearer("viewer"))).status_code == 403
    auditor = bearer("auditor")
    body = (await api.get("/api/audit", headers=auditor)).json()
    assert len(body["items"]) == 6 and body["items"][0]["subject"] == "s5"  # newest first, own org only
    body = (await api.get("/api/audit", params={"actor": "user1"}, headers=auditor)).json()
    assert {i["actor"] for i in body["items"]} == {"user1"} and len(body["items"]) == 3
    body = (await api.get("/api/audit", params={"action": "dead_letters.*", "limit": 2, "offset": 1},
                          headers=auditor)).json()
    assert [i["subject"] for i in body["items"]] == ["s3", "s1"]
    r = await api.get("/api/audit", params={"since": "not-a-date"}, headers=auditor)
    assert r.status_code == 422 and r.json()["field"] == "query.since"

    r = await api.get("/api/audit/export", params={"from": "2020-01-01"}, headers=auditor)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["subject"] for x in rows] == [f"s{i}" for i in range(6)]
    assert rows[1]["prev_hash"] == rows[0]["hash"] and len(rows[0]["hash"]) == 64
    # The export itself is audited.
    last = (await api.get("/api/audit", params={"limit": 1}, headers=auditor)).json()["items"][0]
    assert last["action"] == "audit.export" and last["detail"]["rows"] == 6
    r = await api.get("/api/audit/export", params={"to": "2020-13-01"}, headers=auditor)
    assert r.status_code == 422 and r.json()["field"] == "to"
