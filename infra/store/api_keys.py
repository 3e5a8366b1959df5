"""API keys of EHR senders: only a hash of each key is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.store import org_tx, system_tx

if TYPE_CHECKING:
    import asyncpg

    from infra.store import Db


async def lookup(db: Db, key_hash: bytes) -> Any:
    """(name, org_id, role) of an active key; the org is what the key tells, so this reads across orgs."""
    async with system_tx(db, "api_key_lookup", readonly=True) as c:
        return await c.fetchrow("select name, org_id, role from api_keys where key_hash = $1 and revoked_at is null",
                                key_hash)


async def create(db: Db, org_id: str, name: str, key_hash: bytes, role: str) -> None:
    async with org_tx(db, org_id) as c:
        await c.execute("insert into api_keys (org_id, name, key_hash, role) values ($1, $2, $3, $4)",
                        org_id, name, key_hash, role)


async def revoke(db: Db, org_id: str, name: str) -> bool:
    """False when the org has no active key of that name."""
    async with org_tx(db, org_id) as c:
        done = await c.execute("update api_keys set revoked_at = now() where org_id = $1 and name = $2"
                               " and revoked_at is null", org_id, name)
    return not done.endswith(" 0")


async def list_keys(db: Db, org_id: str) -> list[asyncpg.Record]:
    async with org_tx(db, org_id) as c:
        return list(await c.fetch("select name, role, created_at, revoked_at from api_keys where org_id = $1"
                                  " order by id", org_id))
