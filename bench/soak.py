"""Soak: the `lifeline up` process shape (listener, worker with the dispatcher inside) at a steady rate for a long
time, sampling every process's RSS, the end-to-end latency and the open workflows; a flat curve is the goal.

`python -m bench --soak 3600 --soak-rate 20` (1 hour at 20 msg/s; not part of CI).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.scaleout import Cluster, RecordingPeer, adt, process_env
from interop.mllp import FrameDecoder, encode


def _pct(values: list[float], p: int) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


async def run_soak(database_url: str, temporal_address: str, keys: dict[str, str], workdir: Path, *,
                   seconds: float, rate: float, sample_every: float = 30.0, connections: int = 5,
                   client: Any = None, server_pids: dict[str, int | None] | None = None) -> dict[str, Any]:
    peer, other = RecordingPeer(), RecordingPeer()
    env = process_env(database_url, temporal_address, f"soak-{uuid.uuid4().hex[:8]}", keys)
    cluster = Cluster(workdir, env, await peer.start(), await other.start(), workers=1, dispatchers=0, listeners=1,
                      worker_args=["--with-dispatcher"])
    sent_at: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    total = int(rate * seconds)
    try:
        await cluster.start()
        t0 = time.monotonic()

        async def sender(c: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", cluster.listen_ports[0])
            decoder = FrameDecoder()
            try:
                for k in range(c, total, connections):
                    delay = t0 + k / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    control = f"K{k:08d}"
                    sent_at[control] = time.monotonic()
                    writer.write(encode(adt(control, f"P{k % 500:04d}", "LABSYS")))
                    await writer.drain()
                    frames: list[bytes] = []
                    while not frames:
                        data = await asyncio.wait_for(reader.read(65536), 60)
                        if not data:
                            raise ConnectionError("listener closed the connection")
                        frames = decoder.feed(data)
            finally:
                writer.close()

        async def sampler() -> None:
            window_start = time.monotonic()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), sample_every)
                except TimeoutError:
                    pass
                now = time.monotonic()
                lat = [other.at[c] - t for c, t in sent_at.items() if c in other.at and window_start <= t < now]
                window_start = now
                rss = cluster.rss_mb()
                for name, pid in (server_pids or {}).items():
                    if pid is not None:
                        try:
                            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                            rss[name] = round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
                        except psutil.Error:
                            pass
                running = None
                if client is not None:
                    running = (await client.count_workflows(
                        f"TaskQueue = '{env['LIFELINE_TASK_QUEUE']}' AND ExecutionStatus = 'Running'")).count
                samples.append({"t_s": round(now - t0), "sent": len(sent_at), "delivered": len(other.at),
                                "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "open_workflows": running,
                                "rss_mb": rss})

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(sender(c) for c in range(connections)))
        deadline = time.monotonic() + 120
        while len(other.at) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        stop.set()
        await sampling
    finally:
        cluster.stop()
        await peer.stop()
        await other.stop()
    e2e = [other.at[c] - t for c, t in sent_at.items() if c in other.at]
    first, last = (samples[0], samples[-1]) if samples else ({}, {})
    growth = {k: round(100 * (last["rss_mb"][k] - v) / v, 1) for k, v in first.get("rss_mb", {}).items()
              if v and k in last.get("rss_mb", {})}
    return {"seconds": seconds, "rate_per_s": rate, "messages": total, "delivered": len(other.at),
            "duplicates": len(other.arrivals) - len(other.at), "p50_ms": _pct(e2e, 50), "p95_ms": _pct(e2e, 95),
            "rss_growth_pct_first_to_last_sample": growth, "samples": samples}
