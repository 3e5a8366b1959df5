"""Rate-limit token buckets in PostgreSQL: one row per org, scope and principal, shared by every API process.

A take is one upsert under the row's lock: refill by the time since the last take (capped at the burst), then take
one token if there is one. Concurrent takes on one bucket from any number of processes serialise on the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db

# Tokens available now: what was left plus the refill since the last take, never more than the burst ($5).
_AVAILABLE = "least($5, b.tokens + greatest(0, extract(epoch from clock_timestamp() - b.updated_at)) * $6)"
_TAKE = f"""
insert into rate_buckets as b (org_id, scope, subject, role, tokens, updated_at, allowed, refused)
values ($1, $2, $3, $4, $5 - 1, clock_timestamp(), true, 0)
on conflict (org_id, scope, subject) do update set
    allowed = {_AVAILABLE} >= 1,
    tokens = {_AVAILABLE} - case when {_AVAILABLE} >= 1 then 1 else 0 end,
    refused = b.refused + case when {_AVAILABLE} >= 1 then 0 else 1 end,
    role = excluded.role,
    updated_at = clock_timestamp()
returning allowed, tokens
"""


@dataclass(frozen=True)
class Take:
    allowed: bool
    tokens: float  # left after the take (allowed) or available now (refused)


async def take(db: Db, org_id: str, scope: str, subject: str, role: str, *, rate: float, burst: float) -> Take:
    """Take one token from the (org, scope, subject) bucket of `burst` tokens refilled at `rate` per second."""
    async with org_tx(db, org_id) as c:
        # A bucket lost in a crash only refills early: no need to wait for the WAL flush on every request.
        await c.execute("set local synchronous_commit = off")
        row = await c.fetchrow(_TAKE, org_id, scope, subject, role, float(burst), float(rate))
    assert row is not None
    return Take(bool(row["allowed"]), float(row["tokens"]))


async def refusals(db: Db, org_id: str) -> list[tuple[str, str, int]]:
    """(scope, role, refusals) of an org's buckets, for lifeline_rate_limit_refusals_total."""
    async with org_tx(db, org_id, readonly=True) as c:
        rows = await c.fetch("select scope, role, sum(refused)::bigint as n from rate_buckets where org_id = $1"
                             " group by scope, role having sum(refused) > 0 order by scope, role", org_id)
    return [(r["scope"], r["role"], int(r["n"])) for r in rows]
