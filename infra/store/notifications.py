"""On-call notifications: the outbox of e-mails, chat posts and pages (one row per event and channel)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]
    Db: TypeAlias = asyncpg.Pool | Conn

_LAST_FOR_KEY = """
select action, status from notifications where org_id = $1 and channel = $2 and dedup_key = $3 and status <> 'failed'
order by id desc limit 1
"""
_INSERT = """
insert into notifications (org_id, key, channel, kind, event, subject, dedup_key, action, body)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
on conflict (org_id, key) do nothing
returning id
"""


async def enqueue(conn: Conn, *, org_id: str, key: str, channel: str, kind: str, event: str,
                  subject: str, dedup_key: str, action: str, body: dict[str, Any]) -> int | None:
    """Record a notification to send, or None when it is not due: a trigger while this key's page is already open
    (a case pages once), a resolve with no open page. Returns the id of an existing row for the same event key."""
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(hashtext($1))", f"notify:{org_id}:{channel}:{dedup_key}")
        existing = await conn.fetchval("select id from notifications where org_id = $1 and key = $2", org_id, key)
        if existing is not None:
            return int(existing)
        last = await conn.fetchrow(_LAST_FOR_KEY, org_id, channel, dedup_key)
        page_open = last is not None and last["action"] == "trigger"
        if (action == "trigger" and page_open) or (action == "resolve" and not page_open):
            return None
        new_id = await conn.fetchval(_INSERT, org_id, key, channel, kind, event, subject, dedup_key, action,
                                     json.dumps(body))
        return None if new_id is None else int(new_id)


async def claim_due(conn: Conn, ids: list[int] | None, limit: int = 50) -> list[asyncpg.Record]:
    """Pending rows whose time has come (or exactly `ids`, due or not), locked; call inside a transaction."""
    if ids is not None:
        return await conn.fetch("select * from notifications where id = any($1::bigint[]) and status = 'pending'"
                                " order by id for update skip locked", ids)
    return await conn.fetch("select * from notifications where status = 'pending' and next_at <= now()"
                            " order by id limit $1 for update skip locked", limit)


async def mark_sent(conn: Db, notification_id: int) -> None:
    await conn.execute("update notifications set status = 'sent', attempts = attempts + 1, sent_at = now(),"
                       " last_error = null where id = $1", notification_id)


async def mark_failed(conn: Db, notification_id: int, error: str, retry_at: datetime | None) -> None:
    """One more failed attempt: pending again at `retry_at`, or `failed` for good when it is None."""
    await conn.execute("update notifications set attempts = attempts + 1, last_error = $2,"
                       " status = case when $3::timestamptz is null then 'failed' else 'pending' end,"
                       " next_at = coalesce($3::timestamptz, next_at) where id = $1",
                       notification_id, error[:500], retry_at)


async def statuses(conn: Db, ids: list[int]) -> list[str]:
    rows = await conn.fetch("select status from notifications where id = any($1::bigint[])", ids)
    return [r["status"] for r in rows]


async def for_subject(conn: Db, org_id: str, subject: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("select id, channel, kind, event, dedup_key, action, status, attempts, last_error,"
                            " created_at, sent_at from notifications where org_id = $1 and subject = $2 order by id",
                            org_id, subject)
    return [dict(r) for r in rows]
