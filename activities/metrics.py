"""The flow monitor's metrics snapshot: destinations and channels from PostgreSQL, engine channels via adapters.

Also keeps the monitor's small state (previous engine stats, EWMA throughput baselines) in the
`monitor_engine_stats` / `monitor_baselines` tables, so the workflow and detectors stay pure.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from activities.engines.base import EngineAdapter, EngineChannel
from infra.config import Engine, LifelineConfig
from infra.store import db_now, monitor, system_tx
from infra.store.files import file_source_metrics
from infra.store.flow_rates import destination_rates
from workflows.contract import (
    CONNECTION_ERROR_CLASSES,
    QUEUE_HISTORY_MAX,
    REJECT_ERROR_CLASSES,
    SA_CASE_KIND,
    SA_CHANNEL,
    SA_DESTINATION,
    SA_ORG,
    SIGNAL_EVIDENCE,
    Baseline,
    ChannelMetrics,
    DestinationMetrics,
    EngineChannelMetrics,
    FileSourceMetrics,
    MonitorThresholds,
    OpenCaseInput,
    OpenCaseResult,
    SenderRejects,
    Snapshot,
    SnapshotInput,
    case_workflow_id,
)
from workflows.detectors import ewma, send_limit_ms

log = logging.getLogger("lifeline.metrics")

AdaptersProvider = Callable[[Engine], EngineAdapter]
CASE_WORKFLOW = "RemediationCaseWorkflow"
if TYPE_CHECKING:
    from infra.store import Conn

_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
SEND_BUCKET = "send_p95"  # monitor_baselines bucket of a destination's normal send time


def reject_signature(error_class: str, peer_answer: str | None) -> str:
    """ack_reject, or http_4xx:<status> when the answer names one."""
    m = _HTTP_STATUS.search(peer_answer or "")
    return f"{error_class}:{m.group(1)}" if error_class == "http_4xx" and m else error_class


def hour_buckets(at: datetime, tz: str) -> tuple[str, str]:
    """(hour of week, hour of day) bucket keys in the monitor's timezone; weeks start on Monday."""
    local = at.astimezone(ZoneInfo(tz))
    return f"how:{local.weekday() * 24 + local.hour}", f"hod:{local.hour}"


class MetricsActivities:
    """Built once per worker. `adapters_provider` is either the worker's adapters by engine name (shared, closed
    by the worker) or a callable building the adapter for an engine config (built once, closed by close())."""

    def __init__(self, pool: asyncpg.Pool, config: LifelineConfig,
                 adapters_provider: AdaptersProvider | Mapping[str, EngineAdapter] | None = None) -> None:
        self.pool = pool
        self.config = config
        self.adapters_provider = adapters_provider
        self._adapters: dict[str, EngineAdapter] = {}

    async def close(self) -> None:
        """Close the adapters this object built (not shared ones)."""
        for adapter in self._adapters.values():
            try:
                await adapter.close()
            except Exception as exc:  # closing is best effort at shutdown
                log.info("closing engine adapter failed: %s", type(exc).__name__)
        self._adapters.clear()

    @activity.defn(name="snapshot")
    async def snapshot(self, inp: SnapshotInput) -> Snapshot:
        """One consistent look at the flow: per destination, per channel, per engine channel."""
        window = float(inp.window_s or self.config.monitor.window.total_seconds())
        async with system_tx(self.pool, "monitor_snapshot") as conn:
            now: datetime = await db_now(conn)
            destinations = await self._destinations(conn, now, window)
            channels = await self._channels(conn, now, window)
            baselines = await self._baselines(conn, now, channels)
            file_sources = [FileSourceMetrics(**r) for r in await file_source_metrics(conn, window)]
        engine_channels = await self._engines(now)
        return Snapshot(observed_at=now.isoformat(), window_s=window, destinations=destinations,
                        channels=channels, engine_channels=engine_channels, baselines=baselines,
                        file_sources=file_sources)

    # -- destinations ------------------------------------------------------------------------------------------

    async def _destinations(self, conn: Conn, now: datetime, window: float) -> list[DestinationMetrics]:
        conn_classes = list(CONNECTION_ERROR_CLASSES)
        rejects = list(REJECT_ERROR_CLASSES)
        out: dict[str, DestinationMetrics] = {
            d.name: DestinationMetrics(name=d.name, org_id=d.org) for d in self.config.destinations}

        def get(name: str, org: str | None = None) -> DestinationMetrics:
            return out.setdefault(name, DestinationMetrics(name=name, org_id=org or "default"))

        for r in await monitor.dest_backlog(conn, now):
            m = get(r["destination"], r["org_id"])
            m.backlog, m.oldest_pending_age_s = r["backlog"], max(0.0, r["oldest"])
        for r in await monitor.dest_counts(conn, now, window, rejects):
            m = get(r["destination"])
            m.successes, m.failures, m.rejects, m.p95_send_ms = (r["successes"], r["failures"], r["rejects"],
                                                                 r["p95_send"])
        for r in await monitor.dest_last_error(conn, now, window):
            get(r["destination"]).last_error_class = r["error_class"] or ""
        for r in await monitor.dest_last_reject(conn, now, window, rejects):
            get(r["destination"]).reject_signature = reject_signature(r["error_class"], r["peer_answer"])
        for r in await monitor.dest_streak(conn, now, window, conn_classes):
            get(r["destination"]).consecutive_connection_failures = r["streak"]
        for r in await monitor.dest_latency(conn, now, window):
            m = get(r["destination"])
            m.latency_samples, m.p95_latency_ms = r["n"], r["p95"]
        span = self.config.monitor.backlog.forecast_span.total_seconds()
        if span > 0:
            for m in out.values():
                m.rate_span_s = span
            for name, (arrived, drained) in (await destination_rates(conn, now, span)).items():
                m = get(name)
                m.arrived_per_s, m.drained_per_s, m.rate_span_s = round(arrived, 3), round(drained, 3), span
        blocking = [d.name for d in self.config.destinations if d.ordered and d.on_dead_letter == "block"]
        if blocking:
            for r in await monitor.dest_blocked(conn, blocking):
                m = get(r["destination"])
                m.lanes_blocked, m.blocked_waiting = r["lanes"], r["waiting"]
        await self._send_normals(conn, now, list(out.values()))
        return [out[k] for k in sorted(out)]

    async def _send_normals(self, conn: Conn, now: datetime, metrics: list[DestinationMetrics]) -> None:
        """Each destination's normal send time as it was (for the slow-peer check), then this snapshot folded in —
        only when it is healthy (enough sends, under the limit), so a slow spell never becomes the normal. Kept in
        monitor_baselines under `destination:<name>` / `send_p95`; at most once per half interval, like throughput.
        """
        lat = self.config.monitor.latency_degraded
        t = MonitorThresholds(send_p95_ms=lat.send_p95.total_seconds() * 1000, send_factor=lat.send_factor,
                              send_floor_ms=lat.send_floor.total_seconds() * 1000,
                              send_normal_min_samples=lat.send_normal_samples)
        keys = {f"destination:{m.name}": m for m in metrics}
        if not keys:
            return
        rows = {r["channel"]: r for r in await monitor.baselines(conn, list(keys), [SEND_BUCKET])}
        min_gap = timedelta(seconds=self.config.monitor.interval.total_seconds() / 2)
        upd: list[tuple[str, str, float, int]] = []
        for key, m in keys.items():
            r = rows.get(key)
            if r is not None:
                m.normal_send_ms, m.normal_send_samples = float(r["mean"]), int(r["samples"])
            if m.successes < lat.send_min_samples or m.p95_send_ms > send_limit_ms(m, t):
                continue
            if r is not None and now - r["updated_at"] < min_gap:
                continue
            mean, n = ewma(m.normal_send_ms, m.normal_send_samples, m.p95_send_ms, lat.send_alpha)
            upd.append((key, m.org_id, mean, n))
        if upd:
            await monitor.upsert_baselines(conn, [u[0] for u in upd], [SEND_BUCKET] * len(upd),
                                           [u[1] for u in upd], [u[2] for u in upd], [u[3] for u in upd], now)

    # -- channels ----------------------------------------------------------------------------------------------

    def _orgs(self) -> list[str]:
        return sorted({c.org for c in self.config.channels} | {d.org for d in self.config.destinations}
                      | {"default"})

    async def _channels(self, conn: Conn, now: datetime, window: float) -> list[ChannelMetrics]:
        out: dict[str, ChannelMetrics] = {c.name: ChannelMetrics(name=c.name, org_id=c.org)
                                          for c in self.config.channels}
        orgs = self._orgs()
        for r in await monitor.channel_counts(conn, now, window, orgs):
            m = out.setdefault(r["channel"], ChannelMetrics(name=r["channel"], org_id=r["org_id"]))
            m.accepted += r["accepted"]
            m.rejected += r["rejected"]
        for r in await monitor.sender_rejects(conn, now, window, orgs):
            m = out.setdefault(r["channel"], ChannelMetrics(name=r["channel"]))
            m.senders.append(SenderRejects(sender=r["sender"], rejected=r["n"], top_code=r["top_code"] or ""))
        for m in out.values():
            m.accepted_per_min = m.accepted / (window / 60.0)
        return [out[k] for k in sorted(out)]

    async def _baselines(self, conn: Conn, now: datetime,
                         channels: list[ChannelMetrics]) -> list[Baseline]:
        """The current hour's baselines as they were, then this snapshot folded into them (EWMA).

        A bucket updated less than half an interval ago is not updated again, so a retried activity or an
        extra manual run does not count one observation twice.
        """
        mon = self.config.monitor
        alpha = mon.throughput_drop.alpha
        min_gap = timedelta(seconds=mon.interval.total_seconds() / 2)
        buckets = hour_buckets(now, mon.timezone)
        names = [c.name for c in channels]
        rows = await monitor.baselines(conn, names, list(buckets))
        known = {(r["channel"], r["bucket"]): r for r in rows}
        before: list[Baseline] = []
        upd_channel: list[str] = []
        upd_bucket: list[str] = []
        upd_org: list[str] = []
        upd_mean: list[float] = []
        upd_samples: list[int] = []
        for c in channels:
            for bucket in buckets:
                r = known.get((c.name, bucket))
                mean, samples = (float(r["mean"]), int(r["samples"])) if r else (0.0, 0)
                before.append(Baseline(channel=c.name, bucket=bucket, mean=mean, samples=samples))
                if r is not None and now - r["updated_at"] < min_gap:
                    continue
                new_mean, new_samples = ewma(mean, samples, c.accepted_per_min, alpha)
                upd_channel.append(c.name)
                upd_bucket.append(bucket)
                upd_org.append(c.org_id)
                upd_mean.append(new_mean)
                upd_samples.append(new_samples)
        if upd_channel:
            await monitor.upsert_baselines(conn, upd_channel, upd_bucket, upd_org, upd_mean, upd_samples, now)
        return before

    # -- engine channels ---------------------------------------------------------------------------------------

    def _adapter(self, engine: Engine) -> EngineAdapter:
        provider = self.adapters_provider
        if isinstance(provider, Mapping):
            shared = provider.get(engine.name)
            if shared is None:
                raise RuntimeError(f"no adapter for engine {engine.name} in this worker (see the worker log)")
            return shared
        adapter = self._adapters.get(engine.name)
        if adapter is None:
            if provider is None:
                raise RuntimeError("no engine adapters configured in this worker")
            adapter = provider(engine)
            self._adapters[engine.name] = adapter
        return adapter

    async def _read_engine(self, engine: Engine) -> list[EngineChannelMetrics]:
        try:
            adapter = self._adapter(engine)
            channels = await asyncio.wait_for(adapter.list_channels(), engine.timeout.total_seconds() + 5)
        except Exception as exc:  # any failure of an engine is a finding to report, never a failed snapshot
            text = f"{type(exc).__name__}: {exc}"[:300]
            log.info("engine %s unreadable: %s", engine.name, type(exc).__name__)
            ids = engine.channels or ["*"]
            return [EngineChannelMetrics(engine=engine.name, channel_id=c, name=c, org_id=engine.org,
                                         state="unknown", error=text) for c in ids]
        return [_engine_metrics(engine, ch) for ch in channels
                if not engine.channels or ch.id in engine.channels or ch.name in engine.channels]

    async def _engines(self, now: datetime) -> list[EngineChannelMetrics]:
        if not self.config.engines:
            return []
        results = await asyncio.gather(*(self._read_engine(e) for e in self.config.engines))
        metrics = [m for group in results for m in group]
        await self._fold_engine_history(now, metrics)
        return metrics

    async def _fold_engine_history(self, now: datetime, metrics: list[EngineChannelMetrics]) -> None:
        """Error deltas and queue history against the previous snapshot; unknown states are not recorded."""
        stale = timedelta(seconds=self.config.monitor.interval.total_seconds() * 10)
        known = [m for m in metrics if m.state != "unknown"]
        if not known:
            return
        async with system_tx(self.pool, "monitor_snapshot") as conn:
            rows = await monitor.lock_engine_stats(conn, sorted({m.engine for m in known}))
            prev = {(r["engine"], r["channel_id"]): r for r in rows}
            since: dict[tuple[str, str], datetime] = {}
            for m in known:
                p = prev.get((m.engine, m.channel_id))
                history: list[int] = []
                since[(m.engine, m.channel_id)] = now
                if p is not None and now - p["observed_at"] <= stale:
                    history = [int(x) for x in p["queued_history"]]
                    # Counters that went down were reset (engine restart): everything counted since is new.
                    m.errors_delta = m.errors - p["errors"] if m.errors >= p["errors"] else m.errors
                    if p["state"] == m.state:  # still in the state it was in: how long, for the stuck check
                        first = p["state_since"] or p["observed_at"]
                        since[(m.engine, m.channel_id)] = first
                        m.state_age_s = max(0.0, (now - first).total_seconds())
                m.queued_history = [*history, m.queued][-QUEUE_HISTORY_MAX:]
            await monitor.upsert_engine_stats(conn, [
                (m.engine, m.channel_id, m.org_id, now, m.state, m.queued, m.errors, m.queued_history,
                 since[(m.engine, m.channel_id)])
                for m in known])


def _engine_metrics(engine: Engine, ch: EngineChannel) -> EngineChannelMetrics:
    detail: dict[str, Any] = ch.detail or {}
    return EngineChannelMetrics(engine=engine.name, channel_id=ch.id, name=ch.name, org_id=engine.org,
                                state=str(ch.state), raw_state=ch.raw_state, queued=int(ch.queued),
                                errors=int(ch.errors), error=str(detail.get("error", ""))[:300])


class CaseActivities:
    """Opens remediation cases for the monitor; built once per worker with its Temporal client."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    @activity.defn(name="open_or_feed_case")
    async def open_or_feed_case(self, inp: OpenCaseInput) -> OpenCaseResult:
        """Signal-with-start: the open case for (kind, subject) gets the evidence; none open, one starts with it."""
        case = inp.case
        workflow_id = case_workflow_id(case.org_id, case.kind, case.subject)
        pairs = [SearchAttributePair(SearchAttributeKey.for_keyword(SA_CASE_KIND), case.kind),
                 SearchAttributePair(SearchAttributeKey.for_keyword(SA_ORG), case.org_id)]
        scope, _, name = case.subject.partition(":")
        if scope == "destination":
            pairs.append(SearchAttributePair(SearchAttributeKey.for_keyword(SA_DESTINATION), name))
        elif scope == "channel":
            pairs.append(SearchAttributePair(SearchAttributeKey.for_keyword(SA_CHANNEL), name))
        handle = await self.client.start_workflow(
            CASE_WORKFLOW, case, id=workflow_id, task_queue=inp.task_queue or self.task_queue,
            start_signal=SIGNAL_EVIDENCE, start_signal_args=[inp.evidence],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(pairs))
        log.info("case %s fed with %s evidence (%s)", workflow_id, inp.evidence.kind, inp.evidence.signature)
        return OpenCaseResult(workflow_id=workflow_id, run_id=handle.result_run_id or "")
