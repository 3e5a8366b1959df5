"""The audit log: appends (hash-chained per org), reads, and chain verification (`lifeline audit verify`).

Each row's hash is sha256(previous row's hash of the same org + canonical JSON of the row), written by
append(). Verification recomputes every hash in id order and checks each prev_hash link, so an
edited row (hash mismatch) and a deleted row (the next row's prev_hash no longer links) are both found.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from infra.store import org_tx, system_tx

if TYPE_CHECKING:
    from infra.store import Db

_COLS = "id, org_id, at, actor, role, action, subject, detail, remote_addr"


def canonical(org_id: str, at: datetime, actor: str, role: str | None, action: str, subject: str | None,
              detail: dict[str, Any], remote_addr: str | None) -> bytes:
    """The bytes hashed for one row; `at` is rendered in UTC (store.audit writes UTC timestamps)."""
    return json.dumps([org_id, at.isoformat(), actor, role, action, subject, detail, remote_addr],
                      sort_keys=True, default=str).encode()


def row_hash(prev: bytes | None, row: Any, at: datetime) -> bytes:
    detail = row["detail"]
    if isinstance(detail, str):  # a connection without the jsonb codec of infra.db returns the JSON text
        detail = json.loads(detail)
    data = canonical(row["org_id"], at, row["actor"], row["role"], row["action"], row["subject"], detail,
                     row["remote_addr"])
    return hashlib.sha256((prev or b"") + data).digest()


async def append(db: Db, *, org_id: str, actor: str, action: str, subject: str | None = None,
                 role: str | None = None, detail: dict[str, Any] | None = None,
                 remote_addr: str | None = None) -> None:
    """Append to the audit log, chaining each row's hash to the previous one of the same org."""
    detail = detail or {}
    async with org_tx(db, org_id) as c:
        # Serialise appends per org so the chain has no forks.
        await c.execute("select pg_advisory_xact_lock(hashtext('audit:' || $1))", org_id)
        prev = await c.fetchval("select hash from audit_log where org_id = $1 order by id desc limit 1", org_id)
        at = datetime.now(UTC)  # UTC: `lifeline audit verify` recomputes the hash from the stored timestamptz
        digest = hashlib.sha256((prev or b"") + canonical(org_id, at, actor, role, action, subject, detail,
                                                          remote_addr)).digest()
        await c.execute(
            "insert into audit_log (org_id, at, actor, role, action, subject, detail, remote_addr, prev_hash, hash)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            org_id, at, actor, role, action, subject, detail, remote_addr, prev, digest)


@dataclass
class VerifyResult:
    ok: bool
    rows: int
    orgs: int = 0
    broken_id: int | None = None
    org_id: str = ""
    reason: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok: {self.rows} rows" + (f" in {self.orgs} orgs" if self.orgs > 1 else "")
        return f"broken: audit_log row {self.broken_id} (org {self.org_id}): {self.reason}"


async def verify_chain(conn: asyncpg.Connection, org_id: str | None = None) -> VerifyResult:
    """Recompute the chain of one org (or every org) in id order; stop at the first broken row."""
    rows = 0
    orgs: set[str] = set()
    prev: bytes | None = None
    current_org: str | None = None
    async with system_tx(conn, "audit_verify", isolation="repeatable_read", readonly=True):
        cursor = conn.cursor(
            f"select {_COLS}, prev_hash, hash from audit_log where ($1::text is null or org_id = $1)"
            " order by org_id, id", org_id, prefetch=1000)
        async for row in cursor:
            if row["org_id"] != current_org:
                current_org, prev = row["org_id"], None
                orgs.add(current_org)
            if row["prev_hash"] != prev:
                return VerifyResult(False, rows, len(orgs), row["id"], row["org_id"],
                                    "prev_hash does not link to the previous row: a row before it was deleted"
                                    " or rewritten")
            at_utc = row["at"].astimezone(UTC)
            if row_hash(prev, row, at_utc) != row["hash"] and \
                    row_hash(prev, row, row["at"].astimezone()) != row["hash"]:  # rows written in local time
                return VerifyResult(False, rows, len(orgs), row["id"], row["org_id"],
                                    "hash mismatch: the row was edited after it was written")
            prev = row["hash"]
            rows += 1
    return VerifyResult(True, rows, len(orgs))


async def list_audit(db: Db, org_id: str, *, actor: str | None = None, action: str | None = None,
                     since: datetime | None = None, until: datetime | None = None, limit: int = 100,
                     offset: int = 0) -> list[dict[str, Any]]:
    """Audit rows of an org, newest first; `action` may end with * (prefix match)."""
    pattern = None
    if action is not None:
        escaped = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = escaped[:-1] + "%" if escaped.endswith("*") else escaped
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            f"select {_COLS}, encode(prev_hash, 'hex') as prev_hash, encode(hash, 'hex') as hash from audit_log"
            " where org_id = $1 and ($2::text is null or actor = $2) and ($3::text is null or action like $3)"
            " and ($4::timestamptz is null or at >= $4) and ($5::timestamptz is null or at < $5)"
            " order by id desc limit $6 offset $7", org_id, actor, pattern, since, until, limit, offset)
    return [dict(r) for r in rows]


async def export_audit(db: Db, org_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Every audit row of an org in [start, end), oldest first, with hashes (hex) for offline verification."""
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            f"select {_COLS}, encode(prev_hash, 'hex') as prev_hash, encode(hash, 'hex') as hash from audit_log"
            " where org_id = $1 and at >= $2 and at < $3 order by id", org_id, start, end)
    return [dict(r) for r in rows]
