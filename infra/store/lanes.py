"""Ordered lanes: claim the next delivery of one lane the moment its predecessor is done (the fast-path hand-off)."""

from __future__ import annotations

from typing import Any

import asyncpg

from infra.store.messages import OUTBOX_CHANNEL

Conn = Any  # an asyncpg Connection or a pool's connection proxy

# The next pending delivery of one lane, if nothing before it is pending, in flight or (for destinations whose
# dead letters block) dead-lettered; the same rule as the dispatcher's start query, for a single lane.
_NEXT_IN_LANE = """
select d.message_id, d.destination, d.org_id, d.workflow_id, m.channel, m.message_type, m.trace_context
from deliveries d join messages m on m.id = d.message_id
where d.destination = $1 and d.lane = $2 and d.org_id = $3 and d.status = 'pending' and d.replay_count = 0
  and not exists (select 1 from destination_state p where p.org_id = d.org_id
                  and p.destination = d.destination and p.paused)
  and not exists (
      select 1 from deliveries e
      where e.destination = d.destination and e.lane = d.lane and e.seq < d.seq
        and (e.status in ('pending', 'started') or (e.status = 'dead_lettered' and $4)))
order by d.seq limit 1 for update of d skip locked
"""


async def claim_next_in_lane(conn: Conn, org_id: str, destination: str, lane: str,
                             dead_letters_block: bool) -> asyncpg.Record | None:
    """Lock and return the lane's next delivery that may start now (call inside a transaction), else None."""
    row: asyncpg.Record | None = await conn.fetchrow(_NEXT_IN_LANE, destination, lane, org_id, dead_letters_block)
    return row


async def wake_dispatcher(db: Any) -> None:
    """NOTIFY the dispatchers (a hand-off that could not be done here)."""
    await db.execute("select pg_notify($1, '')", OUTBOX_CHANNEL)
