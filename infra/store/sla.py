"""SLA violations: one open row per (org, sla, objective), opened, updated and closed by the evaluator."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from infra.store import org_tx

if TYPE_CHECKING:
    import asyncpg

    from infra.store import Db

_UPSERT = """
insert into sla_violations (org_id, sla, objective, subject, target, started_at, worst_value, last_value, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, $7, $6)
on conflict (org_id, sla, objective) where ended_at is null do update set
    worst_value = case when $8 then least(sla_violations.worst_value, excluded.worst_value)
                       else greatest(sla_violations.worst_value, excluded.worst_value) end,
    last_value = excluded.last_value, target = excluded.target, updated_at = excluded.updated_at
returning id, (xmax = 0) as inserted
"""

_CLOSE = """
update sla_violations set ended_at = $4, updated_at = $4
where org_id = $1 and sla = $2 and objective = $3 and ended_at is null
returning id, notified_at, escalated_at
"""


async def violation_rows(db: Db, org_id: str, start: datetime, end: datetime,
                         sla: str | None = None) -> list[asyncpg.Record]:
    """Violations of an org (or one SLA of it) overlapping [start, end), oldest first."""
    async with org_tx(db, org_id) as c:
        return list(await c.fetch(
            "select id, sla, objective, subject, target, started_at, ended_at, worst_value, last_value, case_id,"
            " notified_at, escalated_at from sla_violations where org_id = $1 and ($4::text is null or sla = $4)"
            " and started_at < $3 and (ended_at is null or ended_at > $2) order by started_at, id",
            org_id, start, end, sla))


async def open_violations(db: Db, org_id: str, sla: str | None = None) -> list[asyncpg.Record]:
    async with org_tx(db, org_id) as c:
        return list(await c.fetch(
            "select id, sla, objective, target, started_at, worst_value, last_value, case_id, notified_at,"
            " escalated_at from sla_violations where org_id = $1 and ($2::text is null or sla = $2)"
            " and ended_at is null", org_id, sla))


async def upsert_violation(db: Db, org_id: str, sla: str, objective: str, subject: str, target: float,
                           now: datetime, value: Any, lower_is_worse: bool) -> Any:
    """Open the violation (or update the open one); returns (id, inserted)."""
    async with org_tx(db, org_id) as c:
        return await c.fetchrow(_UPSERT, org_id, sla, objective, subject, target, now, value, lower_is_worse)


async def close_violation(db: Db, org_id: str, sla: str, objective: str, now: datetime) -> Any:
    """Close the open violation, if any; returns (id, notified_at, escalated_at) or None."""
    async with org_tx(db, org_id) as c:
        return await c.fetchrow(_CLOSE, org_id, sla, objective, now)


async def set_case(db: Db, org_id: str, violation_id: int, case_id: str) -> None:
    async with org_tx(db, org_id) as c:
        await c.execute("update sla_violations set case_id = $2 where id = $1 and org_id = $3", violation_id,
                        case_id, org_id)


async def set_notified(db: Db, org_id: str, violation_id: int, at: datetime) -> None:
    async with org_tx(db, org_id) as c:
        await c.execute("update sla_violations set notified_at = $2 where id = $1 and org_id = $3", violation_id,
                        at, org_id)


async def set_escalated(db: Db, org_id: str, violation_id: int, at: datetime) -> bool:
    """Mark escalated once; False when another evaluation did it first."""
    async with org_tx(db, org_id) as c:
        return await c.fetchval("update sla_violations set escalated_at = $2 where id = $1 and org_id = $3"
                                " and escalated_at is null returning id", violation_id, at, org_id) is not None
