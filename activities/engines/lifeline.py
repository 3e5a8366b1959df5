"""Lifeline itself as an engine: its destinations are the channels, read from the store.

queued = deliveries pending or started, errors = open dead letters. A destination is `paused` when the
`destination_state` table says so (the dispatcher starts no new delivery to it), `error` (raw `blocked`) when an
open dead letter blocks a `block` destination, else `started`. received/sent stay 0: counting all deliveries on
every poll would scan the whole table, and the flow monitor reads Lifeline's own numbers from the store directly.
pause/resume write `destination_state`; start/stop/halt/clear_queue are not offered (a destination has no
process to start, and discarding messages is a separate, approved action).

Lifeline's own processes are channels too (`processes=True`, as build_adapter makes it): `process:listener`,
`process:dispatcher`, `process:worker`, `process:api`. Their state comes from the supervisor's status file under
`lifeline up` (running → started; restarting or crash-loop → error, with the last log lines; errors = restarts),
and the dispatcher's also from the store: accepted messages left unrouted for longer than STALL_S → error
`stalled`, whoever supervises it. Without a supervisor the others are `unknown`. So a crash loop or a stalled
dispatcher opens a remediation case like any other engine's channel (the supervisor, not the adapter, restarts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg

from activities.engines.base import EngineChannel, EngineNotFound, EngineNotSupported, State
from infra.config import Destination, LifelineConfig
from infra.store import deliveries
from infra.store.selfwatch import outbox_waiting
from infra.supervision import read_status

ACTOR = "engine-adapter"
PROCESSES = ("listener", "dispatcher", "worker", "api")
PROCESS_PREFIX = "process:"
STALL_S = 30.0  # the dispatcher routes within a second or two; this long without routing is a stall


class LifelineAdapter:
    kind = "lifeline"
    capabilities = frozenset({"pause", "resume"})

    def __init__(self, pool: asyncpg.Pool, config: LifelineConfig, org: str | None = None,
                 channels: list[str] | None = None, processes: bool = False, data_dir: Path | None = None) -> None:
        self.pool = pool
        self.config = config
        self.org = org
        self.only = set(channels or [])
        self.processes = processes
        self.data_dir = data_dir or Path(os.environ.get("LIFELINE_DATA_DIR", ".lifeline"))

    def _process_names(self) -> list[str]:
        if not self.processes:
            return []
        return [p for p in PROCESSES if not self.only or PROCESS_PREFIX + p in self.only]

    async def _read_processes(self, names: list[str]) -> list[EngineChannel]:
        status = read_status(self.data_dir)
        procs = {p["name"]: p for p in (status or {}).get("processes", [])}
        out = []
        for name in names:
            p = procs.get(name)
            detail: dict[str, str] = {"kind": "process"}
            if p is None and name == "dispatcher" and "worker" in procs:
                # `lifeline up` runs the dispatcher inside the worker (the eager-start fast path): it lives and dies
                # with that process, and the outbox check below still tells a stall.
                p, detail["in"] = procs["worker"], "worker"
            state: State
            if p is None:
                state, raw, restarts = "unknown", "not supervised" if status is None else "not running", 0
            else:
                restarts = int(p.get("restarts") or 0)
                detail.update(pid=str(p.get("pid") or ""), health=str(p.get("health")),
                              uptime_s=str(p.get("uptime_s")), restarts=str(restarts))
                raw = str(p.get("state"))
                if raw == "running":
                    state = "started" if p.get("health") in ("ok", "unknown") else "starting"
                elif raw in ("restarting", "crash-loop"):
                    state = "error"
                    if p.get("last_exit"):
                        detail["last_exit"] = str(p["last_exit"])
                    if p.get("tail"):
                        detail["error"] = " | ".join(str(x) for x in p["tail"][-3:])[:300]
                else:
                    state = "stopped"
            queued = 0
            if name == "dispatcher":
                waiting, oldest = await outbox_waiting(self.pool)
                queued = waiting
                detail.update(outbox=str(waiting), outbox_oldest_s=f"{oldest:.0f}")
                if waiting and oldest > STALL_S and state != "error":
                    state, raw = "error", "stalled"
                    detail["error"] = f"{waiting} accepted message(s) not routed, oldest {oldest:.0f}s"
            out.append(EngineChannel(id=PROCESS_PREFIX + name, name=f"lifeline {name}", state=state,
                                     raw_state=raw, queued=queued, errors=restarts, detail=detail))
        return out

    def _destinations(self) -> list[Destination]:
        return [d for d in self.config.destinations
                if (self.org is None or d.org == self.org) and (not self.only or d.name in self.only)]

    def _destination(self, name: str) -> Destination:
        for d in self._destinations():
            if d.name == name:
                return d
        raise EngineNotFound(f"lifeline: no destination {name!r}")

    async def _read(self, dests: list[Destination]) -> list[EngineChannel]:
        queued: list[Any] = []
        dead: list[Any] = []
        paused_rows: list[Any] = []
        for org in sorted({d.org for d in dests}):  # each org in its own transaction (row-level security)
            q_, d_, p_ = await deliveries.destination_queues(self.pool, org, [d.name for d in dests if d.org == org])
            queued += q_
            dead += d_
            paused_rows += p_
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
        return await self._read(self._destinations()) + await self._read_processes(self._process_names())

    async def channel_status(self, channel_id: str) -> EngineChannel:
        if channel_id.startswith(PROCESS_PREFIX):
            name = channel_id.removeprefix(PROCESS_PREFIX)
            if name not in self._process_names():
                raise EngineNotFound(f"lifeline: no process channel {channel_id!r}")
            return (await self._read_processes([name]))[0]
        return (await self._read([self._destination(channel_id)]))[0]

    async def _set_paused(self, channel_id: str, paused: bool) -> None:
        d = self._destination(channel_id)
        await deliveries.set_destination_paused(self.pool, d.org, d.name, paused, ACTOR,
                                                "paused through the engine adapter" if paused else None)

    async def pause(self, channel_id: str) -> None:
        await self._set_paused(channel_id, True)

    async def resume(self, channel_id: str) -> None:
        await self._set_paused(channel_id, False)

    async def start(self, channel_id: str) -> None:
        if channel_id.startswith(PROCESS_PREFIX):
            raise EngineNotSupported("Lifeline's processes are restarted by their supervisor (lifeline up, or the "
                                     "orchestrator), not through the adapter")
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
