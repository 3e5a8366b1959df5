"""The send lease of a delivery: at most one attempt of a (message, destination) sends at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db

_ACQUIRE = """
update deliveries set send_lease_until = now() + make_interval(secs => $4)
where org_id = $1 and message_id = $2 and destination = $3
  and (send_lease_until is null or send_lease_until < now())
returning 1
"""


async def acquire_send_lease(db: Db, org: str, message_id: str, destination: str, seconds: float) -> bool:
    """Take the lease for `seconds` (the attempt's budget); False while another attempt holds it."""
    async with org_tx(db, org) as c:
        return await c.fetchval(_ACQUIRE, org, message_id, destination, seconds) is not None


async def release_send_lease(db: Db, org: str, message_id: str, destination: str) -> None:
    async with org_tx(db, org) as c:
        await c.execute("update deliveries set send_lease_until = null"
                        " where org_id = $1 and message_id = $2 and destination = $3", org, message_id, destination)
