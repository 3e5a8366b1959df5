"""Throughput and latency of the real delivery path against the bare-Temporal ceiling, on the same servers.

Engine pieces run in this process (listener, dispatcher, worker) with the pool sizes `lifeline up` gives
each process; the downstream peer is python-hl7's asyncio MLLP server; senders are raw asyncio MLLP clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.mllp import MllpSender
from bench import ceiling
from bench.peers import ClosingPeer, RecordingPeer
from bench.stack import Rig, store_cipher
from infra.config import LifelineConfig, validate_config
from infra.db import create_pool
from infra.settings import Settings
from interop.mllp import FrameDecoder, encode
from workers.dispatcher import Dispatcher
from workers.listener import ChannelListener
from workers.worker import WORKER_OPTIONS, build_worker

PATIENTS_PER_CONNECTION = 3


# -- small helpers ---------------------------------------------------------------------------------------------

def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds (values are seconds)."""
    if not values:
        return {f"p{p}": 0.0 for p in points}
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        out[f"p{p}"] = round(ordered[rank] * 1000, 2)
    out["min"] = round(ordered[0] * 1000, 2)
    out["max"] = round(ordered[-1] * 1000, 2)
    return out


def adt(control_id: str, mrn: str, seq: int) -> str:
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A08|20260101120000",
        f"PID|1||{mrn}^^^GENHOSP^MR||DOE^JANE||19800101|F|||1 MAIN ST^^BOSTON^MA^02118",
        f"PV1|1|I|WARD^{seq % 50}^1",
    ])


def engine_config(peer_port: int, *, ordered: bool) -> LifelineConfig:
    ordering: Any = {"key": "PID-3.1"} if ordered else "none"
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "lab"}]}],
        "destinations": [{"name": "lab", "ordering": ordering,
                          "mllp": {"host": "127.0.0.1", "port": peer_port, "ack_timeout": "10s",
                                   "connect_timeout": "5s"}}],
    }, "bench")


async def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False


async def closed_by(client: Client, task_queue: str, expected: int, timeout: float) -> datetime | None:
    """Wait until ``expected`` workflows of the task queue are closed; the latest close time (server clock)."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'"

    async def all_closed() -> bool:
        return (await client.count_workflows(query)).count >= expected

    if not await wait_until(all_closed, timeout, interval=0.25):
        return None
    latest: datetime | None = None
    async for wf in client.list_workflows(query, page_size=1000):
        if wf.close_time is not None and (latest is None or wf.close_time > latest):
            latest = wf.close_time
    return latest


def cpu_used(rig: Rig, before: dict[str, float], seconds: float, items: int) -> dict[str, Any]:
    """CPU each party used since ``before``: seconds, % of one core over ``seconds``, and ms per item.

    On shared cores the wall-clock rates swing with the neighbours' load; CPU per item does much less.
    """
    after = rig.cpu_seconds()
    used = {k: round(after[k] - before[k], 2) for k in after}
    per_item = {k: round(1000 * v / items, 2) for k, v in used.items()}
    return {"seconds": used, "pct_of_one_core": {k: round(100 * v / seconds) for k, v in used.items()},
            "ms_per_item": per_item, "ms_per_item_total": round(sum(per_item.values()), 2),
            "wall_seconds": round(seconds, 2)}


# -- the downstream peer and the senders ------------------------------------------------------------------------

class MllpClient:
    """One sending connection (an EHR interface): send, wait for the ACK, send the next."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.decoder = reader, writer, FrameDecoder()
        self._frames: list[bytes] = []

    @classmethod
    async def open(cls, port: int) -> MllpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, text: str, timeout: float = 60.0) -> tuple[str, float]:
        """Send one message; return the ACK code and the seconds from send to ACK."""
        started = time.monotonic()
        self.writer.write(encode(text))
        await self.writer.drain()
        async with asyncio.timeout(timeout):
            while not self._frames:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("listener closed the connection")
                self._frames.extend(self.decoder.feed(data))
        frame = self._frames.pop(0)
        elapsed = time.monotonic() - started
        msa = next((s for s in frame.decode().split("\r") if s.startswith("MSA|")), "MSA|??")
        return msa.split("|")[1], elapsed

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# -- the engine in this process, pool sizes as in `lifeline up` -------------------------------------------------

@dataclass
class Engine:
    rig: Rig
    db_url: str
    config: LifelineConfig
    task_queue: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:10]}")
    listener: ChannelListener | None = None
    pools: list[asyncpg.Pool] = field(default_factory=list)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: Worker | None = None
    _mllp: MllpSender | None = None
    _http: httpx.AsyncClient | None = None
    # The fast path (local first attempt, eager start, lane hand-off); False: the regular-activity shape.
    fast: bool = True

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    async def start(self) -> None:
        # The defaults a process gets without overrides (not this environment's LIFELINE_* variables).
        pool_max = int(Settings.model_fields["database_pool_max"].default)
        sweep = float(Settings.model_fields["dispatcher_sweep_seconds"].default)
        cipher = store_cipher()
        # One pool per process, sized like workers.listener / dispatcher / worker size theirs.
        lpool = await create_pool(self.db_url, min_size=2, max_size=pool_max)
        dpool = await create_pool(self.db_url, min_size=1, max_size=4)
        wpool = await create_pool(self.db_url, min_size=2, max_size=pool_max)
        self.pools = [lpool, dpool, wpool]
        self.listener = ChannelListener(self.config.channels[0], lpool, cipher)
        await self.listener.start("127.0.0.1", 0)
        # The dispatcher shares the worker's client, as in `lifeline up` (worker --with-dispatcher): eager starts.
        dispatcher = Dispatcher(dpool, self.rig.client, self.config, cipher, self.task_queue, eager=self.fast,
                                local_first=self.fast)
        self._tasks.append(asyncio.create_task(
            dispatcher.run(self.db_url, sweep, self._stop)))
        self._http, self._mllp = httpx.AsyncClient(), MllpSender()
        acts = DeliveryActivities(wpool, cipher, self.config, self._mllp, self._http,
                                  handoff=dispatcher.start_next if self.fast else None)
        self._worker = build_worker(self.rig.client, self.task_queue, acts)
        self._tasks.append(asyncio.create_task(self._worker.run()))

    async def stop(self) -> None:
        self._stop.set()
        if self.listener is not None:
            await self.listener.close()
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker.shutdown(), 30)
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._mllp is not None:
            await self._mllp.close()
        if self._http is not None:
            await self._http.aclose()
        for p in self.pools:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.close(), 10)


@contextlib.asynccontextmanager
async def engine_running(rig: Rig, *, ordered: bool, fast: bool = True) -> AsyncIterator[tuple[Engine, RecordingPeer]]:
    peer = RecordingPeer()
    port = await peer.start()
    engine = Engine(rig, await rig.new_database(), engine_config(port, ordered=ordered), fast=fast)
    await engine.start()
    try:
        yield engine, peer
    finally:
        await engine.stop()
        await peer.stop()


async def measure_closing_peer(rig: Rig, runs: int, n: int, connections: int = 10) -> dict[str, Any]:
    """`runs` runs of n messages through the engine to hl7apy's closing MLLPServer: duplicates and losses."""
    out: list[dict[str, Any]] = []
    for run in range(runs):
        peer = ClosingPeer()
        port = peer.start()
        engine = Engine(rig, await rig.new_database(), engine_config(port, ordered=False))
        await engine.start()
        try:
            await send_closed_loop(engine.port, n, connections, f"H{run}")
            await wait_until(lambda: len(peer.received) >= n, timeout=max(180.0, n / 2))  # noqa: B023
            await asyncio.sleep(1.0)  # a late duplicate would arrive now
            async with engine.pools[2].acquire() as conn:
                failed = int(await conn.fetchval(
                    "select count(*) from delivery_attempts where outcome <> 'delivered'"))
        finally:
            await engine.stop()
            peer.stop()
        counts: dict[str, int] = {}
        for c in peer.received:
            counts[c] = counts.get(c, 0) + 1
        out.append({"messages": n, "received": len(counts), "duplicates": sum(v - 1 for v in counts.values()),
                    "failed_attempts": failed})
    return {"runs": out, "duplicates": sum(r["duplicates"] for r in out),
            "lost": sum(r["messages"] - r["received"] for r in out)}


async def measure_steady(rig: Rig, *, rate: float, seconds: float, connections: int = 5) -> dict[str, Any]:
    """A steady open-loop rate: send → delivered at the peer latency (the acceptance's end-to-end latency)."""
    async with engine_running(rig, ordered=False) as (engine, peer):
        sent_at: dict[str, float] = {}
        acks, late = await _send_steady(engine.port, rate, seconds, connections, sent_at)
        drained = await wait_until(lambda: len(peer.at) >= len(sent_at), timeout=120)
        e2e = [peer.at[c] - t for c, t in sent_at.items() if c in peer.at]
    return {"rate_per_s": rate, "seconds": seconds, "connections": connections, "messages": len(acks),
            "late_sends": late, "ack_ms": percentiles(acks), "send_to_delivered_ms": percentiles(e2e),
            "all_delivered": drained, "duplicates_at_peer": peer.duplicates}


async def send_closed_loop(port: int, n: int, connections: int, prefix: str,
                           sent_at: dict[str, float] | None = None, patients: int | None = None) -> list[float]:
    """Send n messages over ``connections`` connections as fast as each ACK allows; the ACK latencies."""
    latencies: list[float] = []

    async def one(c: int) -> None:
        client = await MllpClient.open(port)
        try:
            for j, i in enumerate(range(c, n, connections)):
                control = f"{prefix}{i:06d}"
                if sent_at is not None:
                    sent_at[control] = time.monotonic()
                mrn = f"P{i % patients:05d}" if patients else f"MRN{c:03d}{j % PATIENTS_PER_CONNECTION}"
                code, elapsed = await client.send(adt(control, mrn, i))
                if code != "AA":
                    raise RuntimeError(f"listener answered {code} to {control}")
                latencies.append(elapsed)
        finally:
            await client.close()

    await asyncio.gather(*(one(c) for c in range(min(connections, n))))
    return latencies


# -- 1. the bare-Temporal ceiling -------------------------------------------------------------------------------

async def measure_ceiling(rig: Rig, n: int, batch: int = 500, *, local: bool = False,
                          **worker_overrides: Any) -> dict[str, Any]:
    """Start n trivial workflows as fast as possible (in gathers of ``batch``, like the dispatcher).

    local: the step is a local activity and each start asks for eager start (the fast path's one-step shape).
    """
    task_queue = f"ceiling-{uuid.uuid4().hex[:10]}"
    ceiling.DONE.clear()
    wf: Any = ceiling.LocalCeilingWorkflow if local else ceiling.CeilingWorkflow
    worker = Worker(rig.client, task_queue=task_queue, workflows=[wf],
                    activities=[ceiling.noop], **{**WORKER_OPTIONS, **worker_overrides})
    async with worker:
        wall0, t0, cpu0 = time.time(), time.monotonic(), rig.cpu_seconds()
        for first in range(0, n, batch):
            await asyncio.gather(*(
                rig.client.start_workflow(wf.run, i, id=f"{task_queue}-{i}", task_queue=task_queue,
                                          request_eager_start=local)
                for i in range(first, min(n, first + batch))))
        started_s = time.monotonic() - t0
        if not await wait_until(lambda: len(ceiling.DONE) >= n, timeout=max(120.0, n / 5)):
            raise RuntimeError(f"ceiling: only {len(ceiling.DONE)} of {n} activities ran")
        activities_s = max(ceiling.DONE) - t0
        last_close = await closed_by(rig.client, task_queue, n, timeout=120)
        cpu = cpu_used(rig, cpu0, time.monotonic() - t0, n)
    if last_close is None:
        raise RuntimeError("ceiling: workflows did not all close")
    closed_s = last_close.timestamp() - wall0
    return {
        "workflows": n, "start_batch": batch, "worker_options": dict(WORKER_OPTIONS),
        "shape": "local activity + eager start" if local else "regular activity",
        "starts_per_s": round(n / started_s, 1), "activities_per_s": round(n / activities_s, 1),
        "workflows_per_s": round(n / closed_s, 1), "seconds": round(closed_s, 2), "cpu": cpu,
    }


# -- 2. end-to-end delivery throughput --------------------------------------------------------------------------

async def _stages(pool_url: str, wall0: float) -> dict[str, Any]:
    """When each stage finished its last message, seconds after the first send (PostgreSQL's clock)."""
    conn = await asyncpg.connect(pool_url)
    try:
        row = await conn.fetchrow(
            "select extract(epoch from max(m.received_at)) as stored,"
            " extract(epoch from max(m.dispatched_at)) as routed,"
            " extract(epoch from max(d.started_at)) as started,"
            " extract(epoch from max(d.finished_at)) as delivered,"
            " percentile_cont(0.5) within group (order by d.latency_ms) as latency_p50,"
            " percentile_cont(0.95) within group (order by d.latency_ms) as latency_p95"
            " from messages m join deliveries d on d.message_id = m.id")
        attempts = await conn.fetchrow(
            "select count(*) as n, avg(duration_ms) as send_ms, count(*) filter (where outcome <> 'delivered')"
            " as failed from delivery_attempts")
    finally:
        await conn.close()
    assert row is not None and attempts is not None  # aggregates always return a row
    out = {k: round(float(row[k]) - wall0, 2) for k in ("stored", "routed", "started", "delivered")
           if row[k] is not None}
    out["stored_to_delivered_ms_p50"] = float(row["latency_p50"] or 0)
    out["stored_to_delivered_ms_p95"] = float(row["latency_p95"] or 0)
    out["attempts"] = int(attempts["n"])
    out["failed_attempts"] = int(attempts["failed"])
    out["mllp_send_ms_avg"] = round(float(attempts["send_ms"] or 0), 2)
    return out


async def measure_delivery(rig: Rig, n: int, connections: int, *, ordered: bool, fast: bool = True,
                           patients: int | None = None) -> dict[str, Any]:
    """n messages over MLLP through listener → store → dispatcher → DeliveryWorkflow → MLLP peer.

    patients: spread the messages over this many PID-3.1 values (the lanes when ordered); default 3 per connection.
    """
    async with engine_running(rig, ordered=ordered, fast=fast) as (engine, peer):
        wall0, t0, cpu0 = time.time(), time.monotonic(), rig.cpu_seconds()
        acks = await send_closed_loop(engine.port, n, connections, "D", patients=patients)
        acked_s = time.monotonic() - t0
        if not await wait_until(lambda: len(peer.at) >= n, timeout=max(180.0, n / 2)):
            raise RuntimeError(f"delivery: only {len(peer.at)} of {n} messages reached the peer")
        delivered_s = max(peer.at.values()) - t0
        cpu = cpu_used(rig, cpu0, time.monotonic() - t0, n)
        last_close = await closed_by(rig.client, engine.task_queue, n, timeout=120)
        stages = await _stages(engine.db_url, wall0)
    closed_s = last_close.timestamp() - wall0 if last_close is not None else None
    return {
        "messages": n, "connections": connections,
        "ordering": "PID-3.1" if ordered else "none",
        "lanes": (patients or connections * PATIENTS_PER_CONNECTION) if ordered else None,
        "shape": "fast path" if fast else "regular activity",
        "acked_per_s": round(n / acked_s, 1),
        "delivered_per_s": round(n / delivered_s, 1),
        "workflows_per_s": round(n / closed_s, 1) if closed_s else None,
        "seconds": round(delivered_s, 2),
        "duplicates_at_peer": peer.duplicates,
        "ack_ms": percentiles(acks),
        "stages_s": stages, "cpu": cpu,
    }


# -- 3. ACK latency: steady rate, then a burst ------------------------------------------------------------------

async def _send_steady(port: int, rate: float, seconds: float, connections: int,
                       sent_at: dict[str, float]) -> tuple[list[float], int]:
    """Open loop: message k is due at k/rate; a connection that is still waiting sends as soon as it can."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    late = 0
    t0 = time.monotonic()

    async def one(c: int) -> None:
        nonlocal late
        client = await MllpClient.open(port)
        try:
            for j, k in enumerate(range(c, total, connections)):
                delay = t0 + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.05:
                    late += 1
                control = f"S{k:06d}"
                sent_at[control] = time.monotonic()
                code, elapsed = await client.send(adt(control, f"MRN9{c:02d}{j % PATIENTS_PER_CONNECTION}", k))
                if code != "AA":
                    raise RuntimeError(f"listener answered {code} to {control}")
                latencies.append(elapsed)
        finally:
            await client.close()

    await asyncio.gather(*(one(c) for c in range(min(connections, total))))
    return latencies, late


async def measure_latency(rig: Rig, *, rate: float, seconds: float, burst: int, steady_connections: int = 5,
                          burst_connections: int = 10) -> dict[str, Any]:
    """ACK latency at a steady rate with delivery running, then during a closed-loop burst."""
    async with engine_running(rig, ordered=False) as (engine, peer):
        sent_at: dict[str, float] = {}
        acks, late = await _send_steady(engine.port, rate, seconds, steady_connections, sent_at)
        delivered_while_sending = len(peer.at)
        drained = await wait_until(lambda: len(peer.at) >= len(sent_at), timeout=120)
        e2e = [peer.at[c] - t for c, t in sent_at.items() if c in peer.at]
        steady = {
            "rate_per_s": rate, "seconds": seconds, "connections": steady_connections, "messages": len(acks),
            "late_sends": late, "ack_ms": percentiles(acks),
            "send_to_delivered_ms": percentiles(e2e), "all_delivered": drained,
            "delivered_while_sending": delivered_while_sending,
        }
        t0 = time.monotonic()
        burst_acks = await send_closed_loop(engine.port, burst, burst_connections, "B")
        elapsed = time.monotonic() - t0
        burst_out = {
            "messages": burst, "connections": burst_connections, "seconds": round(elapsed, 2),
            "acked_per_s": round(burst / elapsed, 1), "ack_ms": percentiles(burst_acks),
            "delivered_during_burst": sum(1 for c in peer.at if c.startswith("B")),
        }
    return {"steady": steady, "burst": burst_out}
