"""The audit log: appends (a keyed chain per org), reads, heads, and chain verification (`lifeline audit verify`).

Each row carries its org's sequence number `seq` (1, 2, ...) and `hash` = HMAC-SHA256(audit key, previous row's hash
of the same org + canonical JSON of the row, seq and key id included); `key_id` names the key. Without the key
nobody, not even a database superuser, can rewrite a row and re-chain the rows after it. Verification recomputes
every MAC in id order and checks each prev_hash link and seq, so an edited row (MAC mismatch), a deleted row (seq gap,
broken link) and moved rows (seq out of order) are found and the first bad row is named. Deleting the tail leaves a
valid shorter chain: the heads the API logs periodically (`audit head: org=... seq=... hash=...`) catch that
(`lifeline audit verify --head ORG:SEQ:HASH`).

Rows written before the keyed chain (key_id null) are verified as the earlier unkeyed SHA-256 chain; they may only
precede an org's keyed rows, and the first keyed row's MAC covers the last of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from infra.store import org_tx, system_tx

if TYPE_CHECKING:
    from infra.store import Db

_COLS = "id, org_id, seq, at, actor, role, action, subject, detail, remote_addr, key_id"


@dataclass(frozen=True)
class AuditKeys:
    """The key new rows are chained with, and every key (by id) rows may have been chained with."""

    current: str
    keys: dict[str, bytes] = field(repr=False)


_keys: AuditKeys | None = None


def use_keys(keys: AuditKeys) -> None:
    """Set this process's audit keys (the API, worker and commands do at start-up, from their Settings)."""
    global _keys
    _keys = keys


def current_keys() -> AuditKeys:
    """The keys set by use_keys, else the process settings' (LIFELINE_AUDIT_KEY or the store key)."""
    if _keys is None:
        from infra.settings import get_settings

        use_keys(get_settings().audit_keys())
    assert _keys is not None
    return _keys


def canonical(org_id: str, at: datetime, actor: str, role: str | None, action: str, subject: str | None,
              detail: dict[str, Any], remote_addr: str | None) -> bytes:
    """The bytes hashed for one unkeyed (pre-0081) row; `at` is rendered in UTC."""
    return json.dumps([org_id, at.isoformat(), actor, role, action, subject, detail, remote_addr],
                      sort_keys=True, default=str).encode()


def keyed_canonical(seq: int, key_id: str, org_id: str, at: datetime, actor: str, role: str | None, action: str,
                    subject: str | None, detail: dict[str, Any], remote_addr: str | None) -> bytes:
    """The bytes a keyed row's MAC covers (after the previous row's hash); `at` in UTC."""
    return json.dumps(["v2", seq, key_id, org_id, at.astimezone(UTC).isoformat(), actor, role, action, subject,
                       detail, remote_addr], sort_keys=True, default=str).encode()


def mac(key: bytes, prev: bytes | None, data: bytes) -> bytes:
    return hmac.new(key, (prev or b"") + data, hashlib.sha256).digest()


def _detail(row: Any) -> Any:
    detail = row["detail"]
    if isinstance(detail, str):  # a connection without the jsonb codec of infra.db returns the JSON text
        detail = json.loads(detail)
    return detail


def row_hash(prev: bytes | None, row: Any, at: datetime) -> bytes:
    """The unkeyed SHA-256 of a pre-0081 row."""
    data = canonical(row["org_id"], at, row["actor"], row["role"], row["action"], row["subject"], _detail(row),
                     row["remote_addr"])
    return hashlib.sha256((prev or b"") + data).digest()


def row_mac(key: bytes, prev: bytes | None, row: Any) -> bytes:
    data = keyed_canonical(row["seq"], row["key_id"], row["org_id"], row["at"], row["actor"], row["role"],
                           row["action"], row["subject"], _detail(row), row["remote_addr"])
    return mac(key, prev, data)


async def append(db: Db, *, org_id: str, actor: str, action: str, subject: str | None = None,
                 role: str | None = None, detail: dict[str, Any] | None = None,
                 remote_addr: str | None = None) -> None:
    """Append to the audit log, chaining the row's MAC to the previous row of the same org."""
    detail = detail or {}
    keys = current_keys()
    key_id = keys.current
    async with org_tx(db, org_id) as c:
        # Serialise appends per org so the chain has no forks (the unique (org_id, seq) index backs this up).
        await c.execute("select pg_advisory_xact_lock(hashtext('audit:' || $1))", org_id)
        head = await c.fetchrow("select seq, hash from audit_log where org_id = $1 order by seq desc limit 1", org_id)
        prev, seq = (head["hash"], head["seq"] + 1) if head else (None, 1)
        at = datetime.now(UTC)
        digest = mac(keys.keys[key_id], prev, keyed_canonical(seq, key_id, org_id, at, actor, role, action, subject,
                                                              detail, remote_addr))
        await c.execute(
            "insert into audit_log (org_id, seq, at, actor, role, action, subject, detail, remote_addr, prev_hash,"
            " hash, key_id) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            org_id, seq, at, actor, role, action, subject, detail, remote_addr, prev, digest, key_id)


@dataclass
class VerifyResult:
    ok: bool
    rows: int
    orgs: int = 0
    broken_id: int | None = None
    org_id: str = ""
    reason: str = ""
    broken_seq: int | None = None
    unkeyed: int = 0  # rows from before the keyed chain (verified unkeyed, sealed by the first keyed row)
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # org -> (seq, hash hex) of the last row

    def line(self) -> str:
        if self.ok:
            line = f"ok: {self.rows} rows" + (f" in {self.orgs} orgs" if self.orgs > 1 else "")
            return line + (f" ({self.unkeyed} unkeyed from before the keyed chain)" if self.unkeyed else "")
        where = f"audit_log row {self.broken_id}" if self.broken_id is not None else f"seq {self.broken_seq}"
        if self.broken_id is not None and self.broken_seq is not None:
            where += f" (seq {self.broken_seq})"
        return f"broken: {where} (org {self.org_id}): {self.reason}"


def parse_head(value: str) -> tuple[str, int, bytes]:
    """'ORG:SEQ:HASH' as logged by the head export (the org may itself contain ':')."""
    org, _, rest = value.rpartition(":")
    org, _, seq = org.rpartition(":")
    try:
        return org, int(seq), bytes.fromhex(rest)
    except ValueError:
        raise ValueError(f"a head looks like ORG:SEQ:HASH (from the 'audit head' log line), not {value!r}") from None


async def verify_chain(db: Db, org_id: str | None = None, *, keys: AuditKeys | None = None,
                       heads: list[tuple[str, int, bytes]] | None = None) -> VerifyResult:
    """Recompute the chain of one org (or every org) in id order; stop at the first bad row. `heads` are exported
    heads (org, seq, hash) the chain must still contain (a deleted tail shows here only)."""
    keys = keys or current_keys()
    expected = {(org, seq): digest for org, seq, digest in heads or []}
    result = VerifyResult(True, 0)
    state: dict[str, Any] = {"org": None}

    def broken(row: Any, reason: str) -> VerifyResult:
        return VerifyResult(False, result.rows, len(result.heads), row["id"], row["org_id"], reason, row["seq"],
                            result.unkeyed, result.heads)

    def end_of_org() -> VerifyResult | None:
        org = state["org"]
        if org is None:
            return None
        last = result.heads.get(org, (0, ""))[0]
        missing = [seq for (o, seq) in expected if o == org and seq > last]
        if missing:
            return VerifyResult(False, result.rows, len(result.heads), None, org,
                                f"the chain ends at seq {last} but seq {min(missing)} was exported: rows at the"
                                " tail were deleted", min(missing), result.unkeyed, result.heads)
        return None

    tx = (org_tx(db, org_id, isolation="repeatable_read", readonly=True) if org_id
          else system_tx(db, "audit_verify", isolation="repeatable_read", readonly=True))
    async with tx as conn:
        cursor = conn.cursor(
            f"select {_COLS}, prev_hash, hash from audit_log where ($1::text is null or org_id = $1)"
            " order by org_id, id", org_id, prefetch=1000)
        async for row in cursor:
            if row["org_id"] != state["org"]:
                bad = end_of_org()
                if bad:
                    return bad
                state.update(org=row["org_id"], prev=None, seq=0, keyed=False)
            if row["seq"] != state["seq"] + 1:
                return broken(row, f"seq {row['seq']} follows seq {state['seq']}: a row was deleted, inserted or"
                                   " moved")
            if row["prev_hash"] != state["prev"]:
                return broken(row, "prev_hash does not link to the previous row: a row before it was deleted or"
                                   " rewritten")
            if row["key_id"] is None:
                if state["keyed"]:
                    return broken(row, "an unkeyed row after keyed rows: rewritten without the audit key")
                if row_hash(state["prev"], row, row["at"].astimezone(UTC)) != row["hash"] and \
                        row_hash(state["prev"], row, row["at"].astimezone()) != row["hash"]:  # written in local time
                    return broken(row, "hash mismatch: the row was edited after it was written")
                result.unkeyed += 1
            else:
                key = keys.keys.get(row["key_id"])
                if key is None:
                    return broken(row, f"chained with audit key {row['key_id']!r}, which this process does not have"
                                       " (LIFELINE_AUDIT_PREVIOUS_KEYS)")
                if not hmac.compare_digest(row_mac(key, state["prev"], row), row["hash"]):
                    return broken(row, "MAC mismatch: the row was edited after it was written (or re-chained"
                                       " without the audit key)")
                state["keyed"] = True
            want = expected.get((row["org_id"], row["seq"]))
            if want is not None and want != row["hash"]:
                return broken(row, "differs from the exported head for this seq: the row was replaced")
            state.update(prev=row["hash"], seq=row["seq"])
            result.rows += 1
            result.heads[row["org_id"]] = (row["seq"], row["hash"].hex())
        bad = end_of_org()
        if bad:
            return bad
    for org, seq, _ in heads or []:
        if org not in result.heads and (org_id is None or org == org_id):
            return VerifyResult(False, result.rows, len(result.heads), None, org,
                                f"no rows at all but seq {seq} was exported: the org's log was deleted", 1,
                                result.unkeyed, result.heads)
    result.orgs = len(result.heads)
    return result


async def heads(db: Db) -> list[tuple[str, int, bytes]]:
    """(org, seq, hash) of the last audit row of every org, for the periodic head export."""
    async with system_tx(db, "audit_verify", readonly=True) as c:
        rows = await c.fetch("select distinct on (org_id) org_id, seq, hash from audit_log order by org_id, seq desc")
    return [(r["org_id"], r["seq"], r["hash"]) for r in rows]


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
