"""The bench harness end to end at toy sizes against the session's servers: every report key, every number > 0.

No timing is asserted: these sizes measure nothing, they prove `make bench` works.
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio.client import Client

from bench import interop_bench
from bench.__main__ import measure_all, summarise
from bench.report import render_markdown
from bench.stack import Rig
from infra.devstack import EmbeddedPostgres

TINY: dict[str, Any] = {
    "messages": 20, "ceiling": 20, "connections": 4, "steady_rate": 20.0, "steady_seconds": 1.0,
    "burst": 40, "idle_connections": 50, "interop_seconds": 0.05, "no_ordered": False, "patients": 10,
    "few_patients": 3, "steady10_seconds": 1.0, "steady30_seconds": 1.0, "closing_runs": 1, "closing_messages": 10,
    "scaleout": 0,
}


def _positive(report: dict[str, Any], *path: str) -> float:
    value: Any = report
    for key in path:
        assert key in value, f"missing {'.'.join(path)}"
        value = value[key]
    assert isinstance(value, int | float) and value > 0, f"{'.'.join(path)} = {value!r}"
    return float(value)


async def test_bench_harness_at_toy_sizes(pg_server: EmbeddedPostgres, temporal_client: Client) -> None:
    rig = Rig(pg_server, temporal_client, temporal_address="session")
    report = await measure_all(rig, TINY, logging.getLogger("bench"))
    report["interop"] = interop_bench.run(TINY["interop_seconds"], compare=False)
    report.update(machine={"date": "today", "nproc": 2, "cpu_model": "", "memory_gb": 1, "python": "3",
                           "platform": "", "loadavg_at_start": [0.0]},
                  options={"quick": False}, total_seconds=1.0)
    summarise(report)

    for run in ("ceiling", "ceiling_after"):
        for key in ("workflows_per_s", "starts_per_s", "activities_per_s"):
            _positive(report, run, key)
        _positive(report, run, "cpu", "ms_per_item_total")
    for run in ("delivery_unordered", "delivery_ordered", "delivery_ordered_few"):
        for key in ("delivered_per_s", "acked_per_s", "workflows_per_s"):
            _positive(report, run, key)
        for stage in ("stored", "routed", "started", "delivered"):
            _positive(report, run, "stages_s", stage)
        _positive(report, run, "ack_ms", "p99")
        assert report[run]["duplicates_at_peer"] == 0
        assert report[run]["stages_s"]["attempts"] == TINY["messages"]
    for variant in ("unordered", "ordered", "ordered_few"):
        _positive(report, "ratio_to_ceiling", variant)
        _positive(report, "cpu_normalised_ratio", variant)
    for load in ("steady", "burst"):
        for p in ("p50", "p95", "p99"):
            _positive(report, "ack_latency", load, "ack_ms", p)
    _positive(report, "ack_latency", "steady", "send_to_delivered_ms", "p50")
    _positive(report, "ack_latency", "burst", "acked_per_s")
    assert report["listener_rss"]["held_by_listener"] == TINY["idle_connections"]
    assert report["listener_rss"]["ack_code_while_holding"] == "AA"
    for key in ("rss_before_mb", "rss_after_mb"):
        _positive(report, "listener_rss", key)
    for rate in ("10", "30"):
        _positive(report, "steady", rate, "send_to_delivered_ms", "p95")
        assert report["steady"][rate]["all_delivered"]
    assert report["closing_peer"]["duplicates"] == report["closing_peer"]["lost"] == 0
    _positive(report, "interop", "tolerant_parse_validate_ack", "msg_per_s")
    assert "# Lifeline delivery benchmark" in render_markdown(report)
