"""A whole Lifeline in the test process for the end-to-end healing tests: listener and dispatcher (the delivery
harness), the real worker with every workflow and activity and the real engine adapters, the flow monitor run
from the test every `monitor.interval` (2 s in these tests), and the REST API over the same PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from activities.approvals import ApprovalActivities
from activities.delivery import DeliveryActivities
from activities.diagnostics import DiagnosticsActivities
from activities.engines.base import EngineAdapter
from activities.metrics import CaseActivities, MetricsActivities
from activities.mllp import MllpSender
from activities.remediation import RemediationActivities
from activities.sla import SlaActivities
from infra.config import LifelineConfig, validate_config
from infra.crypto import Cipher
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.delivery.harness import Engine, api_client
from tests.emulators.cloverleaf.hci import FakeCloverleaf
from tests.emulators.mirth import MirthEmulator
from tests.emulators.rhapsody import RhapsodyEmulator
from workers.monitor import monitor_input
from workers.worker import build_worker, engine_adapters
from workflows.contract import QUERY_STATE, CaseState, FlowMonitorInput, FlowMonitorResult

log = logging.getLogger("tests.e2e")

# Detector thresholds as shipped; the loop runs at `interval`, as the schedule would (it also sizes the baseline
# update gap and how old engine history may be); the test starts the runs itself instead of the schedule.
FAST_MONITOR = {"interval": "2s", "window": "5m"}


def e2e_config(dest_port: int, *, mode: str = "semi-auto", settle: str = "2s", ordering: Any = "none",
               retry: dict[str, Any] | None = None, engines: list[dict[str, Any]] | None = None) -> LifelineConfig:
    """One channel adt-in → one MLLP destination lab, optional engines, and short remediation timings."""
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "lab"}]}],
        "destinations": [{
            "name": "lab", "mllp": {"host": "127.0.0.1", "port": dest_port, "ack_timeout": "5s",
                                    "connect_timeout": "2s"},
            "ordering": ordering, "on_dead_letter": "block",
            "retry": retry or {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s",
                               "maximum_attempts": 50}}],
        "engines": engines or [],
        # cooldown 0s: these tests follow a case to its end; the cool-down has its own tests.
        "remediation": {"mode": mode, "approval_timeout": "5m", "settle": settle, "cooldown": "0s"},
        "monitor": FAST_MONITOR,
    }, "e2e")


class MonitorLoop:
    """FlowMonitorWorkflow started directly every `every` seconds with the input the schedule would carry."""

    def __init__(self, client: Client, task_queue: str, inp: FlowMonitorInput, every: float) -> None:
        self.client, self.task_queue, self.inp, self.every = client, task_queue, inp, every
        self.results: list[FlowMonitorResult] = []
        self.errors: list[BaseException] = []
        self.first_seen: dict[str, float] = {}  # case id -> time.time() of the run that first reported it
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> FlowMonitorResult:
        result: FlowMonitorResult = await self.client.execute_workflow(
            "FlowMonitorWorkflow", self.inp, id=f"monitor:e2e:{self.task_queue}:{uuid.uuid4().hex[:8]}",
            task_queue=self.task_queue, result_type=FlowMonitorResult, execution_timeout=timedelta(seconds=60))
        self.results.append(result)
        for case_id in result.cases:
            self.first_seen.setdefault(case_id, time.time())
        return result

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.run_once()
            except Exception as exc:  # a failed run is kept for the test to show; the next one runs anyway
                log.warning("monitor run failed: %s", exc)
                self.errors.append(exc)
            await asyncio.sleep(max(0.0, self.every - (loop.time() - began)))


@dataclass
class Lifeline:
    client: Client
    pool: asyncpg.Pool
    config: LifelineConfig
    task_queue: str
    engine: Engine
    monitor: MonitorLoop
    api: httpx.AsyncClient
    adapters: dict[str, EngineAdapter] = field(default_factory=dict)

    @property
    def mllp_port(self) -> int:
        return self.engine.mllp_port

    async def case(self, case_id: str) -> CaseState | None:
        try:
            state: CaseState | None = await self.client.get_workflow_handle(case_id).query(
                QUERY_STATE, result_type=CaseState)
        except Exception:  # not started yet (RPCError), or no answer to the query yet
            return None
        return state

    async def wait_case(self, case_id: str, until: Callable[[CaseState], bool], timeout: float = 30.0,
                        interval: float = 0.05) -> CaseState:
        deadline = time.monotonic() + timeout
        last: CaseState | None = None
        while time.monotonic() < deadline:
            last = await self.case(case_id)
            if last is not None and until(last):
                return last
            await asyncio.sleep(interval)
        raise AssertionError(f"{case_id}: condition not met in {timeout}s; last state "
                             f"{last.stage if last else None}; history {last.history if last else None}; "
                             f"monitor errors {self.monitor.errors[-3:]}")

    async def case_result(self, case_id: str, timeout: float = 60.0) -> CaseState:
        handle = self.client.get_workflow_handle(case_id, result_type=CaseState)
        result: CaseState = await asyncio.wait_for(handle.result(), timeout)
        return result


async def terminate_running(client: Client, *, task_queue: str | None = None, ids: list[str] | None = None) -> None:
    """Terminate what is still running: on this task queue, or with these ids (left over from another test)."""
    targets = list(ids or [])
    if task_queue:
        with contextlib.suppress(RPCError):
            async for wf in client.list_workflows(f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"):
                targets.append(wf.id)
    for wid in targets:
        with contextlib.suppress(RPCError, WorkflowFailureError):
            await client.get_workflow_handle(wid).terminate("e2e test over")


@contextlib.asynccontextmanager
async def lifeline(client: Client, pool: asyncpg.Pool, db_url: str, store_cipher: Cipher, task_queue: str,
                   config: LifelineConfig, *, clear_ids: list[str] | None = None) -> AsyncIterator[Lifeline]:
    """Start listener, dispatcher, the full worker and the API; the monitor loop is started by the test."""
    await terminate_running(client, ids=clear_ids)
    settings = make_settings(database_url=db_url, task_queue=task_queue)
    engine = Engine(pool, client, config, store_cipher, task_queue, db_url)
    await engine.start(worker=False)
    http = httpx.AsyncClient()
    mllp = MllpSender()
    adapters = engine_adapters(config, http=http, pool=pool)

    async def client_provider() -> Client:
        return client

    worker = build_worker(
        client, task_queue, DeliveryActivities(pool, store_cipher, config, mllp, http),
        diagnostics=DiagnosticsActivities(pool, config, adapters),
        remediation=RemediationActivities(pool, client_provider, config, adapters, http, task_queue),
        metrics=MetricsActivities(pool, config, adapters), cases=CaseActivities(client, task_queue),
        sla=SlaActivities(pool, config, client, task_queue, http),
        approvals=ApprovalActivities(pool, TEST_JWT_SECRET))
    worker_task = asyncio.create_task(worker.run())
    monitor = MonitorLoop(client, task_queue, monitor_input(config, settings), config.monitor.interval.total_seconds())
    address = client.service_client.config.target_host
    try:
        async with api_client(db_url, address, task_queue, config) as api:
            yield Lifeline(client, pool, config, task_queue, engine, monitor, api, adapters)
        assert not monitor.errors, f"flow monitor runs failed: {monitor.errors[:3]}"
    finally:
        await monitor.stop()
        await terminate_running(client, task_queue=task_queue, ids=list(monitor.first_seen))
        await worker.shutdown()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker_task
        await engine.stop()
        await mllp.close()
        for adapter in adapters.values():
            await adapter.close()
        await http.aclose()


class EngineTraffic:
    """What a running engine does with its queue: a started channel sends one queued message every `step` s
    (the emulators keep counters still; a real engine drains its queue once the channel runs again)."""

    def __init__(self, *, mirth: MirthEmulator | None = None, rhapsody: RhapsodyEmulator | None = None,
                 cloverleaf: FakeCloverleaf | None = None, threads: list[str] | None = None,
                 step: float = 0.3) -> None:
        self.mirth, self.rhapsody, self.cloverleaf = mirth, rhapsody, cloverleaf
        self.threads = threads or []
        self.step = step
        self._task: asyncio.Task[None] | None = None

    def _tick(self) -> None:
        if self.mirth is not None:
            for c in self.mirth.channels.values():
                if c.state == "STARTED" and c.queued > 0:
                    c.queued -= 1
                    c.sent += 1
        if self.rhapsody is not None:
            for comp in self.rhapsody.components.values():
                comp.settle()
                if comp.state == "RUNNING" and comp.out_queue > 0:
                    comp.out_queue -= 1
                    comp.sent += 1
        if self.cloverleaf is not None:
            for name in self.threads:
                t = self.cloverleaf.thread(name)
                if t["status"] == "up" and t["obdataqd"] > 0:
                    self.cloverleaf.fault(name, obdataqd=t["obdataqd"] - 1, msgsout=t["msgsout"] + 1)

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self._tick)
            await asyncio.sleep(self.step)

    async def __aenter__(self) -> EngineTraffic:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
