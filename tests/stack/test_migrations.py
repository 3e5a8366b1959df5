"""Migrations: ordered, applied once, recorded, safe under a race; every table is tenant-scoped."""

from __future__ import annotations

import asyncio

import asyncpg

from infra.db import migrate, migration_files
from infra.devstack import EmbeddedPostgres


async def test_race_applies_each_file_once(pg_server: EmbeddedPostgres) -> None:
    url = pg_server.create_database("race_target")
    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    names = [p.name for p in migration_files()]
    applied = [name for r in results for name in r]
    assert sorted(applied) == sorted(names)  # each file by exactly one of the racers
    assert await migrate(url) == []
    conn = await asyncpg.connect(url)
    try:
        recorded = [r["name"] for r in await conn.fetch("select name from schema_migrations order by name")]
        assert recorded == names
        tables = await conn.fetch(
            "select table_name from information_schema.tables where table_schema='public'"
            " and table_name <> 'schema_migrations'")
        assert {"messages", "deliveries", "dead_letters", "audit_log", "delivery_attempts"} <= {
            t["table_name"] for t in tables}
        for t in tables:
            cols = {c["column_name"] for c in await conn.fetch(
                "select column_name from information_schema.columns where table_name = $1", t["table_name"])}
            assert "org_id" in cols, f"table {t['table_name']} has no org_id"
    finally:
        await conn.close()
