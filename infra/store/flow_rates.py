"""Flow rates per destination for the backlog forecast: deliveries routed to it and delivered by it lately."""

from __future__ import annotations

from datetime import datetime
from typing import Any

# $1 = now, $2 = span in seconds. Routed: deliveries created in the span; delivered: successful attempts in it.
_RATES = """
select destination, sum(arrived)::int as arrived, sum(drained)::int as drained from (
    select destination, count(*) as arrived, 0 as drained from deliveries
    where created_at > $1::timestamptz - make_interval(secs => $2) and replay_count = 0
    group by destination
    union all
    select destination, 0, count(*) from delivery_attempts
    where at > $1::timestamptz - make_interval(secs => $2) and outcome = 'delivered'
    group by destination
) x group by destination
"""


async def destination_rates(conn: Any, now: datetime, span_s: float) -> dict[str, tuple[float, float]]:
    """destination -> (routed per second, delivered per second) over the last span_s seconds."""
    rows = await conn.fetch(_RATES, now, span_s)
    return {r["destination"]: (r["arrived"] / span_s, r["drained"] / span_s) for r in rows}
