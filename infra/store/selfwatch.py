"""What the `lifeline` engine adapter reads about Lifeline's own processes from the store."""

from __future__ import annotations

from typing import Any

from infra.store import system_tx

# The outbox: accepted messages the dispatcher has not routed yet (partial index messages_outbox).
_OUTBOX = """
select count(*)::int as waiting,
       coalesce(extract(epoch from now() - min(received_at)), 0)::float8 as oldest_s
from messages where dispatched_at is null and status = 'accepted'
"""


async def outbox_waiting(conn: Any) -> tuple[int, float]:
    """(messages waiting for the dispatcher, age in seconds of the oldest)."""
    async with system_tx(conn, "dispatch", readonly=True) as c:  # the outbox spans every org
        row: Any = await c.fetchrow(_OUTBOX)
    return int(row["waiting"]), float(row["oldest_s"])
