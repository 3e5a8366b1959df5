"""The Temporal worker process: every workflow and activity, with their clients built once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.approvals import ApprovalActivities
from activities.delivery import DeliveryActivities
from activities.diagnostics import DiagnosticsActivities
from activities.engines import build_adapter
from activities.engines.base import EngineAdapter, EngineError
from activities.metrics import CaseActivities, MetricsActivities
from activities.mllp import MllpSender
from activities.oncall import Links, Notifier
from activities.remediation import RemediationActivities
from activities.sla import SlaActivities
from infra import tracing
from infra.config import LifelineConfig
from infra.crypto import data_converter
from infra.db import create_pool
from infra.live import ConfigSource, start_source
from infra.settings import Settings
from workers.dispatcher import Dispatcher
from workers.monitor import ensure_schedule
from workers.reconnect import until_up
from workers.webhooks import drainer_for
from workflows.delivery import DeliveryWorkflow
from workflows.engine_restart import EngineRestartWorkflow
from workflows.monitor import FlowMonitorWorkflow
from workflows.remediation import RemediationCaseWorkflow
from workflows.replay import ReplayWorkflow

log = logging.getLogger("lifeline.worker")

WORKFLOWS: Sequence[type] = (DeliveryWorkflow, ReplayWorkflow, RemediationCaseWorkflow, EngineRestartWorkflow,
                             FlowMonitorWorkflow)


def activities_for(delivery: DeliveryActivities, diagnostics: DiagnosticsActivities | None = None,
                   remediation: RemediationActivities | None = None, metrics: MetricsActivities | None = None,
                   cases: CaseActivities | None = None, sla: SlaActivities | None = None,
                   approvals: ApprovalActivities | None = None) -> list[Any]:
    acts: list[Any] = [delivery.deliver, delivery.dead_letter, delivery.prepare_replay]
    if approvals is not None:
        acts.append(approvals.verify_approval)
    if diagnostics is not None:
        acts += [diagnostics.diagnose, diagnostics.record_case, diagnostics.record_resolution]
    if remediation is not None:
        acts += [remediation.run_action, remediation.measure, remediation.engine_status, remediation.engine_control,
                 remediation.workflow_running, remediation.notify, remediation.audit_event]
    if metrics is not None:
        acts.append(metrics.snapshot)
    if cases is not None:
        acts.append(cases.open_or_feed_case)
    if sla is not None:
        acts.append(sla.evaluate_sla)
    return acts


def engine_adapters(config: LifelineConfig, **deps: Any) -> dict[str, EngineAdapter]:
    """One adapter per configured engine (deps: http, pool, config); an engine that fails is left out."""
    adapters: dict[str, EngineAdapter] = {}
    for engine in config.engines:
        try:
            adapters[engine.name] = build_adapter(engine, **{"config": config, **deps})
        except EngineError as exc:
            log.warning("engine %s: no adapter (%s)", engine.name, exc)
    return adapters


def follow_config(source: ConfigSource, *holders: Any) -> None:
    """Monitor, SLA and remediation read the current version too: swap their `config` on every change."""
    def swap(config: LifelineConfig) -> None:
        for holder in holders:
            if hasattr(holder, "config"):
                holder.config = config

    source.subscribe(swap)


async def connect_temporal(settings: Settings, *, refuse_plain: bool = False) -> Client:
    """A client whose payloads go through the codec; a worker's refuses unencrypted payloads (refuse_plain)."""
    cipher = settings.cipher("codec")
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                data_converter=data_converter(cipher, refuse_plain=refuse_plain),
                                interceptors=tracing.client_interceptors())


# Worker tuning shared with bench/ (its bare-Temporal ceiling runs a worker with exactly these settings).
WORKER_OPTIONS: dict[str, Any] = {"max_concurrent_activities": 200}
# The ordered-delivery worker: a lane runs one delivery at a time, so fewer slots serve many lanes.
ORDERED_WORKER_OPTIONS: dict[str, Any] = {"max_concurrent_activities": 50}


def build_worker(client: Client, task_queue: str, delivery: DeliveryActivities, *,
                 diagnostics: DiagnosticsActivities | None = None, remediation: RemediationActivities | None = None,
                 metrics: MetricsActivities | None = None, cases: CaseActivities | None = None,
                 sla: SlaActivities | None = None, approvals: ApprovalActivities | None = None,
                 **kwargs: Any) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=list(WORKFLOWS),
                  activities=activities_for(delivery, diagnostics, remediation, metrics, cases, sla, approvals),
                  **{**WORKER_OPTIONS, **kwargs})


async def run_worker(settings: Settings, config: LifelineConfig) -> None:
    pool = await until_up("PostgreSQL", lambda: create_pool(settings.database_url, min_size=2,
                                                            max_size=settings.database_pool_max,
                                                            role=settings.database_role))
    # A signal sent without the codec (e.g. `temporal workflow signal` without --codec-endpoint) is dropped.
    client = await until_up("Temporal", lambda: connect_temporal(settings, refuse_plain=True))
    store_cipher = settings.cipher("store")
    stop = asyncio.Event()
    source, following = await start_source(config, pool, settings.database_url, stop)
    config = source.current
    async with httpx.AsyncClient() as http:
        mllp = MllpSender()
        # The lane hand-off (and, with worker_dispatch, the whole outbox) starts deliveries from this process with
        # this worker's client, so they may start eagerly.
        dispatcher = Dispatcher(pool, client, config, store_cipher, settings.task_queue,
                                lane_key=settings.lane_hmac_key(), source=source, eager=True,
                                ordered_task_queue=settings.ordered_task_queue)
        delivery = DeliveryActivities(pool, store_cipher, config, mllp, http, source=source,
                                      handoff=dispatcher.start_next)
        adapters = engine_adapters(config, http=http, pool=pool)

        async def client_provider() -> Client:
            return client

        diagnostics = DiagnosticsActivities(pool, config, adapters)
        notifier = Notifier(pool, config.oncall, http, Links(settings.public_url, settings.temporal_ui_url,
                                                             settings.temporal_namespace))
        remediation = RemediationActivities(pool, client_provider, config, adapters, http, settings.task_queue,
                                            notifier)
        metrics = MetricsActivities(pool, config, adapters)
        worker_sla = SlaActivities(pool, config, client, settings.task_queue, http, notifier)
        worker = build_worker(client, settings.task_queue, delivery, diagnostics=diagnostics,
                              remediation=remediation, metrics=metrics,
                              cases=CaseActivities(client, settings.task_queue),
                              sla=worker_sla,
                              approvals=ApprovalActivities(pool, settings.jwt_secret.get_secret_value(),
                                                           settings.jwt_issuer))
        await until_up("Temporal", lambda: ensure_schedule(client, settings, config))
        follow_config(source, diagnostics, remediation, metrics, worker_sla)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Ordered deliveries on their own queue (Settings.ordered_queue): the same workflows and activities, own slots.
        ordered = (build_worker(client, settings.ordered_task_queue, delivery, **ORDERED_WORKER_OPTIONS)
                   if settings.ordered_task_queue else None)
        log.info("worker polling task queue %s%s on %s", settings.task_queue,
                 f" and {settings.ordered_task_queue}" if ordered is not None else "", settings.temporal_address)
        async with worker, (ordered if ordered is not None else contextlib.nullcontext()):
            dispatching = None
            if settings.worker_dispatch:
                log.info("dispatcher started in the worker (eager start; sweep every %.1fs)",
                         settings.dispatcher_sweep_seconds)
                dispatching = asyncio.create_task(
                    dispatcher.run(settings.database_url, settings.dispatcher_sweep_seconds, stop))
            # Webhook subscriptions: every worker runs a drainer; each subscription is drained by one at a time.
            draining = asyncio.create_task(drainer_for(settings, pool).run(settings.database_url, stop))
            await stop.wait()
            if dispatching is not None:
                await dispatching
            await draining
        await mllp.close()
        for adapter in adapters.values():
            await adapter.close()
    await following
    await pool.close()
