"""The event log: what happened, when, to what (ids, never content). Rows are written by the triggers of
migration 0090 in the transaction of the change itself; this module reads and prunes them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from infra.store import org_tx, system_tx

if TYPE_CHECKING:
    from infra.store import Db

EVENT_COLS = "id, type, occurred_at, subject, channel, destination, message_type, data"


def type_pattern(value: str) -> str:
    """An exact type, or 'case.*' / '*' as a SQL LIKE prefix pattern."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped[:-1] + "%" if escaped.endswith("*") else escaped


async def list_events(db: Db, org_id: str, *, types: list[str] | None = None, since: datetime | None = None,
                      until: datetime | None = None, subject: str | None = None, channel: str | None = None,
                      destination: str | None = None, before_id: int | None = None,
                      limit: int = 100) -> list[dict[str, Any]]:
    """Events of the org, newest first; `before_id` is the cursor (the last id of the previous page)."""
    patterns = [type_pattern(t) for t in types] if types else None
    async with org_tx(db, org_id, readonly=True) as c:
        rows = await c.fetch(
            f"select {EVENT_COLS} from events where org_id = $1"
            " and ($2::text[] is null or type like any($2::text[]))"
            " and ($3::timestamptz is null or occurred_at >= $3) and ($4::timestamptz is null or occurred_at < $4)"
            " and ($5::text is null or subject = $5) and ($6::text is null or channel = $6)"
            " and ($7::text is null or destination = $7) and ($8::bigint is null or id < $8)"
            " order by id desc limit $9",
            org_id, patterns, since, until, subject, channel, destination, before_id, limit)
    return [dict(r) for r in rows]


async def get_event(db: Db, org_id: str, event_id: int) -> dict[str, Any] | None:
    async with org_tx(db, org_id, readonly=True) as c:
        row = await c.fetchrow(f"select {EVENT_COLS} from events where org_id = $1 and id = $2", org_id, event_id)
    return dict(row) if row is not None else None


async def prune(db: Db, before: datetime, *, batch: int = 10_000) -> tuple[int, int]:
    """Delete events and finished webhook delivery records older than `before`, every org (retention);
    returns (events, deliveries) deleted. Pending deliveries are kept whatever their age."""
    events = deliveries = 0
    while True:
        async with system_tx(db, "event_retention") as c:
            n = await c.fetchval(
                "with gone as (delete from events where id in (select id from events where occurred_at < $1"
                " limit $2) returning 1) select count(*) from gone", before, batch)
        events += int(n)
        if n < batch:
            break
    while True:
        async with system_tx(db, "event_retention") as c:
            n = await c.fetchval(
                "with gone as (delete from webhook_deliveries where id in (select id from webhook_deliveries"
                " where created_at < $1 and status <> 'pending' limit $2) returning 1) select count(*) from gone",
                before, batch)
        deliveries += int(n)
        if n < batch:
            break
    return events, deliveries
