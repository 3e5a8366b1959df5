"""The periodic export of each org's audit chain head to the log, so deleting the tail of the chain is detectable.

A database superuser can delete the newest audit rows and leave a valid, shorter chain. The heads logged here
(`audit head: org=<org> seq=<n> hash=<hex>`) live outside the database; `lifeline audit verify --head
<org>:<seq>:<hash>` checks the chain still holds each one, and this process itself logs an error when a head it
exported goes back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncpg

from infra.store import audit

if TYPE_CHECKING:
    from infra.store import Db

log = logging.getLogger("lifeline.audit")


async def export_heads(db: Db, seen: dict[str, tuple[int, bytes]]) -> int:
    """Log every org's head that moved since `seen` (updated in place); an error for one that went back.
    Returns how many heads were logged."""
    logged = 0
    current = {org: (seq, digest) for org, seq, digest in await audit.heads(db)}
    for org, (seq, digest) in sorted(current.items()):
        last = seen.get(org)
        if last == (seq, digest):
            continue
        if last is not None and (seq < last[0] or (seq == last[0] and digest != last[1])):
            log.error("audit chain of org %s went back: seq %d hash=%s was exported, the head is now seq %d: rows "
                      "were deleted or rewritten", org, last[0], last[1].hex(), seq)
        log.info("audit head: org=%s seq=%d hash=%s", org, seq, digest.hex())
        seen[org] = (seq, digest)
        logged += 1
    for org in sorted(set(seen) - set(current)):
        log.error("audit chain of org %s went back: seq %d hash=%s was exported, the org has no audit rows now",
                  org, *seen[org][:1], seen[org][1].hex())
        del seen[org]
    return logged


async def run(db: Db, interval: float, stop: asyncio.Event) -> None:
    """Export the heads every `interval` seconds until `stop` is set; store outages are logged and retried."""
    seen: dict[str, tuple[int, bytes]] = {}
    while not stop.is_set():
        try:
            await export_heads(db, seen)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("audit head export skipped: the store is unavailable (%s)", type(exc).__name__)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
