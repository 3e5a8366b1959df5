"""PostgreSQL store: the accept path (ACK after commit), delivery bookkeeping, dead letters and reads."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from infra.config import Channel
from infra.crypto import Cipher
from interop.intake import prepare_inbound
from interop.message import Limits, Message

log = logging.getLogger("lifeline.store")

OUTBOX_CHANNEL = "lifeline_outbox"
# The default per-message limits (Settings.message_limits() gives the configured ones).
DEFAULT_LIMITS = Limits()
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32; sortable and unique."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass
class AcceptResult:
    message_id: str
    status: str  # accepted | rejected
    ack: str
    ack_code: str
    duplicate: bool = False
    findings: list[dict[str, Any]] = field(default_factory=list)


async def accept(pool: asyncpg.Pool, cipher: Cipher, channel: Channel, raw: bytes | str, *,
                 source: str = "mllp", peer: str | None = None, limits: Limits = DEFAULT_LIMITS) -> AcceptResult:
    """Validate, store and commit one inbound message, then build its ACK (invariants 1-3).

    A malformed message is stored too (status rejected) and answered AR/AE; a resend of an accepted
    message (same sender, control id and content) gets AA again and is not stored twice. Parsing and
    validation run in a worker thread so a large message never stalls the event loop.
    """
    inbound = await asyncio.to_thread(prepare_inbound, raw, channel.validation, limits)
    message_id = new_id()
    if inbound.status == "rejected":
        await _insert(pool, cipher, message_id, channel, inbound.message, inbound.body, inbound.content_hash,
                      "rejected", inbound.findings, inbound.ack_code, source, peer)
        log.info("rejected message %s on channel %s: %s", message_id, channel.name,
                 ",".join(sorted({f["code"] for f in inbound.findings if f["severity"] == "error"})))
        return AcceptResult(message_id, "rejected", inbound.ack, inbound.ack_code, findings=inbound.findings)
    stored_id = await _insert(pool, cipher, message_id, channel, inbound.message, inbound.body,
                              inbound.content_hash, "accepted", inbound.findings, "AA", source, peer)
    return AcceptResult(stored_id, "accepted", inbound.ack, "AA", duplicate=stored_id != message_id,
                        findings=inbound.findings)


_INSERT = """
with ins as (
    insert into messages (id, org_id, channel, status, message_type, message_code, trigger_event, control_id,
                          version, sending_app, sending_facility, content_hash, size_bytes, key_id, body_enc,
                          findings, ack_code, source, peer)
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
    on conflict (org_id, channel, sending_app, sending_facility, control_id, content_hash)
        where status <> 'rejected' do nothing
    returning id, status
)
select id, case when status = 'accepted' then pg_notify($20, '') end from ins
"""


async def _insert(pool: asyncpg.Pool, cipher: Cipher, message_id: str, channel: Channel, message: Message | None,
                  body: str, content_hash: bytes, status: str, findings: list[dict[str, Any]], ack_code: str,
                  source: str, peer: str | None) -> str:
    m = message
    values = (
        message_id, channel.org, channel.name, status,
        m.message_type if m else "", m.message_code if m else "", m.trigger_event if m else "",
        m.control_id if m else "", m.version if m else "",
        m.sending_application if m else "", m.sending_facility if m else "",
        content_hash, len(body.encode()), cipher.key_id,
        cipher.encrypt(body.encode(), aad=message_id.encode()), findings, ack_code, source, peer, OUTBOX_CHANNEL,
    )
    # One statement, autocommit: the row and the dispatcher's wake-up commit together, before the ACK.
    row = await pool.fetchrow(_INSERT, *values)
    if row is not None:
        return str(row["id"])
    existing = await pool.fetchval(
        "select id from messages where org_id = $1 and channel = $2 and sending_app = $3 and sending_facility = $4"
        " and control_id = $5 and content_hash = $6 and status <> 'rejected'",
        channel.org, channel.name, values[9], values[10], values[7], content_hash)
    log.info("resend of message %s on channel %s acknowledged again", existing, channel.name)
    return str(existing)


async def load_body(pool: asyncpg.Pool | asyncpg.Connection, cipher: Cipher, message_id: str) -> str | None:
    """Decrypt a stored message; None when it does not exist."""
    row = await pool.fetchrow("select key_id, body_enc from messages where id = $1", message_id)
    if row is None:
        return None
    return cipher.decrypt(row["body_enc"], row["key_id"], aad=message_id.encode()).decode()


async def audit(conn: asyncpg.Pool | asyncpg.Connection, *, org_id: str, actor: str, action: str,
                subject: str | None = None, role: str | None = None, detail: dict[str, Any] | None = None,
                remote_addr: str | None = None) -> None:
    """Append to the audit log, chaining each row's hash to the previous one of the same org."""
    import json

    detail = detail or {}
    async with _acquire(conn) as c, c.transaction():
        # Serialise appends per org so the chain has no forks.
        await c.execute("select pg_advisory_xact_lock(hashtext('audit:' || $1))", org_id)
        prev = await c.fetchval("select hash from audit_log where org_id = $1 order by id desc limit 1", org_id)
        at = datetime.now(UTC)  # UTC: `lifeline audit verify` recomputes the hash from the stored timestamptz
        canonical = json.dumps([org_id, at.isoformat(), actor, role, action, subject, detail, remote_addr],
                               sort_keys=True, default=str).encode()
        digest = hashlib.sha256((prev or b"") + canonical).digest()
        await c.execute(
            "insert into audit_log (org_id, at, actor, role, action, subject, detail, remote_addr, prev_hash, hash)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            org_id, at, actor, role, action, subject, detail, remote_addr, prev, digest)


class _acquire:  # noqa: N801 - used as a context manager like pool.acquire()
    """Use a given connection as is, or take one from a pool."""

    def __init__(self, conn: asyncpg.Pool | asyncpg.Connection) -> None:
        self.conn = conn
        self._ctx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        if isinstance(self.conn, asyncpg.Pool):
            self._ctx = self.conn.acquire()
            conn: asyncpg.Connection = await self._ctx.__aenter__()
            return conn
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(*exc)


# -- reads for the API (every query is scoped by org) ---------------------------------------------

_MESSAGE_COLS = ("id, channel, received_at, status, message_type, control_id, version, sending_app,"
                 " sending_facility, size_bytes, ack_code, source, findings, dispatched_at, config_version")


async def list_messages(pool: asyncpg.Pool, org_id: str, *, channel: str | None = None,
                        message_type: str | None = None, status: str | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"select {_MESSAGE_COLS} from messages where org_id = $1"
        " and ($2::text is null or channel = $2) and ($3::text is null or message_type like $3)"
        " and ($4::text is null or status = $4) and ($5::timestamptz is null or received_at >= $5)"
        " and ($6::timestamptz is null or received_at < $6)"
        " order by received_at desc, id desc limit $7 offset $8",
        org_id, channel, message_type.replace("*", "%") if message_type else None, status, since, until,
        limit, offset)
    return [dict(r) for r in rows]


async def get_message(pool: asyncpg.Pool, org_id: str, message_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(f"select {_MESSAGE_COLS} from messages where org_id = $1 and id = $2",
                              org_id, message_id)
    if row is None:
        return None
    deliveries = await pool.fetch(
        "select destination, status, lane, attempts, workflow_id, created_at, started_at, first_attempt_at,"
        " finished_at, latency_ms, last_error, peer_answer, replay_count, filter_reason, config_version"
        " from deliveries"
        " where org_id = $1 and message_id = $2 order by destination", org_id, message_id)
    attempts = await pool.fetch(
        "select destination, attempt, at, outcome, error_class, error, peer_answer, duration_ms"
        " from delivery_attempts where org_id = $1 and message_id = $2 order by id", org_id, message_id)
    out = dict(row)
    out["deliveries"] = [
        {**dict(d), "attempt_history": [dict(a) for a in attempts if a["destination"] == d["destination"]]}
        for d in deliveries]
    return out


async def list_dead_letters(pool: asyncpg.Pool, org_id: str, *, destination: str | None = None,
                            status: str | None = "open", since: datetime | None = None,
                            until: datetime | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "select dl.id, dl.message_id, dl.destination, dl.created_at, dl.error_type, dl.reason, dl.attempts,"
        " dl.status, dl.replay_workflow_id, dl.resolved_at, dl.resolved_by, m.channel, m.message_type"
        " from dead_letters dl join messages m on m.id = dl.message_id"
        " where dl.org_id = $1 and ($2::text is null or dl.destination = $2) and ($3::text is null or dl.status = $3)"
        " and ($4::timestamptz is null or dl.created_at >= $4) and ($5::timestamptz is null or dl.created_at < $5)"
        " order by dl.id limit $6 offset $7", org_id, destination, status, since, until, limit, offset)
    return [dict(r) for r in rows]


async def open_dead_letter_ids(pool: asyncpg.Pool, org_id: str, *, ids: list[int] | None = None,
                               destination: str | None = None, since: datetime | None = None,
                               until: datetime | None = None, limit: int = 5000) -> list[int]:
    """Ids of open dead letters: the given ids that are open, else those matching the filter (oldest first)."""
    if ids is not None:
        rows = await pool.fetch("select id from dead_letters where org_id = $1 and status = 'open'"
                                " and id = any($2::bigint[]) order by id", org_id, ids)
    else:
        rows = await pool.fetch(
            "select id from dead_letters where org_id = $1 and status = 'open'"
            " and ($2::text is null or destination = $2) and ($3::timestamptz is null or created_at >= $3)"
            " and ($4::timestamptz is null or created_at < $4) order by id limit $5",
            org_id, destination, since, until, limit)
    return [int(r["id"]) for r in rows]


async def blocked_lanes(pool: asyncpg.Pool, org_id: str, blocking_destinations: list[str]) -> list[dict[str, Any]]:
    """Lanes whose head is dead-lettered under the `block` policy, with how many wait behind it."""
    rows = await pool.fetch(
        "select d.destination, d.lane, d.message_id as head_message_id, d.finished_at as blocked_since,"
        " (select count(*) from deliveries w where w.destination = d.destination and w.lane = d.lane"
        "  and w.seq > d.seq and w.status = 'pending') as waiting"
        " from deliveries d where d.org_id = $1 and d.status = 'dead_lettered' and d.lane is not null"
        " and d.destination = any($2::text[])"
        " and not exists (select 1 from deliveries e where e.destination = d.destination and e.lane = d.lane"
        "  and e.seq < d.seq and e.status = 'dead_lettered')"
        " order by d.finished_at", org_id, blocking_destinations)
    return [dict(r) for r in rows]
