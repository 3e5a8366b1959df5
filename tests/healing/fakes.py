"""Activity stand-ins for the healing workflows: a scripted diagnosis, recorded actions and a fake engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from workflows.contract import (
    ACTION_SAFETY,
    ActionInput,
    ActionResult,
    AuditInput,
    CaseState,
    DiagnoseInput,
    Diagnosis,
    EngineOpInput,
    EngineStatus,
    MeasureInput,
    Measurement,
    NotifyInput,
    ProposedAction,
    RecordCaseInput,
    RecordResolutionInput,
    VerifyApprovalInput,
    VerifyApprovalResult,
)

VALID_TOKEN = "valid-oncall-token"  # what the verify_approval stand-in accepts


def proposed(*actions: str, **params: str) -> list[ProposedAction]:
    return [ProposedAction(a, ACTION_SAFETY[a], dict(params)) for a in actions]


@dataclass
class FakeChannel:
    state: str = "started"
    countdown: int = 0  # status polls until a pending transition lands
    target: str = ""
    hangs_on_stop: bool = False  # STOPPING forever unless halted
    fails_to_start: bool = False
    queued: int = 5
    received: int = 100


@dataclass
class Fakes:
    """Everything the stand-ins saw, and knobs for what they answer."""

    client: Client
    actions: list[str] = field(default_factory=list)
    fixes: set[str] = field(default_factory=set)  # actions after which measurements look healthy
    diagnosis: Diagnosis = field(default_factory=lambda: Diagnosis("refused", "down", 0.9))
    stages: list[str] = field(default_factory=list)
    resolutions: list[tuple[str, str, bool]] = field(default_factory=list)
    notified: list[NotifyInput] = field(default_factory=list)
    audits: list[AuditInput] = field(default_factory=list)
    case_audits: list[tuple[str, str]] = field(default_factory=list)
    ops: list[tuple[str, str]] = field(default_factory=list)  # (channel, op) in the order the engine saw them
    channels: dict[str, FakeChannel] = field(default_factory=dict)
    transition_polls: int = 2
    fixed: bool = False
    refused: list[str] = field(default_factory=list)  # claimed approvers whose token the stand-in refused
    # stage -> events: each record_case of that stage waits for the next event (to hold the workflow inside it)
    stage_gates: dict[str, list[asyncio.Event]] = field(default_factory=dict)

    def activities(self) -> list[Any]:
        return [self.diagnose, self.record_case, self.record_resolution, self.run_action, self.measure,
                self.notify, self.audit_event, self.engine_status, self.engine_control, self.workflow_running,
                self.verify_approval]

    @activity.defn(name="verify_approval")
    async def verify_approval(self, inp: VerifyApprovalInput) -> VerifyApprovalResult:
        # Stand-in for ApprovalActivities (tested against real tokens in tests/security/test_approvals.py).
        if inp.token != VALID_TOKEN:
            self.refused.append(inp.claimed)
            return VerifyApprovalResult(False, reason="bad token")
        return VerifyApprovalResult(True, subject=inp.claimed)

    @activity.defn(name="diagnose")
    async def diagnose(self, inp: DiagnoseInput) -> Diagnosis:
        return self.diagnosis

    @activity.defn(name="record_case")
    async def record_case(self, inp: RecordCaseInput) -> None:
        self.stages.append(inp.state.stage)
        gates = self.stage_gates.get(inp.state.stage)
        if gates:
            await gates.pop(0).wait()
        if inp.audit_action:
            self.case_audits.append((inp.audit_action, inp.actor))

    @activity.defn(name="record_resolution")
    async def record_resolution(self, inp: RecordResolutionInput) -> None:
        self.resolutions.append((inp.signature, inp.action, inp.success))

    @activity.defn(name="run_action")
    async def run_action(self, inp: ActionInput) -> ActionResult:
        self.actions.append(inp.action)
        if inp.action in self.fixes:
            self.fixed = True
        return ActionResult(inp.action, True, f"{inp.action} done")

    @activity.defn(name="measure")
    async def measure(self, inp: MeasureInput) -> Measurement:
        if inp.subject.startswith("engine:"):
            st = await self.engine_status(EngineOpInput(*inp.subject.split(":")[1:3]))
            return Measurement("2024-01-01T00:00:00+00:00", {"queued": st.queued, "received": st.received}, st.state)
        bad = 0.0 if self.fixed else 5.0
        return Measurement("2024-01-01T00:00:00+00:00", {"connection_failures": bad, "failures": bad,
                                                         "rejects": bad, "backlog": 0.0 if self.fixed else 10.0,
                                                         "blocked_lanes": 0.0 if self.fixed else 1.0})

    @activity.defn(name="notify")
    async def notify(self, inp: NotifyInput) -> bool:
        self.notified.append(inp)
        return False

    @activity.defn(name="audit_event")
    async def audit_event(self, inp: AuditInput) -> None:
        self.audits.append(inp)

    def channel(self, name: str) -> FakeChannel:
        return self.channels.setdefault(name, FakeChannel())

    @activity.defn(name="engine_status")
    async def engine_status(self, inp: EngineOpInput) -> EngineStatus:
        ch = self.channel(inp.channel)
        if ch.target:
            ch.countdown -= 1
            if ch.countdown <= 0:
                ch.state, ch.target = ch.target, ""
        if ch.state == "started":
            ch.received += 1
        return EngineStatus(ch.state, ch.state.upper(), ch.queued, ch.received, ch.received, 0,
                            ["start", "stop", "halt", "clear_queue"])

    @activity.defn(name="engine_control")
    async def engine_control(self, inp: EngineOpInput) -> int:
        ch = self.channel(inp.channel)
        self.ops.append((inp.channel, inp.op))
        if inp.op == "stop":
            ch.state, ch.target, ch.countdown = "stopping", "" if ch.hangs_on_stop else "stopped", \
                self.transition_polls
        elif inp.op == "halt":
            ch.state, ch.target = "stopped", ""
        elif inp.op == "start":
            if not ch.fails_to_start:
                ch.state, ch.target, ch.countdown = "starting", "started", self.transition_polls
        elif inp.op == "clear_queue":
            n, ch.queued = ch.queued, 0
            return n
        return 0

    @activity.defn(name="workflow_running")
    async def workflow_running(self, workflow_id: str) -> bool:
        try:
            desc = await self.client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            return False
        return desc.status == WorkflowExecutionStatus.RUNNING


async def until(handle: WorkflowHandle[Any, Any], check: Any, *, timeout: float = 15.0) -> CaseState:
    """Query `state` until check(state) holds (real time: the test server skips time only while awaiting results)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await handle.query("state", result_type=CaseState)
        except RPCError:
            last = None
        if last is not None and check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not reached; last state: {last}")
