"""Prometheus exposition: a collector that reads the store at scrape time (any number of Lifeline processes).

Counters are totals over the org's rows (messages, delivery_attempts, dead_letters), so they are the same whichever
API process answers the scrape. Prometheus authenticates like any client: a bearer token with role viewer
(`authorization: {credentials_file: ...}` in prometheus.yml); the token's org scopes the numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import Any

import asyncpg
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from api.deps import ConfigDep, CurrentUser, PoolDep, guarded
from infra.config import LifelineConfig
from infra.store import ops as ops_store
from infra.store import rate_limits, system_tx_count
from infra.store.flow import LATENCY_BUCKETS_S, metric_samples

router = APIRouter(tags=["monitoring"])
CACHE_SECONDS = 5.0


def families(samples: dict[str, Any], destinations: Iterable[str]) -> list[Metric]:
    """Metric families from one store read; configured destinations always get backlog gauges (0 when idle)."""
    accepted = CounterMetricFamily("lifeline_messages_accepted", "Messages accepted (stored and ACKed AA)",
                                   labels=["channel", "message_type"])
    rejected = CounterMetricFamily("lifeline_messages_rejected", "Messages rejected (stored, answered AR/AE)",
                                   labels=["channel", "message_type"])
    for r in samples["messages"]:
        labels = [r["channel"], r["message_type"]]
        if r["accepted"]:
            accepted.add_metric(labels, r["accepted"])
        if r["rejected"]:
            rejected.add_metric(labels, r["rejected"])
    delivered = CounterMetricFamily("lifeline_deliveries_delivered", "Deliveries delivered (successful attempts)",
                                    labels=["destination"])
    failed = CounterMetricFamily("lifeline_delivery_attempts_failed", "Failed send attempts",
                                 labels=["destination", "error_class"])
    ok_by_dest: dict[str, int] = {}
    for r in samples["attempts"]:
        if r["ok"]:
            ok_by_dest[r["destination"]] = ok_by_dest.get(r["destination"], 0) + r["n"]
        else:
            failed.add_metric([r["destination"], r["error_class"]], r["n"])
    for dest, n in sorted(ok_by_dest.items()):
        delivered.add_metric([dest], n)
    dead = CounterMetricFamily("lifeline_dead_letters", "Deliveries dead-lettered", labels=["destination"])
    for r in samples["dead_letters"]:
        dead.add_metric([r["destination"]], r["n"])
    latency = HistogramMetricFamily("lifeline_delivery_latency_seconds", "Accept to delivered, per delivery",
                                    labels=["destination"])
    for r in samples["latency"]:
        buckets = [(repr(float(b)), r[f"le_{i}"]) for i, b in enumerate(LATENCY_BUCKETS_S)] + [("+Inf", r["n"])]
        latency.add_metric([r["destination"]], buckets=buckets, sum_value=r["sum_s"])
    depth = GaugeMetricFamily("lifeline_backlog_depth", "Deliveries pending or started", labels=["destination"])
    oldest = GaugeMetricFamily("lifeline_backlog_oldest_age_seconds", "Age of the oldest pending delivery",
                               labels=["destination"])
    backlog = {r["destination"]: r for r in samples["backlog"]}
    for dest in sorted(set(destinations) | set(backlog)):
        r = backlog.get(dest)
        depth.add_metric([dest], r["depth"] if r else 0)
        oldest.add_metric([dest], max(0.0, r["oldest"] or 0.0) if r else 0.0)
    out: list[Metric] = [accepted, rejected, delivered, failed, dead, latency, depth, oldest]
    if samples["cases"] is not None:
        cases = GaugeMetricFamily("lifeline_cases_open", "Remediation cases not closed", labels=["kind"])
        for r in samples["cases"]:
            cases.add_metric([r["kind"]], r["n"])
        out.append(cases)
    sla = GaugeMetricFamily("lifeline_sla_violations_open", "SLA objectives currently violated",
                            labels=["sla", "objective"])
    for r in samples["sla"]:
        sla.add_metric([r["sla"], r["objective"]], r["n"])
    out.append(sla)
    if samples.get("monitor_last_run") is not None:
        monitor = GaugeMetricFamily("lifeline_monitor_last_run_timestamp_seconds",
                                    "When the flow monitor last took a snapshot (Unix time)")
        monitor.add_metric([], samples["monitor_last_run"].timestamp())
        out.append(monitor)
    return out


class StoreCollector(Collector):
    """Reads the store at scrape time, at most once per CACHE_SECONDS per org (scrapes of several Prometheus)."""

    def __init__(self, config: LifelineConfig, ttl: float = CACHE_SECONDS) -> None:
        self.config = config
        self.ttl = ttl
        self._cache: dict[str, tuple[float, list[Metric]]] = {}
        self._lock = asyncio.Lock()
        self._current: list[Metric] = []

    async def refresh(self, pool: asyncpg.Pool, org_id: str) -> None:
        async with self._lock:
            hit = self._cache.get(org_id)
            if hit is None or time.monotonic() - hit[0] > self.ttl:
                samples = await metric_samples(pool, org_id)
                samples["monitor_last_run"] = await ops_store.monitor_last_run(pool, org_id)
                dests = [d.name for d in self.config.destinations if d.org == org_id]
                hit = (time.monotonic(), families(samples, dests))
                self._cache[org_id] = hit
            self._current = hit[1]

    def collect(self) -> Iterator[Metric]:
        yield from self._current


def _collector(request: Request, config: LifelineConfig) -> StoreCollector:
    collector: StoreCollector | None = getattr(request.app.state, "metrics_collector", None)
    if collector is None:
        collector = request.app.state.metrics_collector = StoreCollector(config)
    return collector


EXPOSITION: dict[int | str, dict[str, Any]] = {200: {"description": "Prometheus text exposition format 0.0.4",
                    "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}, "example":
                                "# TYPE lifeline_deliveries_delivered_total counter\n"
                                "lifeline_deliveries_delivered_total{destination=\"lab\"} 3.0\n"}}}}


@router.get("/metrics", response_class=Response, **guarded("viewer", responses=EXPOSITION))
async def metrics(request: Request, pool: PoolDep, config: ConfigDep, user: CurrentUser) -> Response:
    """Prometheus text exposition of the caller's org, read from the store (cached 5 s)."""
    collector = _collector(request, config)
    await collector.refresh(pool, user.org)
    registry = CollectorRegistry(auto_describe=False)
    cross = CounterMetricFamily("lifeline_store_cross_org_transactions",
                                "Transactions of this API process that read across orgs (system_tx), by purpose",
                                labels=["purpose"])
    for purpose, n in sorted(system_tx_count.items()):
        cross.add_metric([purpose], n)
    refused = CounterMetricFamily("lifeline_rate_limit_refusals",
                                  "Requests refused with 429 by the rate limits (every API process), by scope and role",
                                  labels=["scope", "role"])
    for scope, role, n in await rate_limits.refusals(pool, user.org):
        refused.add_metric([scope, role], n)
    registry.register(_Fixed([*collector.collect(), cross, refused]))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics
