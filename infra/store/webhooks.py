"""Webhook subscriptions: their rows, the admission of logged events into each subscription's ordered queue
(webhook_deliveries, one sequence number per admitted event), the outcome of each send, and replays.

Order per subscription: events are admitted in (xid, id) order and only from transactions that have all finished
(`xid < pg_snapshot_xmin(...)`), so the cursor never passes an event that commits later; the drainer sends the
pending rows of a subscription one at a time in sequence order.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from infra.store import org_tx, system_tx
from infra.store.events import EVENT_COLS, type_pattern

if TYPE_CHECKING:
    import asyncpg

    from infra.store import Db

SUB_COLS = ("id, url, description, events, channels, destinations, message_types, enabled, max_attempts,"
            " initial_interval_s, maximum_interval_s, last_seq, created_at, created_by, updated_at")
DELIVERY_COLS = ("id, subscription_id, event_id, event_type, seq, status, attempts, next_at, last_error,"
                 " response_status, replay_of, replayed_at, created_at, finished_at")
UPDATABLE = ("url", "description", "events", "channels", "destinations", "message_types", "enabled",
             "max_attempts", "initial_interval_s", "maximum_interval_s")


def glob_pattern(value: str) -> str:
    """A message type glob ('ADT^*') as a LIKE pattern."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")


async def create(db: Db, org_id: str, *, sub_id: str, url: str, description: str, events: list[str],
                 channels: list[str], destinations: list[str], message_types: list[str], secret_enc: bytes,
                 key_id: str, max_attempts: int, initial_interval_s: float, maximum_interval_s: float,
                 created_by: str) -> dict[str, Any]:
    """A new subscription; it receives the events committed from now on (not the log's past)."""
    async with org_tx(db, org_id) as c:
        row = await c.fetchrow(
            "insert into webhook_subscriptions (id, org_id, url, description, events, channels, destinations,"
            " message_types, secret_enc, key_id, max_attempts, initial_interval_s, maximum_interval_s, created_by,"
            " cursor_xid) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
            " pg_snapshot_xmin(pg_current_snapshot())) returning " + SUB_COLS,
            sub_id, org_id, url, description, events, channels, destinations, message_types, secret_enc, key_id,
            max_attempts, initial_interval_s, maximum_interval_s, created_by)
    assert row is not None
    return dict(row)


async def list_subscriptions(db: Db, org_id: str) -> list[dict[str, Any]]:
    async with org_tx(db, org_id, readonly=True) as c:
        rows = await c.fetch(f"select {SUB_COLS} from webhook_subscriptions where org_id = $1 order by created_at",
                             org_id)
    return [dict(r) for r in rows]


async def get(db: Db, org_id: str, sub_id: str) -> dict[str, Any] | None:
    async with org_tx(db, org_id, readonly=True) as c:
        row = await c.fetchrow(f"select {SUB_COLS} from webhook_subscriptions where org_id = $1 and id = $2",
                               org_id, sub_id)
    return dict(row) if row is not None else None


async def secret(db: Db, org_id: str, sub_id: str) -> tuple[bytes, str] | None:
    """(secret_enc, key_id) of a subscription."""
    async with org_tx(db, org_id, readonly=True) as c:
        row = await c.fetchrow("select secret_enc, key_id from webhook_subscriptions where org_id = $1 and id = $2",
                               org_id, sub_id)
    return (bytes(row["secret_enc"]), row["key_id"]) if row is not None else None


async def update(db: Db, org_id: str, sub_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Change the named columns (UPDATABLE, plus secret_enc/key_id for a rotation); None when there is no such
    subscription in the org."""
    cols = [k for k in changes if k in UPDATABLE or k in ("secret_enc", "key_id")]
    sets = ", ".join(f"{k} = ${i + 3}" for i, k in enumerate(cols))
    async with org_tx(db, org_id) as c:
        row = await c.fetchrow(
            f"update webhook_subscriptions set {sets + ', ' if sets else ''}updated_at = now()"
            f" where org_id = $1 and id = $2 returning {SUB_COLS}", org_id, sub_id, *[changes[k] for k in cols])
    return dict(row) if row is not None else None


async def delete(db: Db, org_id: str, sub_id: str) -> bool:
    async with org_tx(db, org_id) as c:
        return await c.fetchval("delete from webhook_subscriptions where org_id = $1 and id = $2 returning id",
                                org_id, sub_id) is not None


async def enabled_subscriptions(db: Db) -> list[tuple[str, str]]:
    """(org_id, id) of every enabled subscription, every org: the drainer's work list."""
    async with system_tx(db, "webhook_delivery", readonly=True) as c:
        rows = await c.fetch("select org_id, id from webhook_subscriptions where enabled order by created_at")
    return [(r["org_id"], r["id"]) for r in rows]


async def admit(db: Db, org_id: str, sub_id: str, batch: int = 500) -> int:
    """Move the subscription's cursor over newly committed events, queueing the ones its filters select (each
    with the next sequence number); returns how many were queued."""
    async with org_tx(db, org_id) as c:
        sub = await c.fetchrow(
            "select events, channels, destinations, message_types, cursor_xid::text as cursor_xid, cursor_id, last_seq,"
            " enabled"
            " from webhook_subscriptions where org_id = $1 and id = $2 for update", org_id, sub_id)
        if sub is None or not sub["enabled"]:
            return 0
        horizon = await c.fetchval("select pg_snapshot_xmin(pg_current_snapshot())::text")
        rows = await c.fetch(
            # The cast xid gets its own name: `order by xid` would otherwise sort the text alias ('1001' < '969'),
            # and the cursor would land on the wrong event once transaction ids change their number of digits.
            "select e.id, e.type, e.xid::text as xid_text from events e where e.org_id = $1 and e.xid < $2::text::xid8"
            " and (e.xid, e.id) > ($3::text::xid8, $4::bigint) and e.type like any($5::text[])"
            " and (cardinality($6::text[]) = 0 or e.channel = any($6::text[]))"
            " and (cardinality($7::text[]) = 0 or e.destination = any($7::text[]))"
            " and (cardinality($8::text[]) = 0 or e.message_type like any($8::text[]))"
            " order by e.xid, e.id limit $9",
            org_id, horizon, sub["cursor_xid"], sub["cursor_id"], [type_pattern(t) for t in sub["events"]],
            sub["channels"], sub["destinations"], [glob_pattern(m) for m in sub["message_types"]], batch)
        new_cursor: tuple[Any, Any] | None
        if len(rows) == batch:
            new_cursor = (rows[-1]["xid_text"], rows[-1]["id"])
        else:
            last = await c.fetchrow(
                "select e.xid::text as xid_text, e.id from events e where e.org_id = $1 and e.xid < $2::text::xid8"
                " and (e.xid, e.id) > ($3::text::xid8, $4::bigint) order by e.xid desc, e.id desc limit 1",
                org_id, horizon, sub["cursor_xid"], sub["cursor_id"])
            new_cursor = (last["xid_text"], last["id"]) if last is not None else None
        seq = int(sub["last_seq"])
        if rows:
            await c.executemany(
                "insert into webhook_deliveries (org_id, subscription_id, event_id, event_type, seq)"
                " values ($1, $2, $3, $4, $5)",
                [(org_id, sub_id, r["id"], r["type"], seq + i + 1) for i, r in enumerate(rows)])
        if new_cursor is not None:
            await c.execute("update webhook_subscriptions set cursor_xid = $3::text::xid8, cursor_id = $4,"
                            " last_seq = $5 where org_id = $1 and id = $2",
                            org_id, sub_id, new_cursor[0], new_cursor[1], seq + len(rows))
    return len(rows)


async def pending(db: Db, org_id: str, sub_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The subscription's next pending sends in sequence order, each with its event (None fields when the event
    was pruned) and the subscription's URL, secret and retry policy."""
    async with org_tx(db, org_id, readonly=True) as c:
        rows = await c.fetch(
            "select d.id as delivery_id, d.seq, d.attempts, d.next_at, d.replay_of, d.event_id,"
            " e.type, e.occurred_at, e.subject, e.data, e.id as logged_id,"
            " s.url, s.max_attempts, s.initial_interval_s, s.maximum_interval_s, s.enabled, s.secret_enc,"
            " s.key_id"
            " from webhook_deliveries d join webhook_subscriptions s on s.id = d.subscription_id"
            " left join events e on e.id = d.event_id and e.org_id = d.org_id"
            " where d.org_id = $1 and d.subscription_id = $2 and d.status = 'pending' order by d.seq limit $3",
            org_id, sub_id, limit)
    return [dict(r) for r in rows]


async def head(db: Db, org_id: str, sub_id: str) -> dict[str, Any] | None:
    """The subscription's next pending send, or None."""
    rows = await pending(db, org_id, sub_id, 1)
    return rows[0] if rows else None


async def record_delivered_many(db: Db, org_id: str, delivery_ids: list[int], statuses: list[int]) -> None:
    """Sends the receiver accepted (one statement for a run of them)."""
    async with org_tx(db, org_id) as c:
        await c.execute(
            "update webhook_deliveries d set status = 'delivered', attempts = d.attempts + 1,"
            " response_status = u.status, last_error = null, finished_at = now()"
            " from unnest($2::bigint[], $3::int[]) as u(id, status) where d.org_id = $1 and d.id = u.id",
            org_id, delivery_ids, statuses)


async def record_delivered(db: Db, org_id: str, delivery_id: int, response_status: int) -> None:
    async with org_tx(db, org_id) as c:
        await c.execute("update webhook_deliveries set status = 'delivered', attempts = attempts + 1,"
                        " response_status = $3, last_error = null, finished_at = now()"
                        " where org_id = $1 and id = $2", org_id, delivery_id, response_status)


async def record_failure(db: Db, org_id: str, delivery_id: int, error: str, response_status: int | None,
                         retry_at: datetime | None) -> None:
    """A failed attempt: pending again at `retry_at`, or dead-lettered for this subscription when it is None."""
    async with org_tx(db, org_id) as c:
        await c.execute(
            "update webhook_deliveries set attempts = attempts + 1, last_error = $3, response_status = $4,"
            " status = case when $5::timestamptz is null then 'dead_lettered' else 'pending' end,"
            " next_at = coalesce($5::timestamptz, next_at),"
            " finished_at = case when $5::timestamptz is null then now() end"
            " where org_id = $1 and id = $2", org_id, delivery_id, error[:500], response_status, retry_at)


async def list_deliveries(db: Db, org_id: str, sub_id: str, *, status: str | None = None,
                          before_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    async with org_tx(db, org_id, readonly=True) as c:
        rows = await c.fetch(
            f"select {DELIVERY_COLS} from webhook_deliveries where org_id = $1 and subscription_id = $2"
            " and ($3::text is null or status = $3) and ($4::bigint is null or id < $4)"
            " order by id desc limit $5", org_id, sub_id, status, before_id, limit)
    return [dict(r) for r in rows]


async def counts(db: Db, org_id: str, sub_id: str) -> dict[str, int]:
    async with org_tx(db, org_id, readonly=True) as c:
        rows = await c.fetch("select status, count(*) as n from webhook_deliveries where org_id = $1"
                             " and subscription_id = $2 and (status <> 'dead_lettered' or replayed_at is null)"
                             " group by status", org_id, sub_id)
    return {r["status"]: int(r["n"]) for r in rows}


async def replay(db: Db, org_id: str, sub_id: str, delivery_ids: list[int] | None) -> list[int]:
    """Queue dead-lettered sends of the subscription again (the given ones, or every one not yet replayed), in
    their original order, with new sequence numbers; returns the new delivery ids."""
    async with org_tx(db, org_id) as c:
        last_seq = await c.fetchval("select last_seq from webhook_subscriptions where org_id = $1 and id = $2"
                                    " for update", org_id, sub_id)
        if last_seq is None:
            return []
        dead = await c.fetch(
            "select id, event_id, event_type from webhook_deliveries where org_id = $1 and subscription_id = $2"
            " and status = 'dead_lettered' and replayed_at is null"
            " and ($3::bigint[] is null or id = any($3::bigint[])) order by seq", org_id, sub_id, delivery_ids)
        new_ids: list[int] = []
        for i, d in enumerate(dead):
            new_ids.append(int(await c.fetchval(
                "insert into webhook_deliveries (org_id, subscription_id, event_id, event_type, seq, replay_of)"
                " values ($1, $2, $3, $4, $5, $6) returning id",
                org_id, sub_id, d["event_id"], d["event_type"], last_seq + i + 1, d["id"])))
        if dead:
            await c.execute("update webhook_deliveries set replayed_at = now() where id = any($1::bigint[])",
                            [d["id"] for d in dead])
            await c.execute("update webhook_subscriptions set last_seq = $3 where org_id = $1 and id = $2",
                            org_id, sub_id, last_seq + len(dead))
    return new_ids


async def event_for_test(db: Db, org_id: str) -> dict[str, Any] | None:
    """The org's newest logged event (the test send shows the shape of a real one when there is one)."""
    async with org_tx(db, org_id, readonly=True) as c:
        row = await c.fetchrow(f"select {EVENT_COLS} from events where org_id = $1 order by id desc limit 1",
                               org_id)
    return dict(row) if row is not None else None


_DRAINER_LOCK_CLASS = 0x57EB  # advisory lock namespace of webhook subscriptions: (class, hashtext(subscription id))


async def try_lock_drainer(conn: asyncpg.Connection, sub_id: str) -> bool:
    """Become the subscription's only drainer across processes: a session advisory lock on a dedicated connection,
    held until release_drainer or until the connection ends (PostgreSQL frees it when the process dies)."""
    return bool(await conn.fetchval("select pg_try_advisory_lock($1, hashtext($2))", _DRAINER_LOCK_CLASS, sub_id))


async def release_drainer(conn: asyncpg.Connection, sub_id: str) -> None:
    """Give up draining the subscription (another process may take it)."""
    await conn.execute("select pg_advisory_unlock($1, hashtext($2))", _DRAINER_LOCK_CLASS, sub_id)
