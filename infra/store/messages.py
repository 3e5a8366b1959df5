"""Messages: the accept path's insert (ACK after commit), resend detection, bodies and the API's reads."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db

# The dispatcher LISTENs here; accept, delivery outcomes and resumes NOTIFY it.
OUTBOX_CHANNEL = "lifeline_outbox"

_INSERT = """
with ins as (
    insert into messages (id, org_id, channel, status, message_type, message_code, trigger_event, control_id,
                          version, sending_app, sending_facility, content_hash, size_bytes, key_id, body_enc,
                          findings, ack_code, source, peer, trace_context)
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $21)
    on conflict (org_id, channel, sending_app, sending_facility, control_id, content_hash)
        where status <> 'rejected' do nothing
    returning id, status
)
select id, case when status = 'accepted' then pg_notify($20, '') end from ins
"""


async def insert_message(db: Db, org: str, values: tuple[Any, ...], trace_context: str | None = None) -> str | None:
    """Insert one message (columns of _INSERT $1..$19, $2 = org); None when it is a resend of a stored one.

    The row and the dispatcher's wake-up commit together, before the ACK is sent.
    """
    async with org_tx(db, org) as c:
        row = await c.fetchrow(_INSERT, *values, OUTBOX_CHANNEL, trace_context)
    return None if row is None else str(row["id"])


async def find_resend(db: Db, org: str, channel: str, sending_app: str, sending_facility: str, control_id: str,
                      content_hash: bytes) -> str | None:
    async with org_tx(db, org) as c:
        value = await c.fetchval(
            "select id from messages where org_id = $1 and channel = $2 and sending_app = $3"
            " and sending_facility = $4 and control_id = $5 and content_hash = $6 and status <> 'rejected'",
            org, channel, sending_app, sending_facility, control_id, content_hash)
    return None if value is None else str(value)


async def load_body_row(db: Db, org: str, message_id: str) -> Any:
    """(key_id, body_enc) of a message, or None."""
    async with org_tx(db, org) as c:
        return await c.fetchrow("select key_id, body_enc from messages where org_id = $1 and id = $2",
                                org, message_id)


_MESSAGE_COLS = ("id, channel, received_at, status, message_type, control_id, version, sending_app,"
                 " sending_facility, size_bytes, ack_code, source, findings, dispatched_at, config_version")


async def list_messages(db: Db, org_id: str, *, channel: str | None = None,
                        message_type: str | None = None, status: str | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            f"select {_MESSAGE_COLS} from messages where org_id = $1"
            " and ($2::text is null or channel = $2) and ($3::text is null or message_type like $3)"
            " and ($4::text is null or status = $4) and ($5::timestamptz is null or received_at >= $5)"
            " and ($6::timestamptz is null or received_at < $6)"
            " order by received_at desc, id desc limit $7 offset $8",
            org_id, channel, message_type.replace("*", "%") if message_type else None, status, since, until,
            limit, offset)
    return [dict(r) for r in rows]


async def get_message(db: Db, org_id: str, message_id: str) -> dict[str, Any] | None:
    async with org_tx(db, org_id, readonly=True) as c:
        row = await c.fetchrow(f"select {_MESSAGE_COLS} from messages where org_id = $1 and id = $2",
                               org_id, message_id)
        if row is None:
            return None
        deliveries = await c.fetch(
            "select destination, status, lane, attempts, workflow_id, created_at, started_at, first_attempt_at,"
            " finished_at, latency_ms, last_error, peer_answer, replay_count, filter_reason, config_version"
            " from deliveries"
            " where org_id = $1 and message_id = $2 order by destination", org_id, message_id)
        attempts = await c.fetch(
            "select destination, attempt, at, outcome, error_class, error, peer_answer, duration_ms"
            " from delivery_attempts where org_id = $1 and message_id = $2 order by id", org_id, message_id)
    out = dict(row)
    out["deliveries"] = [
        {**dict(d), "attempt_history": [dict(a) for a in attempts if a["destination"] == d["destination"]]}
        for d in deliveries]
    return out


async def channel_counts_since(db: Db, org_id: str, channel: str, since: datetime) -> Any:
    """accepted / rejected messages of a channel since a time (remediation verification)."""
    async with org_tx(db, org_id) as c:
        return await c.fetchrow(
            "select count(*) filter (where status <> 'rejected') as accepted,"
            " count(*) filter (where status = 'rejected') as rejected from messages"
            " where org_id = $1 and channel = $2 and received_at >= $3", org_id, channel, since)
