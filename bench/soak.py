"""Soak: the `lifeline up` process shape (listener, worker with the dispatcher inside) at a steady rate for a long
time, half of the messages to an ordered destination (lanes by PID-3.1 over 500 patients) and half to an unordered
one, sampling every process's RSS, the send → delivered latency and the open workflows; flat curves are the goal.

`python -m bench --soak 3600 --soak-rate 20 --out bench/results/soak` (1 hour at 20 msg/s; not part of CI). The
report judges flatness after a warm-up (caches, pools and the Temporal server's SQLite file fill during the first
minutes): RSS growth of each process from the end of the warm-up to the end, and the p95 of the first and the last
quarter of the run. Charts (SVG) go next to the report.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.peers import RecordingPeer
from bench.scaleout import Cluster, adt, process_env
from interop.mllp import FrameDecoder, encode

PATIENTS = 500


def _pct(values: list[float], p: int) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


def _pss(p: psutil.Process) -> int:
    try:
        return int(p.memory_full_info().pss)
    except (psutil.Error, AttributeError):
        return int(p.memory_info().rss)


def _app(k: int) -> str:
    return "EPIC" if k % 2 == 0 else "LABSYS"  # scaleout's routes: EPIC -> ordered, LABSYS -> unordered


async def run_soak(database_url: str, temporal_address: str, keys: dict[str, str], workdir: Path, *,
                   seconds: float, rate: float, sample_every: float = 30.0, connections: int = 5,
                   client: Any = None, server_pids: dict[str, int | None] | None = None) -> dict[str, Any]:
    ordered, unordered = RecordingPeer(), RecordingPeer()
    env = process_env(database_url, temporal_address, f"soak-{uuid.uuid4().hex[:8]}", keys)
    queue = env["LIFELINE_TASK_QUEUE"]
    cluster = Cluster(workdir, env, await ordered.start(), await unordered.start(), workers=1, dispatchers=0,
                      listeners=1, worker_args=["--with-dispatcher"])
    sent_at: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    total = int(rate * seconds)

    def arrived(control: str) -> float | None:
        return ordered.at.get(control) or unordered.at.get(control)

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
                    writer.write(encode(adt(control, f"P{(k // 2) % PATIENTS:04d}", _app(k))))
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
                lat = [a - t for c, t in sent_at.items() if window_start <= t < now and (a := arrived(c)) is not None]
                window_start = now
                rss = cluster.rss_mb()
                for name, pid in (server_pids or {}).items():
                    if pid is not None:
                        try:
                            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                            # PSS, not RSS: a server of several processes (PostgreSQL's backends) shares its
                            # buffers, and a sum of RSS counts a shared page once per process that touched it.
                            rss[name] = round(sum(_pss(p) for p in procs) / 2**20, 1)
                        except psutil.Error:
                            pass
                running = None
                if client is not None:
                    running = (await client.count_workflows(
                        f"(TaskQueue = '{queue}' OR TaskQueue = '{queue}-ordered') AND ExecutionStatus = 'Running'"
                    )).count
                samples.append({"t_s": round(now - t0), "sent": len(sent_at),
                                "delivered": len(ordered.at) + len(unordered.at), "in_window": len(lat),
                                "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "open_workflows": running,
                                "rss_mb": rss})

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(sender(c) for c in range(connections)))
        deadline = time.monotonic() + 120
        while len(ordered.at) + len(unordered.at) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        stop.set()
        await sampling
    finally:
        cluster.stop()
        await ordered.stop()
        await unordered.stop()
    return summarise(seconds, rate, total, sent_at, ordered, unordered, samples)


def summarise(seconds: float, rate: float, total: int, sent_at: dict[str, float], ordered: RecordingPeer,
              unordered: RecordingPeer, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals, order, and the flatness verdicts (RSS after warm-up, latency first vs last quarter)."""
    at = {**unordered.at, **ordered.at}
    e2e = [at[c] - t for c, t in sent_at.items() if c in at]
    lanes: dict[str, list[int]] = {}
    for control, mrn in ordered.arrivals:
        lanes.setdefault(mrn, []).append(int(control[1:]))
    violations = sum(1 for seq in lanes.values() for a, b in zip(seq, seq[1:], strict=False) if b < a)
    sending = [s for s in samples if s["t_s"] <= seconds and s["in_window"]]  # windows with sends in them
    warm = next((s for s in sending if s["t_s"] >= min(300.0, seconds / 10)), sending[0] if sending else None)
    last = samples[-1] if samples else None

    def growth(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, float]:
        if a is None or b is None:
            return {}
        return {k: round(100 * (b["rss_mb"][k] - v) / v, 1) for k, v in a["rss_mb"].items()
                if v and k in b["rss_mb"]}

    quarter = max(1, len(sending) // 4)
    first_q = [s["p95_ms"] for s in sending[:quarter]]
    last_q = [s["p95_ms"] for s in sending[-quarter:]]
    open_wf = [s["open_workflows"] for s in sending if s["open_workflows"] is not None]
    return {"seconds": seconds, "rate_per_s": rate, "messages": total, "delivered": len(at),
            "duplicates": len(ordered.arrivals) + len(unordered.arrivals) - len(ordered.at) - len(unordered.at),
            "order_violations": violations, "ordered_lanes": len(lanes),
            "p50_ms": _pct(e2e, 50), "p95_ms": _pct(e2e, 95), "p99_ms": _pct(e2e, 99),
            "warmup_s": warm["t_s"] if warm else None,
            "rss_growth_pct_first_to_last_sample": growth(samples[0] if samples else None, last),
            "rss_growth_pct_after_warmup": growth(warm, last),
            "p95_ms_median_first_quarter": sorted(first_q)[len(first_q) // 2] if first_q else None,
            "p95_ms_median_last_quarter": sorted(last_q)[len(last_q) // 2] if last_q else None,
            "open_workflows_max": max(open_wf) if open_wf else None,
            "open_workflows_last_quarter_max": max(open_wf[-quarter:]) if open_wf else None,
            "samples": samples}
