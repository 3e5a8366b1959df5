"""Configuration versions: each org's configuration as numbered, immutable versions (a rollback is a new version)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from infra.store import org_tx, system_tx

CONFIG_CHANNEL = "lifeline_config"  # NOTIFY payload: the org whose configuration changed
_ORG_LOCK = "select pg_advisory_xact_lock(hashtext('lifeline-config:' || $1))"


@dataclass
class ConfigVersion:
    org_id: str
    version: int
    document: dict[str, Any]
    author: str
    created_at: datetime
    comment: str = ""
    restored_from: int | None = None


def _row(r: Any) -> ConfigVersion:
    return ConfigVersion(r["org_id"], r["version"], r["document"], r["author"], r["created_at"], r["comment"],
                         r["restored_from"])


async def latest(conn: asyncpg.Pool | asyncpg.Connection, org: str) -> ConfigVersion | None:
    async with org_tx(conn, org) as c:
        r = await c.fetchrow("select * from config_versions where org_id = $1 order by version desc limit 1", org)
    return _row(r) if r else None


async def get_version(conn: asyncpg.Pool | asyncpg.Connection, org: str, version: int) -> ConfigVersion | None:
    async with org_tx(conn, org) as c:
        r = await c.fetchrow("select * from config_versions where org_id = $1 and version = $2", org, version)
    return _row(r) if r else None


async def current_versions(conn: asyncpg.Pool | asyncpg.Connection) -> list[ConfigVersion]:
    """The newest version of every org (what every process follows)."""
    async with system_tx(conn, "config_versions", readonly=True) as c:  # every org's current version
        rows = await c.fetch("select distinct on (org_id) * from config_versions order by org_id, version desc")
    return [_row(r) for r in rows]


async def version_numbers(conn: asyncpg.Pool | asyncpg.Connection) -> dict[str, int]:
    async with system_tx(conn, "config_versions", readonly=True) as c:
        rows = await c.fetch("select org_id, max(version) as v from config_versions group by org_id")
    return {r["org_id"]: r["v"] for r in rows}


async def list_versions(conn: asyncpg.Pool | asyncpg.Connection, org: str, limit: int = 100) -> list[ConfigVersion]:
    async with org_tx(conn, org) as c:
        rows = await c.fetch("select * from config_versions where org_id = $1 order by version desc limit $2",
                             org, limit)
    return [_row(r) for r in rows]


async def add_file_version(pool: asyncpg.Pool, org: str, document: dict[str, Any], author: str) -> ConfigVersion | None:
    """A new version from the configuration file, unless the file's part is what the file last gave (so a
    restart with an unchanged file keeps versions made through the API; an edited file wins)."""
    async with org_tx(pool, org) as conn:
        await conn.execute(_ORG_LOCK, org)
        last = await conn.fetchval(
            "select document from config_versions where org_id = $1 and author like 'file:%'"
            " order by version desc limit 1", org)
        if last == document:
            return None
        newest = await conn.fetchval("select max(version) from config_versions where org_id = $1", org)
        r = await conn.fetchrow(
            "insert into config_versions (org_id, version, document, author, comment)"
            " values ($1, $2, $3, $4, 'from the configuration file') returning *",
            org, (newest or 0) + 1, document, author)
        await conn.execute("select pg_notify($1, $2)", CONFIG_CHANNEL, org)
    return _row(r)


async def add_version(pool: asyncpg.Pool, org: str, document: dict[str, Any], author: str, *, comment: str = "",
                      restored_from: int | None = None, only_if_none: bool = False,
                      expected: int | None = None) -> ConfigVersion | None:
    """Store a new version (the next number) and notify every process; None when `only_if_none` and the org
    already has one, or when `expected` is given and is no longer the newest version (a concurrent change)."""
    async with org_tx(pool, org) as conn:
        await conn.execute(_ORG_LOCK, org)
        newest = await conn.fetchval("select max(version) from config_versions where org_id = $1", org)
        if only_if_none and newest is not None:
            return None
        if expected is not None and (newest or 0) != expected:
            return None
        r = await conn.fetchrow(
            "insert into config_versions (org_id, version, document, author, comment, restored_from)"
            " values ($1, $2, $3, $4, $5, $6) returning *",
            org, (newest or 0) + 1, document, author, comment, restored_from)
        await conn.execute("select pg_notify($1, $2)", CONFIG_CHANNEL, org)
    return _row(r)


async def channel_versions(conn: asyncpg.Pool | asyncpg.Connection, org: str,
                           window_s: float = 300.0) -> tuple[int | None, dict[str, int]]:
    """The org's current version, and per channel the newest version its messages were routed with lately."""
    from infra.store import org_tx

    async with org_tx(conn, org, readonly=True) as c:
        current = await c.fetchval("select max(version) from config_versions where org_id = $1", org)
        rows = await c.fetch(
            "select channel, max(config_version) as v from messages where org_id = $1 and config_version is not null"
            " and received_at > now() - make_interval(secs => $2) group by channel", org, window_s)
    return current, {r["channel"]: r["v"] for r in rows}
