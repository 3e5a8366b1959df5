"""`make bench`: the delivery benchmark, start to finish in one command.

Starts its own embedded PostgreSQL and Temporal dev server (SQLite file, as `lifeline up` does) and measures:
the bare-Temporal ceiling, end-to-end MLLP delivery throughput (unordered and ordered by PID-3.1) and its ratio
to the ceiling, ACK latency at a steady rate and in a burst, the RSS of a listener holding idle connections,
and interop parsing rates. Writes bench/results/report.json and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import interop_bench
from bench.engine_bench import measure_ceiling, measure_delivery, measure_latency
from bench.report import render_markdown
from bench.rss_bench import measure_listener_rss
from bench.stack import Rig, started

RESULTS = Path(__file__).resolve().parent / "results"

DEFAULTS: dict[str, Any] = {
    "messages": 1000, "ceiling": None, "connections": 10, "steady_rate": 50.0, "steady_seconds": 20.0,
    "burst": 5000, "idle_connections": 1000, "interop_seconds": 2.0,
}
QUICK: dict[str, Any] = {
    "messages": 250, "ceiling": None, "connections": 10, "steady_rate": 50.0, "steady_seconds": 5.0,
    "burst": 1000, "idle_connections": 1000, "interop_seconds": 0.5,
}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # psutil is a dependency; the report survives without it
        pass
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(), "cpu_model": cpu, "memory_gb": mem_gb,
        "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def measure_all(rig: Rig, opts: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    """Every engine measurement against the given servers, in an order that keeps them from disturbing each other."""
    report: dict[str, Any] = {}
    log.info("listener RSS with %d idle connections", opts["idle_connections"])
    report["listener_rss"] = await measure_listener_rss(rig, opts["idle_connections"])
    n_ceiling = opts["ceiling"] or opts["messages"]
    log.info("bare-Temporal ceiling: %d trivial workflows", n_ceiling)
    report["ceiling"] = await measure_ceiling(rig, n_ceiling)
    log.info("  %s workflows/s", report["ceiling"]["workflows_per_s"])
    log.info("end-to-end delivery, unordered: %d messages", opts["messages"])
    report["delivery_unordered"] = await measure_delivery(rig, opts["messages"], opts["connections"], ordered=False)
    log.info("  %s delivered/s", report["delivery_unordered"]["delivered_per_s"])
    if not opts.get("no_ordered"):
        log.info("end-to-end delivery, ordered by PID-3.1: %d messages", opts["messages"])
        report["delivery_ordered"] = await measure_delivery(rig, opts["messages"], opts["connections"], ordered=True)
        log.info("  %s delivered/s", report["delivery_ordered"]["delivered_per_s"])
    # The cores are shared: measure the ceiling again after the delivery runs and compare with the mean.
    log.info("bare-Temporal ceiling again")
    report["ceiling_after"] = await measure_ceiling(rig, n_ceiling)
    log.info("  %s workflows/s", report["ceiling_after"]["workflows_per_s"])
    log.info("ACK latency: %.0f msg/s for %.0fs, then a %d-message burst", opts["steady_rate"],
             opts["steady_seconds"], opts["burst"])
    report["ack_latency"] = await measure_latency(rig, rate=opts["steady_rate"], seconds=opts["steady_seconds"],
                                                  burst=opts["burst"])
    return report


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Add the ceiling (mean of both runs) and each delivery run's ratio to it, by wall clock and by CPU."""
    deliveries = [k for k in ("delivery_unordered", "delivery_ordered") if k in report]
    ceiling_rate = round((report["ceiling"]["workflows_per_s"] + report["ceiling_after"]["workflows_per_s"]) / 2, 1)
    report["ceiling_workflows_per_s"] = ceiling_rate
    report["ratio_to_ceiling"] = {
        k.removeprefix("delivery_"): round(report[k]["delivered_per_s"] / ceiling_rate, 3) for k in deliveries}
    # CPU per message of the share we got (bench process + Temporal + PostgreSQL): the ratio both runs would
    # show with the same CPU, the neighbours' load taken out.
    ceiling_cpu = (report["ceiling"]["cpu"]["ms_per_item_total"]
                   + report["ceiling_after"]["cpu"]["ms_per_item_total"]) / 2
    report["ceiling_cpu_ms_per_workflow"] = round(ceiling_cpu, 2)
    report["cpu_normalised_ratio"] = {
        k.removeprefix("delivery_"): round(ceiling_cpu / report[k]["cpu"]["ms_per_item_total"], 3)
        for k in deliveries}
    report["goal_ratio"] = 0.8
    return report


async def run(opts: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "options": dict(opts)}
    t_start = time.monotonic()
    log.info("interop parsing rates (%.1fs each)", opts["interop_seconds"])
    report["interop"] = interop_bench.run(opts["interop_seconds"])
    async with started() as rig:
        log.info("servers up: Temporal %s (SQLite), PostgreSQL :%d", rig.temporal_address, rig.pg.port)
        report.update(await measure_all(rig, opts, log))
    summarise(report)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - t_start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--messages", type=int, help="messages per end-to-end delivery run")
    parser.add_argument("--ceiling", type=int, help="trivial workflows for the ceiling (default: --messages)")
    parser.add_argument("--connections", type=int, help="sending MLLP connections for delivery runs")
    parser.add_argument("--steady-rate", type=float, help="messages per second for the steady ACK-latency run")
    parser.add_argument("--steady-seconds", type=float, help="length of the steady ACK-latency run")
    parser.add_argument("--burst", type=int, help="messages in the ACK-latency burst (10 connections)")
    parser.add_argument("--idle-connections", type=int, help="idle connections held by the listener for RSS")
    parser.add_argument("--interop-seconds", type=float, help="seconds per interop parsing measure")
    parser.add_argument("--no-ordered", action="store_true", help="skip the ordered-by-PID-3.1 delivery run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where report.json / report.md go")
    parser.add_argument("--docs", type=Path, help="also copy report.md here (e.g. docs/benchmarks.md)")
    ns = parser.parse_args(argv)
    opts = dict(QUICK if ns.quick else DEFAULTS)
    for key in DEFAULTS:
        value = getattr(ns, key)
        if value is not None:
            opts[key] = value
    opts["no_ordered"] = ns.no_ordered
    opts["quick"] = ns.quick

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("bench")
    log.setLevel(logging.INFO)
    report = asyncio.run(run(opts, log))

    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (ns.out / "report.md").write_text(markdown)
    if ns.docs is not None:
        ns.docs.write_text(markdown)
    print(markdown)
    print(f"wrote {ns.out / 'report.json'} and {ns.out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
