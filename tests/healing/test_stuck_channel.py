"""A channel stuck in a transition (Mirth STOPPING): the case passes `halt` to the restart, which halts at once
instead of asking a hung channel to stop again, then starts it; the approval gate still applies (restart is risky)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.diagnostics import DiagnosticsActivities
from activities.engines.base import EngineChannel
from infra.config import LifelineConfig
from tests.healing.fakes import VALID_TOKEN, Fakes, proposed, until
from workflows.contract import (
    SIGNAL_APPROVE,
    SIGNAL_EVIDENCE,
    ApprovalInput,
    CaseInput,
    DiagnoseInput,
    Diagnosis,
    Evidence,
    RestartInput,
    case_workflow_id,
    restart_workflow_id,
)
from workflows.engine_restart import EngineRestartWorkflow
from workflows.remediation import RemediationCaseWorkflow

STUCK = Evidence("engine_channel_stopped", "engine:m1:abc", "2026-01-05T10:00:00+00:00",
                 "m1 channel ADT stuck stopping (STOPPING) for 12s", {"state_age_s": 12.0}, "engine:STOPPING")


@pytest.fixture
async def rig(skip_env: WorkflowEnvironment) -> AsyncIterator[tuple[Client, Fakes, str]]:
    tq = f"stuck-{uuid.uuid4().hex[:8]}"
    fakes = Fakes(skip_env.client)
    async with Worker(skip_env.client, task_queue=tq, workflows=[RemediationCaseWorkflow, EngineRestartWorkflow],
                      activities=fakes.activities()):
        yield skip_env.client, fakes, tq


class Adapter:
    kind = "mirth"

    def __init__(self, state: str, capabilities: frozenset[str]) -> None:
        self.state, self.capabilities = state, capabilities

    async def channel_status(self, channel_id: str) -> EngineChannel:
        return EngineChannel(channel_id, "ADT", self.state, self.state.upper(), queued=3)  # type: ignore[arg-type]


async def test_diagnosis_of_a_stuck_channel_proposes_halt_then_start(pool: asyncpg.Pool) -> None:
    d = DiagnosticsActivities(pool, LifelineConfig(), {"m1": Adapter("stopping", frozenset({"start", "stop", "halt"}))})  # type: ignore[dict-item]
    got = await d.diagnose(DiagnoseInput("engine_channel_stopped", "engine:m1:abc", "default", [STUCK]))
    assert got.signature == "engine:STOPPING" and "stuck stopping" in got.root_cause
    assert [a.action for a in got.actions] == ["restart_engine_channel"]
    assert got.actions[0].safety == "risky"  # approval in semi-auto and manual
    assert got.actions[0].params == {"engine": "m1", "channel": "abc", "halt": "1"}

    # An engine without a forced stop (Rhapsody): the same diagnosis, a plain restart.
    d = DiagnosticsActivities(pool, LifelineConfig(), {"m1": Adapter("stopping", frozenset({"start", "stop"}))})  # type: ignore[dict-item]
    got = await d.diagnose(DiagnoseInput("engine_channel_stopped", "engine:m1:abc", "default", [STUCK]))
    assert got.signature == "engine:STOPPING" and got.actions[0].params == {"engine": "m1", "channel": "abc"}

    # A channel caught mid-transition without the monitor's stuck evidence is not called stuck.
    d = DiagnosticsActivities(pool, LifelineConfig(), {"m1": Adapter("stopping", frozenset({"halt"}))})  # type: ignore[dict-item]
    other = Evidence("engine_channel_erroring", "engine:m1:abc", STUCK.observed_at, "errors", {}, "engine:ERRORS")
    got = await d.diagnose(DiagnoseInput("engine_channel_erroring", "engine:m1:abc", "default", [other]))
    assert got.signature != "engine:STOPPING" and all("halt" not in a.params for a in got.actions)


async def test_restart_with_force_halt_halts_a_stuck_channel_at_once(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    channel = f"ch{uuid.uuid4().hex[:6]}"
    fakes.channel(channel).state = "stopping"
    fakes.channel(channel).hangs_on_stop = True
    result = await (await client.start_workflow(
        EngineRestartWorkflow.run, RestartInput("mirth1", channel, force_halt=True),
        id=restart_workflow_id("default", "mirth1", channel), task_queue=tq)).result()
    assert result.stage == "done"
    assert [op for _, op in fakes.ops] == ["halt", "start"]  # no stop, no stop_timeout_s wait
    assert any("halting" in h and "stuck STOPPING" in h for h in result.history), result.history


@pytest.mark.parametrize("mode", ["semi-auto", "full-auto"])
async def test_stuck_case_restarts_with_halt_approved_unless_full_auto(rig: tuple[Client, Fakes, str],
                                                                       mode: str) -> None:
    client, fakes, tq = rig
    channel = f"ch{uuid.uuid4().hex[:6]}"
    fakes.channel(channel).state = "stopping"
    fakes.channel(channel).hangs_on_stop = True
    fakes.diagnosis = Diagnosis("engine:STOPPING", "stuck", 0.95,
                                actions=proposed("restart_engine_channel", engine="mirth1", channel=channel,
                                                 halt="1"))
    subj = f"engine:mirth1:{channel}"
    ev = Evidence("engine_channel_stopped", subj, STUCK.observed_at, STUCK.summary, STUCK.metrics, STUCK.signature)
    handle = await client.start_workflow(
        RemediationCaseWorkflow.run, CaseInput("engine_channel_stopped", subj, mode=mode, settle_s=1.0),
        id=case_workflow_id("default", "engine_channel_stopped", subj), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev], id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
    if mode == "semi-auto":
        await until(handle, lambda s: s.stage == "awaiting_approval")
        assert fakes.ops == []  # nothing touched the channel before a person approved
        await handle.signal(SIGNAL_APPROVE, ApprovalInput("oncall1", "halt it", token=VALID_TOKEN))
    state = await handle.result()
    assert state.stage == "resolved", state.history
    assert [op for _, op in fakes.ops] == ["halt", "start"]
    assert state.attempts[0]["by"] == ("auto" if mode == "full-auto" else "oncall1")
