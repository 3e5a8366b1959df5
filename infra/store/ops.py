"""Operations reads: signals for alerting and dashboards that no other aggregate owns."""

from __future__ import annotations

from datetime import datetime

import asyncpg

_MONITOR_LAST_RUN = "select max(updated_at) from monitor_baselines where org_id = $1"


async def monitor_last_run(conn: asyncpg.Pool | asyncpg.Connection, org_id: str) -> datetime | None:
    """When the flow monitor last took a snapshot of this org's channels (each run refreshes their baselines)."""
    value: datetime | None = await conn.fetchval(_MONITOR_LAST_RUN, org_id)
    return value
