"""Token revocations: `lifeline token revoke`, logout, and the per-request check (by jti, cached briefly)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg

# jti -> (revoked?, checked at): a revocation takes effect on every API process within this many seconds.
CACHE_SECONDS = 5.0
_cache: dict[str, tuple[bool, float]] = {}


async def revoke(conn: asyncpg.Pool | asyncpg.Connection, *, jti: str, org_id: str, revoked_by: str,
                 expires_at: int, reason: str = "") -> None:
    """Record a revocation (idempotent); rows are purged once the token would have expired."""
    await conn.execute(
        "insert into token_revocations (jti, org_id, revoked_by, expires_at, reason) values ($1, $2, $3, $4, $5)"
        " on conflict (jti) do nothing", jti, org_id, revoked_by, datetime.fromtimestamp(expires_at, UTC), reason)
    await conn.execute("delete from token_revocations where expires_at < now() - interval '1 day'")
    _cache.pop(jti, None)


async def is_revoked(conn: asyncpg.Pool | asyncpg.Connection, jti: str, *, cached: bool = False) -> bool:
    """True when the token id was revoked; `cached` answers from a short per-process cache (the request path)."""
    now = time.monotonic()
    if cached:
        hit = _cache.get(jti)
        if hit is not None and now - hit[1] < CACHE_SECONDS:
            return hit[0]
    revoked = bool(await conn.fetchval("select exists (select 1 from token_revocations where jti = $1)", jti))
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[jti] = (revoked, now)
    return revoked
