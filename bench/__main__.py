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
from bench.engine_bench import (
    measure_ceiling,
    measure_closing_peer,
    measure_delivery,
    measure_latency,
    measure_steady,
)
from bench.report import render_markdown, render_soak
from bench.rss_bench import measure_listener_rss
from bench.stack import Rig, started

RESULTS = Path(__file__).resolve().parent / "results"

DEFAULTS: dict[str, Any] = {
    "messages": 1000, "ceiling": None, "connections": 10, "steady_rate": 50.0, "steady_seconds": 20.0,
    "burst": 5000, "idle_connections": 1000, "interop_seconds": 2.0, "patients": 500, "few_patients": 30,
    "steady10_seconds": 30.0, "steady30_seconds": 120.0, "closing_runs": 5, "closing_messages": 200,
    "scaleout": 10000, "soak": None, "soak_rate": 20.0,
}
QUICK: dict[str, Any] = {
    "messages": 250, "ceiling": None, "connections": 10, "steady_rate": 50.0, "steady_seconds": 5.0,
    "burst": 1000, "idle_connections": 1000, "interop_seconds": 0.5, "patients": 500, "few_patients": 30,
    "steady10_seconds": 10.0, "steady30_seconds": 20.0, "closing_runs": 2, "closing_messages": 100,
    "scaleout": 0, "soak": None, "soak_rate": 20.0,
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
    """Every engine measurement against the given servers, in an order that keeps them from disturbing each other.

    The acceptance reference is the one-step ceiling of the fast path's shape (a local activity, started with
    request_eager_start), measured on the same server before and after the delivery runs (the cores are shared).
    """
    report: dict[str, Any] = {}
    log.info("listener RSS with %d idle connections", opts["idle_connections"])
    report["listener_rss"] = await measure_listener_rss(rig, opts["idle_connections"])
    n_ceiling = opts["ceiling"] or opts["messages"]
    log.info("one-step ceiling (local activity + eager start): %d workflows", n_ceiling)
    report["ceiling"] = await measure_ceiling(rig, n_ceiling, local=True)
    log.info("  %s workflows/s", report["ceiling"]["workflows_per_s"])
    log.info("end-to-end delivery, unordered: %d messages", opts["messages"])
    report["delivery_unordered"] = await measure_delivery(rig, opts["messages"], opts["connections"], ordered=False)
    log.info("  %s delivered/s", report["delivery_unordered"]["delivered_per_s"])
    if not opts.get("no_ordered"):
        for key, patients in (("delivery_ordered", opts["patients"]), ("delivery_ordered_few", opts["few_patients"])):
            log.info("end-to-end delivery, ordered by PID-3.1 over %d patients: %d messages", patients,
                     opts["messages"])
            report[key] = await measure_delivery(rig, opts["messages"], opts["connections"], ordered=True,
                                                 patients=patients)
            log.info("  %s delivered/s", report[key]["delivered_per_s"])
    log.info("one-step ceiling again")
    report["ceiling_after"] = await measure_ceiling(rig, n_ceiling, local=True)
    log.info("  %s workflows/s", report["ceiling_after"]["workflows_per_s"])
    if opts.get("compare_regular"):
        log.info("for comparison: the regular-activity ceiling and delivery shape")
        report["ceiling_regular"] = await measure_ceiling(rig, n_ceiling)
        report["delivery_regular"] = await measure_delivery(rig, opts["messages"], opts["connections"],
                                                            ordered=False, fast=False)
    report["steady"] = {}
    for rate, seconds in ((10.0, opts["steady10_seconds"]), (30.0, opts["steady30_seconds"])):
        log.info("steady %.0f msg/s for %.0fs: send -> delivered latency", rate, seconds)
        report["steady"][f"{rate:.0f}"] = await measure_steady(rig, rate=rate, seconds=seconds)
        log.info("  p95 %s ms", report["steady"][f"{rate:.0f}"]["send_to_delivered_ms"]["p95"])
    log.info("ACK latency: %.0f msg/s for %.0fs, then a %d-message burst", opts["steady_rate"],
             opts["steady_seconds"], opts["burst"])
    report["ack_latency"] = await measure_latency(rig, rate=opts["steady_rate"], seconds=opts["steady_seconds"],
                                                  burst=opts["burst"])
    log.info("hl7apy's closing MLLPServer: %d runs of %d messages", opts["closing_runs"], opts["closing_messages"])
    report["closing_peer"] = await measure_closing_peer(rig, opts["closing_runs"], opts["closing_messages"])
    log.info("  %d duplicates, %d lost", report["closing_peer"]["duplicates"], report["closing_peer"]["lost"])
    if opts.get("scaleout"):
        report["scaleout"] = await scaleout(rig, opts["scaleout"], log)
    return report


def _keys() -> dict[str, str]:
    from bench.stack import CODEC_KEY, JWT_SECRET, STORE_KEY

    return {"LIFELINE_JWT_SECRET": JWT_SECRET, "LIFELINE_STORE_KEY": STORE_KEY, "LIFELINE_CODEC_KEY": CODEC_KEY}


async def scaleout(rig: Rig, messages: int, log: logging.Logger) -> dict[str, Any]:
    import tempfile

    from bench.scaleout import run_scaleout

    log.info("scale-out: 2 workers, 2 dispatchers, 2 listeners as processes; %d messages", messages)
    cpu = {"temporal": lambda: rig.cpu_seconds()["temporal"], "postgres": lambda: rig.cpu_seconds()["postgres"]}
    with tempfile.TemporaryDirectory(prefix="lifeline-scaleout-") as tmp:
        result = await run_scaleout(await rig.new_database(), rig.temporal_address, _keys(), Path(tmp),
                                    messages=messages, timeout=max(600.0, messages / 2), cpu_of=cpu)
    log.info("  lost %d, duplicates %d, order violations %d, %s delivered/s", result["lost"], result["duplicates"],
             result["order_violations"], result["delivered_per_s"])
    return result


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Add the ceiling (mean of both runs) and each delivery run's ratio to it, by wall clock and by CPU."""
    deliveries = [k for k in ("delivery_unordered", "delivery_ordered", "delivery_ordered_few") if k in report]
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
    report["goals"] = {"unordered": 0.8, "ordered": 0.8, "ordered_few": 0.6}
    return report


async def run(opts: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "options": dict(opts)}
    t_start = time.monotonic()
    if opts.get("soak"):
        async with started() as rig:
            report["soak"] = await soak(rig, opts, log)
    else:
        log.info("interop parsing rates (%.1fs each)", opts["interop_seconds"])
        report["interop"] = interop_bench.run(opts["interop_seconds"])
        async with started() as rig:
            log.info("servers up: Temporal %s (SQLite), PostgreSQL :%d", rig.temporal_address, rig.pg.port)
            report.update(await measure_all(rig, opts, log))
        summarise(report)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - t_start, 1)
    return report


async def soak(rig: Rig, opts: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    import tempfile

    from bench.soak import run_soak

    log.info("soak: %.0f s at %.0f msg/s (listener + worker with dispatcher as processes)", opts["soak"],
             opts["soak_rate"])
    pids = {"temporal": rig.temporal_pid, "postgres": rig.pg.proc.pid if rig.pg.proc else None}
    with tempfile.TemporaryDirectory(prefix="lifeline-soak-") as tmp:
        return await run_soak(await rig.new_database(), rig.temporal_address, _keys(), Path(tmp),
                              seconds=opts["soak"], rate=opts["soak_rate"], client=rig.client, server_pids=pids,
                              sample_every=max(5.0, min(60.0, opts["soak"] / 60)))


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
    parser.add_argument("--no-ordered", action="store_true", help="skip the ordered-by-PID-3.1 delivery runs")
    parser.add_argument("--patients", type=int, help="PID-3.1 values (lanes) of the first ordered run (500)")
    parser.add_argument("--few-patients", type=int, help="PID-3.1 values of the second ordered run (30)")
    parser.add_argument("--steady10-seconds", type=float, help="length of the 10 msg/s latency run")
    parser.add_argument("--steady30-seconds", type=float, help="length of the 30 msg/s latency run")
    parser.add_argument("--closing-runs", type=int, help="runs to hl7apy's closing MLLPServer")
    parser.add_argument("--closing-messages", type=int, help="messages per closing-peer run")
    parser.add_argument("--scaleout", type=int, help="messages for the 2+2+2-process scale-out run (0: skip)")
    parser.add_argument("--soak", type=float, help="run only the soak, for this many seconds (e.g. 3600)")
    parser.add_argument("--soak-rate", type=float, help="messages per second during the soak (20)")
    parser.add_argument("--compare-regular", action="store_true",
                        help="also measure the regular-activity ceiling and delivery shape")
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
    opts["compare_regular"] = ns.compare_regular

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("bench")
    log.setLevel(logging.INFO)
    report = asyncio.run(run(opts, log))

    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_soak(report) if opts.get("soak") else render_markdown(report)
    (ns.out / "report.md").write_text(markdown)
    if opts.get("soak"):
        from bench.charts import soak_charts

        for name, svg in soak_charts(report["soak"]["samples"]).items():
            (ns.out / name).write_text(svg)
    if ns.docs is not None:
        ns.docs.write_text(markdown)
    print(markdown)
    print(f"wrote {ns.out / 'report.json'} and {ns.out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
