"""Circuit breaker state per destination (written on transitions by workers, read by the API and dashboard)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from infra.store import org_tx

_SAVE = """
insert into destination_breakers (org_id, destination, state, failures, opened_at, next_probe_at, probe_interval_s,
                                  last_error, worker, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
on conflict (org_id, destination) do update set state = excluded.state, failures = excluded.failures,
    opened_at = excluded.opened_at, next_probe_at = excluded.next_probe_at,
    probe_interval_s = excluded.probe_interval_s, last_error = excluded.last_error, worker = excluded.worker,
    updated_at = now()
"""

_LIST = """
select destination, state, failures, opened_at, next_probe_at, probe_interval_s, last_error, worker, updated_at
from destination_breakers where org_id = $1 order by destination
"""


async def save_breaker(conn: Any, org_id: str, destination: str, state: str, failures: int,
                       opened_at: datetime | None, next_probe_at: datetime | None, probe_interval_s: float | None,
                       last_error: str | None, worker: str) -> None:
    async with org_tx(conn, org_id) as c:
        await c.execute(_SAVE, org_id, destination, state, failures, opened_at, next_probe_at, probe_interval_s,
                       last_error, worker)


async def list_breakers(conn: Any, org_id: str) -> list[dict[str, Any]]:
    async with org_tx(conn, org_id) as c:
        return [dict(r) for r in await c.fetch(_LIST, org_id)]
