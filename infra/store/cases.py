"""Remediation cases (one row per case run) and the learning loop's resolutions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db

_CASE_COLS = ("case_id, run_id, kind, subject, stage, mode, signature, opened_at, first_evidence_at, onset_at,"
              " resolved_at, mttd_ms, mttr_ms, action, approver, evidence_count, diagnosis, attempts, updated_at")

_UPSERT = """
insert into cases (case_id, run_id, org_id, kind, subject, stage, mode, signature, opened_at,
    first_evidence_at, onset_at, resolved_at, mttd_ms, mttr_ms, action, approver, evidence_count, diagnosis,
    attempts, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, now())
on conflict (case_id, run_id) do update set stage = excluded.stage, signature = excluded.signature,
    first_evidence_at = coalesce(cases.first_evidence_at, excluded.first_evidence_at),
    onset_at = excluded.onset_at, resolved_at = excluded.resolved_at, mttd_ms = excluded.mttd_ms,
    mttr_ms = excluded.mttr_ms, action = excluded.action, approver = excluded.approver,
    evidence_count = excluded.evidence_count, diagnosis = excluded.diagnosis, attempts = excluded.attempts,
    updated_at = now()
"""


async def upsert_case(db: Db, org_id: str, values: tuple[Any, ...]) -> None:
    """values: the columns of _UPSERT $1..$19 ($3 = org_id)."""
    async with org_tx(db, org_id) as c:
        await c.execute(_UPSERT, *values)


async def latest_case(db: Db, org_id: str, case_id: str) -> dict[str, Any] | None:
    """The newest run of a case of the org, or None."""
    async with org_tx(db, org_id) as c:
        row = await c.fetchrow(f"select {_CASE_COLS} from cases where org_id = $1 and case_id = $2"
                               " order by opened_at desc limit 1", org_id, case_id)
    return dict(row) if row is not None else None


async def list_cases(db: Db, org_id: str, *, kind: str | None, stage: str | None, limit: int,
                     offset: int) -> list[dict[str, Any]]:
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            f"select {_CASE_COLS} from cases where org_id = $1 and ($2::text is null or kind = $2)"
            " and ($3::text is null or stage = $3) order by opened_at desc limit $4 offset $5",
            org_id, kind, stage, limit, offset)
    return [dict(r) for r in rows]


async def open_cases(db: Db, org_id: str, closed_stages: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """The dashboard's open cases, newest first (at most 100)."""
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            "select case_id, run_id, kind, subject, stage, mode, signature, action, approver, opened_at,"
            " evidence_count, diagnosis->>'root_cause' as root_cause"
            " from cases where org_id = $1 and stage <> all($2::text[]) order by opened_at desc limit 100",
            org_id, list(closed_stages))
    return [dict(r) for r in rows]


async def resolution_stats(db: Db, org_id: str, signature: str) -> dict[str, tuple[int, int]]:
    """action -> (successes, failures) for a signature."""
    async with org_tx(db, org_id) as c:
        rows = await c.fetch("select action, successes, failures from resolutions"
                             " where org_id = $1 and signature = $2", org_id, signature)
    return {r["action"]: (r["successes"], r["failures"]) for r in rows}


async def record_resolution(db: Db, org_id: str, signature: str, action: str, success: bool) -> None:
    async with org_tx(db, org_id) as c:
        await c.execute(
            "insert into resolutions (org_id, signature, action, successes, failures, last_at)"
            " values ($1, $2, $3, $4, $5, now()) on conflict (org_id, signature, action) do update set"
            " successes = resolutions.successes + excluded.successes,"
            " failures = resolutions.failures + excluded.failures, last_at = now()",
            org_id, signature, action, int(success), int(not success))
