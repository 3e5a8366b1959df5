"""PostgreSQL access: the pool factory (jsonb codecs) and the migration runner."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import asyncpg

log = logging.getLogger("lifeline.db")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary constant: every Lifeline process migrating the same database serialises on it.
MIGRATION_LOCK_KEY = 0x11FE11E


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """One pool per process, created at start-up."""
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init_connection)
    assert pool is not None
    return pool


def migration_files() -> list[Path]:
    return sorted(p for p in MIGRATIONS_DIR.glob("*.sql"))


async def migrate(url: str) -> list[str]:
    """Apply pending migrations in order, each once, safely when several processes race; return applied names."""
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "create table if not exists schema_migrations ("
                " name text primary key, applied_at timestamptz not null default now())"
            )
            done = {r["name"] for r in await conn.fetch("select name from schema_migrations")}
            for path in migration_files():
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text(encoding="utf-8"))
                    await conn.execute("insert into schema_migrations (name) values ($1)", path.name)
                log.info("applied migration %s", path.name)
                applied.append(path.name)
        finally:
            await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied
