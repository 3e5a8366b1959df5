"""Cross-org (system) transactions leave a keyed audit trail in the `_system` org: the first of each purpose, then one
summary row per purpose per interval, with the number of transactions; never a row per transaction."""

from __future__ import annotations

import asyncpg
import pytest

from infra.store import SYSTEM_AUDIT_ORG, audit_system_transactions, system_audit, system_tx, system_tx_count
from infra.store.api_keys import lookup
from infra.store.audit import list_audit, verify_chain


async def test_system_transactions_are_summarised_per_purpose_per_interval(app_pool: asyncpg.Pool,
                                                                         superuser_pool: asyncpg.Pool) -> None:
    audit_system_transactions(3600, actor="api@host:1")
    for _ in range(3):
        assert await lookup(app_pool, b"no such key") is None  # system_tx "api_key_lookup", read-only
    rows = await list_audit(app_pool, SYSTEM_AUDIT_ORG)
    assert [(r["action"], r["subject"], r["actor"], r["detail"]["transactions"]) for r in rows] == [
        ("system_tx.summary", "api_key_lookup", "api@host:1", 1)]

    # An interval later (the clock of the last row moved back), the next transaction writes the count since.
    at, count = system_audit.written["api_key_lookup"]
    system_audit.written["api_key_lookup"] = (at - 3601, count)
    await lookup(app_pool, b"no such key")
    await lookup(app_pool, b"no such key")
    rows = await list_audit(app_pool, SYSTEM_AUDIT_ORG)
    assert [r["detail"]["transactions"] for r in rows] == [3, 1]  # newest first: 2 + the one that wrote it
    assert rows[0]["detail"]["since_seconds"] >= 3601

    # Inside a caller's transaction nothing is written (it may be read-only); the next free call catches up.
    async with app_pool.acquire() as conn, conn.transaction():
        system_audit.written["dispatch"] = (0.0, system_tx_count["dispatch"])
        async with system_tx(conn, "dispatch") as c:
            await c.fetchval("select count(*) from messages")
    assert len(await list_audit(app_pool, SYSTEM_AUDIT_ORG)) == 2
    async with system_tx(app_pool, "dispatch") as c:
        await c.fetchval("select count(*) from messages")
    rows = await list_audit(app_pool, SYSTEM_AUDIT_ORG, action="system_tx.*")
    assert rows[0]["subject"] == "dispatch" and rows[0]["detail"]["transactions"] == 2

    # The rows are chained and keyed like every org's; no tenant org sees them.
    result = await verify_chain(superuser_pool)
    assert result.ok and set(result.heads) == {SYSTEM_AUDIT_ORG}
    assert await list_audit(app_pool, "default") == []


async def test_off_by_default_in_a_library_user(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool) -> None:
    await lookup(app_pool, b"no such key")
    assert await superuser_pool.fetchval("select count(*) from audit_log") == 0


async def test_a_process_without_an_audit_key_still_runs_its_system_transactions(
        app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dispatcher started without any key (it needs none to dispatch) must not fail on the summary."""
    def no_key() -> None:
        raise RuntimeError("LIFELINE_AUDIT_KEY (or LIFELINE_STORE_KEY to derive it) is not set")

    monkeypatch.setattr("infra.store.audit.current_keys", no_key)
    audit_system_transactions(3600)
    async with system_tx(app_pool, "dispatch") as c:
        assert await c.fetchval("select count(*) from messages") == 0
    assert await superuser_pool.fetchval("select count(*) from audit_log") == 0
