"""The flow monitor's Temporal Schedule: created or updated at worker start, idempotently."""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from infra.config import LifelineConfig
from infra.settings import Settings
from workflows.contract import MONITOR_SCHEDULE_ID, MONITOR_WORKFLOW_ID, FlowMonitorInput, MonitorThresholds

log = logging.getLogger("lifeline.monitor")

# A schedule paused with this note was paused by configuration and is resumed when the config enables it again;
# one paused by an operator (any other note) stays paused across worker restarts.
PAUSED_BY_CONFIG = "paused: monitor.enabled is false in lifeline.yaml"


def thresholds_from(config: LifelineConfig) -> MonitorThresholds:
    m = config.monitor
    detectors = {
        "destination_down": m.destination_down, "destination_rejecting": m.destination_rejecting,
        "backlog": m.backlog, "lane_blocked": m.lane_blocked, "latency_degraded": m.latency_degraded,
        "throughput_drop": m.throughput_drop, "engine_channel_stopped": m.engine_channel_stopped,
        "engine_channel_erroring": m.engine_channel_erroring, "engine_queue_growing": m.engine_queue_growing,
        "malformed_burst": m.malformed_burst, "file_source_failing": m.file_source_failing,
        "file_source_silent": m.file_source_silent, "file_errors_growing": m.file_errors_growing,
    }
    return MonitorThresholds(
        disabled=[k for k, d in detectors.items() if not d.enabled],
        down_consecutive_failures=m.destination_down.consecutive_failures,
        rejecting_rate=m.destination_rejecting.rate,
        rejecting_min_rejects=m.destination_rejecting.min_rejects,
        backlog_depth=m.backlog.depth,
        backlog_oldest_s=m.backlog.oldest_age.total_seconds(),
        latency_p95_ms=m.latency_degraded.p95.total_seconds() * 1000,
        latency_min_samples=m.latency_degraded.min_samples,
        send_p95_ms=m.latency_degraded.send_p95.total_seconds() * 1000,
        send_factor=m.latency_degraded.send_factor,
        send_floor_ms=m.latency_degraded.send_floor.total_seconds() * 1000,
        send_min_samples=m.latency_degraded.send_min_samples,
        send_normal_min_samples=m.latency_degraded.send_normal_samples,
        send_limits=send_limits(config),
        throughput_factor=m.throughput_drop.factor,
        throughput_min_samples=m.throughput_drop.min_samples,
        throughput_min_baseline_per_min=m.throughput_drop.min_baseline_per_min,
        engine_stopped_states=list(m.engine_channel_stopped.states),
        engine_stuck_states=list(m.engine_channel_stopped.stuck_states),
        engine_stuck_s=m.engine_channel_stopped.stuck_after.total_seconds(),
        engine_error_delta=m.engine_channel_erroring.error_delta,
        engine_queue_snapshots=m.engine_queue_growing.snapshots,
        engine_queue_min_growth=m.engine_queue_growing.min_growth,
        malformed_rejected=m.malformed_burst.rejected,
        forecast_horizon_s=m.backlog.forecast_horizon.total_seconds(),
        forecast_min_backlog=m.backlog.forecast_min_backlog,
        backlog_age_limits=backlog_age_limits(config),
        file_failures=m.file_source_failing.consecutive_failures,
        file_silent_factor=m.file_source_silent.factor,
        file_silent_min_s=m.file_source_silent.min_silence.total_seconds(),
        file_silent_min_samples=m.file_source_silent.min_samples,
        file_errors_added=m.file_errors_growing.files,
    )


def backlog_age_limits(config: LifelineConfig) -> dict[str, float]:
    """Per destination, the tightest SLA max_backlog_age that names it (the forecast's target)."""
    limits: dict[str, float] = {}
    for sla in config.sla:
        if sla.destination and sla.max_backlog_age is not None:
            s = sla.max_backlog_age.total_seconds()
            limits[sla.destination] = min(s, limits.get(sla.destination, s))
    return limits


def send_limits(config: LifelineConfig) -> dict[str, float]:
    """Per destination, the tightest SLA p95_latency (ms) that names it: a send slower than that is slow anyway."""
    limits: dict[str, float] = {}
    for sla in config.sla:
        if sla.destination and sla.p95_latency is not None:
            ms = sla.p95_latency.total_seconds() * 1000
            limits[sla.destination] = min(ms, limits.get(sla.destination, ms))
    return limits


def monitor_input(config: LifelineConfig, settings: Settings) -> FlowMonitorInput:
    """What every scheduled run gets: thresholds and case defaults, resolved from config once."""
    return FlowMonitorInput(
        window_s=config.monitor.window.total_seconds(), thresholds=thresholds_from(config),
        mode=config.remediation.mode, approval_timeout_s=config.remediation.approval_timeout.total_seconds(),
        case_task_queue=settings.task_queue, evaluate_sla=bool(config.sla),
        settle_s=config.remediation.settle.total_seconds(),
        cooldown_s=config.remediation.cooldown.total_seconds())


def build_schedule(config: LifelineConfig, settings: Settings) -> Schedule:
    interval = config.monitor.interval
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "FlowMonitorWorkflow", monitor_input(config, settings), id=MONITOR_WORKFLOW_ID,
            task_queue=settings.task_queue,
            # A stuck run must not hold the schedule (overlap SKIP) for long.
            execution_timeout=max(interval * 4, timedelta(minutes=1))),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=interval * 2),
        state=ScheduleState(paused=not config.monitor.enabled,
                            note=PAUSED_BY_CONFIG if not config.monitor.enabled else "lifeline flow monitor"),
    )


async def ensure_schedule(client: Client, settings: Settings, config: LifelineConfig) -> None:
    """Create the monitor schedule, or bring an existing one up to date with this config (safe to race)."""
    schedule = build_schedule(config, settings)
    try:
        await client.create_schedule(MONITOR_SCHEDULE_ID, schedule)
        log.info("created schedule %s every %ss", MONITOR_SCHEDULE_ID, config.monitor.interval.total_seconds())
        return
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        if config.monitor.enabled and state.paused and state.note != PAUSED_BY_CONFIG:
            schedule.state = ScheduleState(paused=True, note=state.note)  # an operator paused it: keep it so
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(MONITOR_SCHEDULE_ID).update(update)
    log.info("updated schedule %s every %ss", MONITOR_SCHEDULE_ID, config.monitor.interval.total_seconds())
