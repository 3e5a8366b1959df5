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
ENABLE_RLS = """
select lifeline_enable_rls(c.oid::regclass) from pg_class c join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped
where n.nspname = current_schema() and c.relkind in ('r', 'p')
  and not (c.relrowsecurity and c.relforcerowsecurity
           and exists (select 1 from pg_policy p where p.polrelid = c.oid and p.polname = 'lifeline_org'))
"""


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10, role: str = "") -> asyncpg.Pool:
    """One pool per process, created at start-up; `role`: the role every connection acts as (SET ROLE), the
    application role that owns no table so row-level security binds it (Settings.database_role)."""

    async def init(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        if role:
            # `role` survives the RESET ALL a pool runs when a connection is released (it is not reset by it).
            await conn.execute(f"set role {quote_ident(role)}")

    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init)
    assert pool is not None
    return pool


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def migration_files() -> list[Path]:
    return sorted(p for p in MIGRATIONS_DIR.glob("*.sql"))


async def migrate(url: str) -> list[str]:
    """Apply pending migrations in order, each once, safely when several processes race; return applied names."""
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        # Migrations see and change every org's rows (row-level security, 0010) whoever the owner is.
        await conn.execute("select set_config('lifeline.system', 'migrate', false)")
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
            if await conn.fetchval("select to_regprocedure('lifeline_enable_rls(regclass)') is not null"):
                # Every tenant table, whichever migration made it, gets the org policy (0010).
                await conn.execute(ENABLE_RLS)
        finally:
            await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied
