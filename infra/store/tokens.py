"""Token revocations: `lifeline token revoke`, logout, and the per-request check (by jti, cached briefly).

Each revocation belongs to the token's org and is read in that org's transaction (row-level security).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db

# (org, jti) -> (revoked?, checked at): a revocation takes effect on every API process within this many seconds.
CACHE_SECONDS = 5.0
_cache: dict[tuple[str, str], tuple[bool, float]] = {}


async def revoke(db: Db, *, jti: str, org_id: str, revoked_by: str, expires_at: int, reason: str = "") -> None:
    """Record a revocation (idempotent); rows are purged once the token would have expired."""
    async with org_tx(db, org_id) as conn:
        await conn.execute(
            "insert into token_revocations (jti, org_id, revoked_by, expires_at, reason) values ($1, $2, $3, $4, $5)"
            " on conflict (jti) do nothing", jti, org_id, revoked_by, datetime.fromtimestamp(expires_at, UTC),
            reason)
        await conn.execute("delete from token_revocations where org_id = $1 and expires_at < now() - interval '1 day'",
                           org_id)
    _cache.pop((org_id, jti), None)


async def is_revoked(db: Db, jti: str, org_id: str, *, cached: bool = False) -> bool:
    """True when the token id was revoked; `cached` answers from a short per-process cache (the request path)."""
    now = time.monotonic()
    key = (org_id, jti)
    if cached:
        hit = _cache.get(key)
        if hit is not None and now - hit[1] < CACHE_SECONDS:
            return hit[0]
    async with org_tx(db, org_id, readonly=True) as conn:
        revoked = bool(await conn.fetchval(
            "select exists (select 1 from token_revocations where jti = $1 and org_id = $2)", jti, org_id))
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[key] = (revoked, now)
    return revoked
