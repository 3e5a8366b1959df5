"""Row-level security: a transaction sees only the org it names; every tenant table is covered; cross-org access
goes through system_tx with a known purpose only."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from activities.store import accept
from infra.config import Channel
from infra.crypto import Cipher
from infra.store import SYSTEM_PURPOSES, org_tx, system_tx
from infra.store.messages import list_messages

ROOT = Path(__file__).resolve().parents[2]
ADT = ("MSH|^~\\&|EHR|HOSP|LAB|HOSP|20240101120000||ADT^A01|{cid}|P|2.5\rEVN|A01|20240101120000\r"
       "PID|1||{mrn}^^^HOSP^MR||DOE^JANE||19800101|F\rPV1|1|I")


def _channel(org: str) -> Channel:
    return Channel(name=f"adt-{org}", org=org)


async def test_every_org_table_has_forced_row_level_security(pool: asyncpg.Pool) -> None:
    """Catches a new tenant table (from any migration) that forgot `select lifeline_enable_rls('t')`."""
    rows = await pool.fetch(
        "select c.relname, c.relrowsecurity, c.relforcerowsecurity,"
        " exists (select 1 from pg_policy p where p.polrelid = c.oid and p.polname = 'lifeline_org') as policy"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " join pg_attribute a on a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped"
        " where n.nspname = 'public' and c.relkind in ('r', 'p')")
    assert {"messages", "deliveries", "dead_letters", "audit_log", "api_keys", "cases"} <= {r["relname"] for r in rows}
    missing = [r["relname"] for r in rows if not (r["relrowsecurity"] and r["relforcerowsecurity"] and r["policy"])]
    assert missing == [], f"tables with org_id but no forced lifeline_org policy: {missing}"


async def test_app_role_owns_nothing(pool: asyncpg.Pool) -> None:
    owners = await pool.fetch("select tablename from pg_tables where schemaname = 'public'"
                              " and tableowner = 'lifeline_app'")
    assert owners == []
    assert not await pool.fetchval("select rolsuper or rolbypassrls from pg_roles where rolname = 'lifeline_app'")


async def test_a_query_without_the_org_setting_sees_no_rows(app_pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    for org, n in (("org-a", 3), ("org-b", 2)):
        for i in range(n):
            r = await accept(app_pool, store_cipher, _channel(org), ADT.format(cid=f"{org}-{i}", mrn=f"M{i}"))
            assert r.status == "accepted"
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from messages") == 0  # no org named: nothing
        assert await conn.fetchval("select count(*) from messages where org_id = 'org-a'") == 0
    async with org_tx(app_pool, "org-a") as conn:
        assert await conn.fetchval("select count(*) from messages") == 3  # no org filter needed: RLS scopes it
    async with org_tx(app_pool, "org-b") as conn:
        assert await conn.fetchval("select count(*) from messages") == 2
    assert len(await list_messages(app_pool, "org-b")) == 2
    assert await list_messages(app_pool, "org-c") == []
    async with system_tx(app_pool, "dispatch") as conn:
        assert await conn.fetchval("select count(*) from messages") == 5
    # The setting is transaction-local: the connection goes back to the pool seeing nothing again.
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from messages") == 0


async def test_writing_another_orgs_row_is_refused(app_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with org_tx(app_pool, "org-a") as conn:
            await conn.execute("insert into destination_state (org_id, destination, paused)"
                               " values ('org-b', 'x', true)")
    async with org_tx(app_pool, "org-a") as conn:
        await conn.execute("insert into destination_state (org_id, destination, paused)"
                           " values ('org-a', 'x', true)")
    async with org_tx(app_pool, "org-b") as conn:
        assert await conn.execute("update destination_state set paused = false") == "UPDATE 0"
        assert await conn.execute("delete from destination_state") == "DELETE 0"


async def test_app_role_cannot_rewrite_the_audit_log_or_lift_the_walls(app_pool: asyncpg.Pool) -> None:
    from infra.store.audit import append

    await append(app_pool, org_id="org-a", actor="t", action="x")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with org_tx(app_pool, "org-a") as conn:
            await conn.execute("update audit_log set actor = 'someone else'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_pool.execute("alter table messages disable row level security")


async def test_system_tx_knows_its_purposes(app_pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError):
        async with system_tx(app_pool, "curiosity"):
            pass
    with pytest.raises(ValueError):
        async with org_tx(app_pool, ""):
            pass


def test_only_the_store_lifts_the_org_wall() -> None:
    """`lifeline.system` is set only by infra.store.system_tx and the migration runner; system_tx is used only by
    the modules that do the cross-org work of SYSTEM_PURPOSES."""
    setters, users = set(), set()
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv/", "tests/")):
            continue
        text = path.read_text(encoding="utf-8")
        if "lifeline.system" in text:
            setters.add(rel)
        if re.search(r"\bsystem_tx\(", text):
            users.add(rel)
    assert setters == {"infra/store/__init__.py", "infra/db.py"}
    outside_store = {u for u in users if not u.startswith("infra/store/")}
    assert outside_store <= {"workers/dispatcher.py", "activities/metrics.py", "activities/oncall.py"}, outside_store
    assert set(SYSTEM_PURPOSES) == {"dispatch", "monitor_snapshot", "audit_verify", "api_key_lookup",
                                    "notification_delivery", "config_versions", "webhook_delivery",
                                    "event_retention"}
