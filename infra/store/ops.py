"""Operations reads: signals for alerting and dashboards that no other aggregate owns."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from infra.store import org_tx

_MONITOR_LAST_RUN = "select max(updated_at) from monitor_baselines where org_id = $1"


async def monitor_last_run(conn: asyncpg.Pool | asyncpg.Connection, org_id: str) -> datetime | None:
    """When the flow monitor last took a snapshot of this org's channels (each run refreshes their baselines)."""
    async with org_tx(conn, org_id) as c:
        value: datetime | None = await c.fetchval(_MONITOR_LAST_RUN, org_id)
    return value


_SERIES_DELIVERED = """
select m.channel, d.destination, date_bin($4::interval, d.finished_at, $2::timestamptz) as b,
       count(*)::bigint as delivered,
       percentile_cont(0.5) within group (order by d.latency_ms)::float8 as p50_ms,
       percentile_cont(0.95) within group (order by d.latency_ms)::float8 as p95_ms
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.status = 'delivered' and d.finished_at >= $2 and d.finished_at < $3
group by 1, 2, 3
"""
# Backlog at the end of each bucket: deliveries created by then and not finished by then.
_SERIES_BACKLOG = """
select m.channel, d.destination, g.t - $4::interval as b, count(*)::bigint as depth
from generate_series($2::timestamptz + $4::interval, $3::timestamptz, $4::interval) as g(t)
join deliveries d on d.created_at <= g.t and (d.finished_at is null or d.finished_at > g.t)
join messages m on m.id = d.message_id
where d.org_id = $1 and d.created_at < $3 and (d.finished_at is null or d.finished_at > $2)
group by 1, 2, 3
"""
_SERIES_ROUTES = """
select distinct m.channel, d.destination from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and (d.finished_at is null or d.finished_at >= $2) and d.created_at < $3
"""


async def flow_series(conn: asyncpg.Pool | asyncpg.Connection, org_id: str, start: datetime, end: datetime,
                      bucket: timedelta) -> dict[tuple[str, str], dict[datetime, dict[str, float | None]]]:
    """Per (channel, destination) and bucket start: delivered count, p50/p95 accept-to-delivered ms, backlog."""
    out: dict[tuple[str, str], dict[datetime, dict[str, float | None]]] = {}
    async with org_tx(conn, org_id, readonly=True) as c:
        routes = await c.fetch(_SERIES_ROUTES, org_id, start, end)
        delivered = await c.fetch(_SERIES_DELIVERED, org_id, start, end, bucket)
        backlog = await c.fetch(_SERIES_BACKLOG, org_id, start, end, bucket)
    for r in routes:
        out.setdefault((r["channel"], r["destination"]), {})
    for r in delivered:
        out.setdefault((r["channel"], r["destination"]), {}).setdefault(r["b"], {}).update(
            delivered=float(r["delivered"]), p50_ms=r["p50_ms"], p95_ms=r["p95_ms"])
    for r in backlog:
        out.setdefault((r["channel"], r["destination"]), {}).setdefault(r["b"], {})["backlog"] = float(r["depth"])
    return out
