"""FlowMonitorWorkflow end to end: a down MLLP peer opens one case within 30 s; a second run feeds it.
The monitor schedule is created once and updated idempotently."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from temporalio.client import Client, ScheduleIntervalSpec
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.metrics import CaseActivities, MetricsActivities
from infra.config import LifelineConfig, Monitor
from infra.crypto import Cipher
from infra.devstack import free_port
from tests.conftest import make_settings
from tests.delivery.harness import Engine, adt, config_for, running, send_mllp, wait_for
from tests.monitor.standin import StandInCaseWorkflow
from workers.monitor import PAUSED_BY_CONFIG, ensure_schedule, monitor_input
from workflows.contract import (
    MONITOR_SCHEDULE_ID,
    QUERY_STATE,
    SA_CASE_KIND,
    CaseState,
    FlowMonitorInput,
    FlowMonitorResult,
    case_workflow_id,
)
from workflows.monitor import FlowMonitorWorkflow

CASE_ID = case_workflow_id("default", "destination_down", "destination:lab")


def monitor_worker(client: Client, pool: asyncpg.Pool, config: LifelineConfig, task_queue: str) -> Worker:
    metrics = MetricsActivities(pool, config)
    cases = CaseActivities(client, task_queue)
    return Worker(client, task_queue=task_queue, workflows=[FlowMonitorWorkflow, StandInCaseWorkflow],
                  activities=[metrics.snapshot, cases.open_or_feed_case])


async def run_monitor(client: Client, task_queue: str, inp: FlowMonitorInput) -> FlowMonitorResult:
    return await client.execute_workflow(
        "FlowMonitorWorkflow", inp, id=f"monitor:test:{uuid.uuid4().hex[:8]}", task_queue=task_queue,
        result_type=FlowMonitorResult, execution_timeout=timedelta(seconds=60))


async def test_down_peer_opens_one_case_and_feeds_it(temporal_client: Client, task_queue: str, pool: asyncpg.Pool,
                                                     db_url: str, store_cipher: Cipher) -> None:
    config = config_for(free_port())  # nothing listens there: connection refused
    mon_tq = f"{task_queue}-mon"
    inp = monitor_input(config, make_settings(task_queue=mon_tq))
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    case = temporal_client.get_workflow_handle(CASE_ID)
    try:
        async with running(engine), monitor_worker(temporal_client, pool, config, mon_tq):
            assert await send_mllp(engine.mllp_port, [adt("MON1", "MRN1")]) == ["AA"]
            await wait_for(lambda: pool.fetchval("select count(*) from delivery_attempts"), timeout=20)
            first_failure = await pool.fetchval("select min(at) from delivery_attempts")

            result = await run_monitor(temporal_client, mon_tq, inp)
            assert CASE_ID in result.cases
            desc = await case.describe()
            assert (desc.start_time - first_failure).total_seconds() <= 30
            assert desc.task_queue == mon_tq and desc.workflow_type == "RemediationCaseWorkflow"
            assert desc.typed_search_attributes.get(SearchAttributeKey.for_keyword(SA_CASE_KIND)) == "destination_down"
            state = await case.query(QUERY_STATE, result_type=CaseState)
            assert (state.kind, state.subject, state.mode) == ("destination_down", "destination:lab", "semi-auto")
            [ev] = state.evidence
            assert ev.kind == "destination_down" and ev.signature == "refused" and ev.metrics["backlog"] >= 1
            assert "MRN1" not in ev.summary and "DOE" not in ev.summary

            # Invariant 7: the second run feeds the same case (same run) instead of opening another.
            again = await run_monitor(temporal_client, mon_tq, inp)
            assert CASE_ID in again.cases
            assert (await case.describe()).run_id == desc.run_id
            await wait_for(lambda: _evidence_count(case), timeout=10)
            state = await case.query(QUERY_STATE, result_type=CaseState)
            assert len(state.evidence) == 2 and {e.kind for e in state.evidence} == {"destination_down"}
    finally:
        with contextlib.suppress(RPCError):  # the case may never have started when the test failed early
            await case.terminate("test over")


async def _evidence_count(case: object) -> bool:
    state = await case.query(QUERY_STATE, result_type=CaseState)  # type: ignore[attr-defined]
    return len(state.evidence) >= 2


async def test_healthy_flow_opens_nothing(temporal_client: Client, task_queue: str, pool: asyncpg.Pool) -> None:
    config = config_for(free_port())
    async with monitor_worker(temporal_client, pool, config, task_queue):
        result = await run_monitor(temporal_client, task_queue, FlowMonitorInput(case_task_queue=task_queue))
    assert result.findings == 0 and result.cases == [] and result.observed_at


@pytest.fixture
async def schedule_cleanup(temporal_client: Client) -> AsyncIterator[None]:
    # Other tests run real `lifeline worker` processes against this server, and each creates the schedule for
    # its own task queue: start from none, so recent actions are this test's.
    with contextlib.suppress(RPCError):
        await temporal_client.get_schedule_handle(MONITOR_SCHEDULE_ID).delete()
    yield
    with contextlib.suppress(RPCError):  # nothing to clean when creation failed
        await temporal_client.get_schedule_handle(MONITOR_SCHEDULE_ID).delete()


async def test_schedule_is_created_once_and_updated_idempotently(
        temporal_client: Client, task_queue: str, pool: asyncpg.Pool, schedule_cleanup: None) -> None:
    settings = make_settings(task_queue=task_queue)
    config = config_for(free_port())
    await ensure_schedule(temporal_client, settings, config)
    await ensure_schedule(temporal_client, settings, config)  # a second worker start: no error, no second one
    ids = [s.id async for s in await temporal_client.list_schedules() if s.id == MONITOR_SCHEDULE_ID]
    # Visibility can lag; describe is authoritative.
    assert len(ids) <= 1
    handle = temporal_client.get_schedule_handle(MONITOR_SCHEDULE_ID)
    desc = await handle.describe()
    assert desc.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(seconds=5))]
    assert desc.schedule.policy.overlap.name == "SKIP"
    action = desc.schedule.action
    assert action.workflow == "FlowMonitorWorkflow" and action.task_queue == task_queue  # type: ignore[attr-defined]
    assert not desc.schedule.state.paused

    # A changed interval is applied to the same schedule.
    slower = config.model_copy(update={"monitor": Monitor(interval=timedelta(seconds=30))})
    await ensure_schedule(temporal_client, settings, slower)
    desc = await handle.describe()
    assert desc.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(seconds=30))]

    # An operator's pause survives a worker restart; monitor.enabled false pauses it, true resumes it.
    await handle.pause(note="maintenance window")
    await ensure_schedule(temporal_client, settings, config)
    assert (await handle.describe()).schedule.state.paused
    off = config.model_copy(update={"monitor": Monitor(enabled=False)})
    await ensure_schedule(temporal_client, settings, off)
    state = (await handle.describe()).schedule.state
    assert state.paused and state.note == PAUSED_BY_CONFIG
    await ensure_schedule(temporal_client, settings, config)
    assert not (await handle.describe()).schedule.state.paused

    # The scheduled action really runs the monitor.
    async with monitor_worker(temporal_client, pool, config, task_queue):
        await handle.trigger()
        await wait_for(lambda: _recent_action(handle), timeout=20)
        wf_id = (await handle.describe()).info.recent_actions[-1].action.workflow_id  # type: ignore[attr-defined]
        result = await temporal_client.get_workflow_handle(wf_id, result_type=FlowMonitorResult).result()
    assert result.observed_at and wf_id.startswith("monitor:flow")


async def _recent_action(handle: object) -> bool:
    desc = await handle.describe()  # type: ignore[attr-defined]
    return bool(desc.info.recent_actions)
