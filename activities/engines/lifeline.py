"""Lifeline itself as an engine: its destinations are the channels, read from the store.

queued = deliveries pending or started, errors = open dead letters. A destination is `paused` when the
`destination_state` table says so (the dispatcher starts no new delivery to it), `error` (raw `blocked`) when an
open dead letter blocks a `block` destination, else `started`. received/sent stay 0: counting all deliveries on
every poll would scan the whole table, and the flow monitor reads Lifeline's own numbers from the store directly.
pause/resume write `destination_state`; start/stop/halt/clear_queue are not offered (a destination has no
process to start, and discarding messages is a separate, approved action).
"""

from __future__ import annotations

import asyncpg

from activities.engines.base import EngineChannel, EngineNotFound, EngineNotSupported, State
from infra.config import Destination, LifelineConfig

ACTOR = "engine-adapter"


class LifelineAdapter:
    kind = "lifeline"
    capabilities = frozenset({"pause", "resume"})

    def __init__(self, pool: asyncpg.Pool, config: LifelineConfig, org: str | None = None,
                 channels: list[str] | None = None) -> None:
        self.pool = pool
        self.config = config
        self.org = org
        self.only = set(channels or [])

    def _destinations(self) -> list[Destination]:
        return [d for d in self.config.destinations
                if (self.org is None or d.org == self.org) and (not self.only or d.name in self.only)]

    def _destination(self, name: str) -> Destination:
        for d in self._destinations():
            if d.name == name:
                return d
        raise EngineNotFound(f"lifeline: no destination {name!r}")

    async def _read(self, dests: list[Destination]) -> list[EngineChannel]:
        names = [d.name for d in dests]
        orgs = sorted({d.org for d in dests})
        async with self.pool.acquire() as conn:
            queued = await conn.fetch(
                "select destination, count(*) filter (where status = 'pending') as pending,"
                " count(*) filter (where status = 'started') as started"
                " from deliveries where status in ('pending', 'started') and org_id = any($1::text[])"
                " and destination = any($2::text[]) group by destination", orgs, names)
            dead = await conn.fetch(
                "select destination, count(*) as n from dead_letters where status = 'open'"
                " and org_id = any($1::text[]) and destination = any($2::text[]) group by destination", orgs, names)
            try:
                paused_rows = await conn.fetch(
                    "select destination, reason from destination_state where paused"
                    " and org_id = any($1::text[]) and destination = any($2::text[])", orgs, names)
            except asyncpg.UndefinedTableError:
                paused_rows = []
        q = {r["destination"]: (r["pending"], r["started"]) for r in queued}
        errors = {r["destination"]: r["n"] for r in dead}
        paused = {r["destination"]: r["reason"] or "" for r in paused_rows}
        out = []
        for d in dests:
            pending, started = q.get(d.name, (0, 0))
            open_dead = errors.get(d.name, 0)
            detail = {"kind": d.kind, "pending": str(pending), "started": str(started),
                      "on_dead_letter": d.on_dead_letter}
            state: State
            if d.name in paused:
                state, raw = "paused", "paused"
                detail["paused_reason"] = paused[d.name]
            elif open_dead and d.on_dead_letter == "block":
                state, raw = "error", "blocked"
            else:
                state, raw = "started", "running"
            out.append(EngineChannel(id=d.name, name=d.name, state=state, raw_state=raw,
                                     queued=pending + started, errors=open_dead, detail=detail))
        return out

    async def list_channels(self) -> list[EngineChannel]:
        return await self._read(self._destinations())

    async def channel_status(self, channel_id: str) -> EngineChannel:
        return (await self._read([self._destination(channel_id)]))[0]

    async def _set_paused(self, channel_id: str, paused: bool) -> None:
        d = self._destination(channel_id)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "insert into destination_state (org_id, destination, paused, reason, changed_by)"
                    " values ($1, $2, $3, $4, $5) on conflict (org_id, destination) do update"
                    " set paused = excluded.paused, reason = excluded.reason, changed_by = excluded.changed_by,"
                    " changed_at = now()",
                    d.org, d.name, paused, "paused through the engine adapter" if paused else None, ACTOR)
        except asyncpg.UndefinedTableError as exc:
            raise EngineNotSupported("this database has no destination_state table (migration missing)") from exc

    async def pause(self, channel_id: str) -> None:
        await self._set_paused(channel_id, True)

    async def resume(self, channel_id: str) -> None:
        await self._set_paused(channel_id, False)

    async def start(self, channel_id: str) -> None:
        raise EngineNotSupported("a Lifeline destination has nothing to start: resume it if paused")

    async def stop(self, channel_id: str) -> None:
        raise EngineNotSupported("a Lifeline destination has nothing to stop: pause it instead")

    async def halt(self, channel_id: str) -> None:
        raise EngineNotSupported("a Lifeline destination cannot be halted: pause it instead")

    async def clear_queue(self, channel_id: str) -> int:
        raise EngineNotSupported("Lifeline never clears a destination's queue through the adapter; dead letters are "
                                 "discarded one by one with approval")

    async def close(self) -> None:
        return None
