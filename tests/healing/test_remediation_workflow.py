"""RemediationCaseWorkflow and EngineRestartWorkflow on the time-skipping server with activity stand-ins."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.healing.fakes import VALID_TOKEN, Fakes, proposed, until
from workflows.contract import (
    SIGNAL_APPROVE,
    SIGNAL_EVIDENCE,
    SIGNAL_REJECT,
    ApprovalInput,
    CaseInput,
    CaseState,
    Diagnosis,
    Evidence,
    RestartInput,
    RestartState,
    case_workflow_id,
    restart_workflow_id,
)
from workflows.engine_restart import EngineRestartWorkflow
from workflows.remediation import RemediationCaseWorkflow, needs_approval


@pytest.fixture
async def rig(skip_env: WorkflowEnvironment) -> AsyncIterator[tuple[Client, Fakes, str]]:
    tq = f"heal-{uuid.uuid4().hex[:8]}"
    fakes = Fakes(skip_env.client)
    async with Worker(skip_env.client, task_queue=tq, workflows=[RemediationCaseWorkflow, EngineRestartWorkflow],
                      activities=fakes.activities()):
        yield skip_env.client, fakes, tq


def subject() -> str:
    return f"destination:d{uuid.uuid4().hex[:8]}"


async def open_case(client: Client, tq: str, kind: str, subj: str, **kw: object) -> WorkflowHandle[
        RemediationCaseWorkflow, CaseState]:
    """Open (or feed) a case the way the flow monitor does: signal-with-start of `evidence`."""
    inp = CaseInput(kind, subj, **{"settle_s": 1.0, **kw})  # type: ignore[arg-type]
    ev = Evidence(kind, subj, "2024-01-01T00:00:00+00:00", "3 connection failures", {"failures": 3}, "refused")
    return await client.start_workflow(
        RemediationCaseWorkflow.run, inp, id=case_workflow_id("default", kind, subj), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)


def test_gate_table() -> None:
    for mode in ("manual", "semi-auto", "full-auto"):
        assert needs_approval(mode, "destructive")  # invariant 6
    assert needs_approval("manual", "safe") and needs_approval("manual", "risky")
    assert not needs_approval("semi-auto", "safe") and needs_approval("semi-auto", "risky")
    assert not needs_approval("full-auto", "safe") and not needs_approval("full-auto", "risky")
    assert needs_approval("bogus", "safe")


@pytest.mark.parametrize("mode", ["semi-auto", "full-auto"])
async def test_safe_action_runs_without_approval(rig: tuple[Client, Fakes, str], mode: str) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect", "replay_dead_letters"))
    fakes.fixes = {"reconnect"}
    handle = await open_case(client, tq, "destination_down", subject(), mode=mode)
    state = await handle.result()
    assert state.stage == "resolved"
    assert fakes.actions == ["reconnect"]
    assert "awaiting_approval" not in fakes.stages
    assert state.attempts == [{"action": "reconnect", "outcome": "verified", "by": "auto",
                               "detail": state.attempts[0]["detail"]}]
    assert fakes.resolutions == [("refused", "reconnect", True)]
    assert state.mttr_s is not None and state.mttd_s is not None and state.mttd_s >= 0


async def test_manual_mode_waits_even_for_safe(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    handle = await open_case(client, tq, "destination_down", subject(), mode="manual")
    state = await until(handle, lambda s: s.stage == "awaiting_approval")
    assert state.pending_action is not None and state.pending_action.action == "reconnect"
    assert fakes.actions == []
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("alice", "go ahead", token=VALID_TOKEN))
    state = await handle.result()
    assert state.stage == "resolved" and state.approver == "alice" and fakes.actions == ["reconnect"]
    assert any(a.action == "case.approve" and a.actor == "alice" and a.detail["note"] == "go ahead"
               for a in fakes.audits)


async def test_risky_waits_in_semi_auto_and_runs_in_full_auto(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    channel = f"ch{uuid.uuid4().hex[:6]}"
    fakes.diagnosis = Diagnosis("engine:STOPPED", "stopped", 0.95,
                                actions=proposed("restart_engine_channel", engine="mirth1", channel=channel))
    fakes.channel(channel).state = "stopped"
    subj = f"engine:mirth1:{channel}"
    handle = await open_case(client, tq, "engine_channel_stopped", subj, mode="semi-auto")
    await until(handle, lambda s: s.stage == "awaiting_approval")
    assert fakes.ops == []
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("bob", "restart it", token=VALID_TOKEN))
    state = await handle.result()
    assert state.stage == "resolved", state.history
    assert fakes.ops == [(channel, "start")]  # already stopped: the restart only starts it

    fakes.channel(channel).state = "stopped"
    handle = await open_case(client, tq, "engine_channel_stopped", subj, mode="full-auto")
    state = await handle.result()
    assert state.stage == "resolved" and "awaiting_approval" not in [h.split(" ")[1] for h in state.history]


@pytest.mark.parametrize("mode", ["manual", "semi-auto", "full-auto"])
async def test_destructive_waits_in_every_mode(rig: tuple[Client, Fakes, str], mode: str) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("blocked:ack_reject", "blocked", 0.9, actions=proposed("skip_blocked_head"))
    fakes.fixes = {"skip_blocked_head"}
    handle = await open_case(client, tq, "lane_blocked", subject(), mode=mode)
    state = await until(handle, lambda s: s.stage == "awaiting_approval")
    assert state.pending_action is not None and state.pending_action.safety == "destructive"
    await asyncio.sleep(0.5)
    assert fakes.actions == []
    # An approval that names another action is ignored.
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("eve", "", action="discard", token=VALID_TOKEN))
    await asyncio.sleep(0.3)
    assert (await handle.query("state", result_type=CaseState)).stage == "awaiting_approval"
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("carol", "head is a test message", "skip_blocked_head",
                                                      token=VALID_TOKEN))
    state = await handle.result()
    assert state.stage == "resolved" and fakes.actions == ["skip_blocked_head"] and state.approver == "carol"


async def test_reject_moves_to_next_action_then_rejected(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("blocked:render", "blocked", 0.9, actions=proposed("skip_blocked_head", "discard"))
    handle = await open_case(client, tq, "lane_blocked", subject(), mode="full-auto")
    state = await until(handle, lambda s: s.stage == "awaiting_approval")
    assert state.pending_action is not None and state.pending_action.action == "skip_blocked_head"
    await handle.signal(SIGNAL_REJECT, ApprovalInput("dave", "needs the vendor", token=VALID_TOKEN))
    state = await until(handle, lambda s: s.stage == "awaiting_approval" and s.pending_action is not None
                        and s.pending_action.action == "discard")
    await handle.signal(SIGNAL_REJECT, ApprovalInput("dave", "no", token=VALID_TOKEN))
    state = await handle.result()
    assert state.stage == "rejected" and fakes.actions == [] and fakes.resolutions == []
    assert [a["outcome"] for a in state.attempts] == ["rejected", "rejected"]
    assert [a.action for a in fakes.audits] == ["case.reject", "case.reject"]


async def test_approval_timeout_escalates_never_approves(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("blocked:render", "blocked", 0.9, actions=proposed("skip_blocked_head"))
    handle = await open_case(client, tq, "lane_blocked", subject(), mode="full-auto", approval_timeout_s=3600.0,
                             notify_url="http://pager.invalid/hook")
    state = await handle.result()  # the server skips the hour
    assert state.stage == "escalated" and fakes.actions == []
    assert len(fakes.notified) == 1 and fakes.notified[0].url == "http://pager.invalid/hook"
    assert "timed out" in fakes.notified[0].summary


async def test_three_attempts_with_next_ranked_action(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("timeout", "slow", 0.7, actions=proposed(
        "retry_now", "reconnect", "replay_dead_letters", "pause_destination"))
    handle = await open_case(client, tq, "destination_down", subject(), mode="full-auto")
    state = await handle.result()
    assert fakes.actions == ["retry_now", "reconnect", "replay_dead_letters"]  # max 3, in rank order
    assert state.stage == "escalated"
    assert fakes.resolutions == [("timeout", a, False) for a in ("retry_now", "reconnect", "replay_dead_letters")]

    fakes.actions.clear()
    fakes.resolutions.clear()
    fakes.fixes = {"replay_dead_letters"}
    state = await (await open_case(client, tq, "destination_down", subject(), mode="full-auto")).result()
    assert state.stage == "resolved" and fakes.actions == ["retry_now", "reconnect", "replay_dead_letters"]
    assert fakes.resolutions[-1] == ("timeout", "replay_dead_letters", True)


async def test_evidence_twice_is_one_case(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("blocked:render", "blocked", 0.9, actions=proposed("skip_blocked_head"))
    subj = subject()
    first = await open_case(client, tq, "lane_blocked", subj)
    second = await open_case(client, tq, "lane_blocked", subj)
    assert first.id == second.id == case_workflow_id("default", "lane_blocked", subj)
    assert first.result_run_id == second.result_run_id
    state = await until(first, lambda s: s.evidence_count == 2 and s.stage == "awaiting_approval")
    assert len(state.evidence) == 2
    await first.signal(SIGNAL_REJECT, ApprovalInput("x", "", token=VALID_TOKEN))
    assert (await first.result()).stage == "rejected"


async def test_two_restarts_of_one_channel_never_overlap(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    channel = f"ch{uuid.uuid4().hex[:6]}"
    fakes.transition_polls = 3  # each transition takes a few polls, so the first restart is still running
    wid = restart_workflow_id("default", "mirth1", channel)
    first = await client.start_workflow(EngineRestartWorkflow.run, RestartInput("mirth1", channel), id=wid,
                                        task_queue=tq)
    with pytest.raises(WorkflowAlreadyStartedError):
        await client.start_workflow(EngineRestartWorkflow.run, RestartInput("mirth1", channel), id=wid,
                                    task_queue=tq)
    fakes.diagnosis = Diagnosis("engine:ERROR", "error", 0.9,
                                actions=proposed("restart_engine_channel", engine="mirth1", channel=channel))
    case = await open_case(client, tq, "engine_channel_erroring", f"engine:mirth1:{channel}", mode="full-auto")
    state = await case.result()
    assert (await first.result()).stage == "done"
    assert any("already running" in h for h in state.history), state.history
    assert fakes.ops == [(channel, "stop"), (channel, "start")]  # one restart only
    assert state.stage == "resolved"


async def test_restart_halts_a_hung_stop_and_clears_only_when_approved(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    channel = f"ch{uuid.uuid4().hex[:6]}"
    fakes.channel(channel).hangs_on_stop = True
    handle = await client.start_workflow(
        EngineRestartWorkflow.run, RestartInput("mirth1", channel, clear_queue=True, stop_timeout_s=10),
        id=restart_workflow_id("default", "mirth1", channel), task_queue=tq)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        st = await handle.query("state", result_type=RestartState)
        if st is not None and st.awaiting_approval:
            break
        assert asyncio.get_running_loop().time() < deadline, st
        await asyncio.sleep(0.2)
    assert [op for _, op in fakes.ops] == ["stop", "halt"]
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("oncall1", "queue is junk", token=VALID_TOKEN))
    result = await handle.result()
    assert result.stage == "done"
    assert [op for _, op in fakes.ops] == ["stop", "halt", "clear_queue", "start"]
    assert any(a.action == "engine.clear_queue.approve" and a.actor == "oncall1" for a in fakes.audits)


async def test_restart_clear_times_out_to_skip_and_failed_start_compensates(
        rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    channel = f"ch{uuid.uuid4().hex[:6]}"
    result = await (await client.start_workflow(
        EngineRestartWorkflow.run, RestartInput("mirth1", channel, clear_queue=True),
        id=restart_workflow_id("default", "mirth1", channel), task_queue=tq)).result()
    assert result.stage == "done" and ("clear_queue" not in [op for _, op in fakes.ops])
    assert any("approval timed out" in h for h in result.history)

    other = f"ch{uuid.uuid4().hex[:6]}"
    fakes.channel(other).fails_to_start = True
    handle = await client.start_workflow(EngineRestartWorkflow.run,
                                         RestartInput("mirth1", other, start_timeout_s=10),
                                         id=restart_workflow_id("default", "mirth1", other), task_queue=tq,
                                         execution_timeout=timedelta(hours=1))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert [op for ch, op in fakes.ops if ch == other] == ["stop", "start", "start"]  # the last is compensation
    state = await handle.query("state", result_type=RestartState)
    assert state.stage == "failed" and "did not start" in state.error


# -- cool-down and flapping ----------------------------------------------------------------------------------------

FUTURE = "9999-01-01T00:00:00+00:00"  # observed after any workflow time of the time-skipping server


async def test_remediated_case_stays_open_through_the_cool_down_then_resolves(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    subj = subject()
    handle = await open_case(client, tq, "destination_down", subj, cooldown_s=300.0)
    cooling = await until(handle, lambda s: s.stage == "cooling_down")
    assert cooling.attempts[0]["outcome"] == "verified"
    # Evidence from a snapshot taken before the fix is not a recurrence.
    await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj, "2024-01-01T00:00:01+00:00",
                                                  "late evidence", {}, "refused"))
    state = await handle.result()  # time skips through the cool-down
    assert state.stage == "resolved" and state.recurrences == 0
    assert fakes.actions == ["reconnect"]
    assert "cooling_down" in fakes.stages and fakes.stages[-1] == "resolved"


async def test_flapping_keeps_one_case_shows_it_and_escalates_after_the_attempt_limit(
        rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    subj = subject()
    handle = await open_case(client, tq, "destination_down", subj, cooldown_s=300.0, max_attempts=3)
    for n in (1, 2):
        await until(handle, lambda s, n=n: s.stage == "cooling_down" and len(s.attempts) == n)
        fakes.fixed = False  # it really is down again (measured since the fix), not only still in the window
        await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj, FUTURE, "down again", {}, "refused"))
        await until(handle, lambda s, n=n: s.recurrences == n)
    await until(handle, lambda s: s.stage == "cooling_down" and len(s.attempts) == 3)
    fakes.fixed = False
    await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj, FUTURE, "down again", {}, "refused"))
    state = await handle.result()
    assert state.stage == "escalated" and state.recurrences == 3
    assert [a["outcome"] for a in state.attempts] == ["verified"] * 3  # one case, three remediations
    flapping = [e for e in state.evidence if e.signature == "flapping"]
    assert flapping and flapping[-1].metrics["recurrences"] == 3.0
    assert "came back 3 time(s)" in flapping[-1].summary
    assert any("flapping" in h for h in state.history)
    assert fakes.stages.count("detected") == 1  # never reopened as a new case


async def test_escalated_case_stays_open_while_the_problem_keeps_coming_back(rig: tuple[Client, Fakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = set()  # nothing verifies: the case escalates
    subj = subject()
    handle = await open_case(client, tq, "destination_down", subj, cooldown_s=300.0, max_attempts=1)
    await until(handle, lambda s: s.stage == "escalated")
    for n in (1, 2):
        await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj, FUTURE, "down again", {}, "refused"))
        await until(handle, lambda s, n=n: s.recurrences == n)
    state = await handle.result()  # quiet for the cool-down: the case closes, escalated, one run
    assert state.stage == "escalated" and state.recurrences == 2
    assert [e.signature for e in state.evidence][-1] == "flapping"
    assert fakes.actions == ["reconnect"] and fakes.stages.count("detected") == 1


async def test_an_escalated_case_counts_a_recurrence_signalled_while_it_records_the_escalation(
        rig: tuple[Client, Fakes, str]) -> None:
    """Regression: evidence arriving while the case was inside an activity (recording the escalation, or the
    previous recurrence) was dropped, so the test above failed whenever the signal beat the activity."""
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    gates = [asyncio.Event(), asyncio.Event()]
    fakes.stage_gates["escalated"] = list(gates)
    subj = subject()
    handle = await open_case(client, tq, "destination_down", subj, cooldown_s=300.0, max_attempts=1)
    seen = 1
    for n, gate in enumerate(gates, start=1):
        # The workflow sits in record_case(escalated): first the escalation, then the first recurrence's record.
        await until(handle, lambda s, n=n: s.stage == "escalated" and s.recurrences == n - 1
                    and fakes.stages.count("escalated") == n)
        await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj, FUTURE, "down again", {}, "refused"))
        seen += 1
        await until(handle, lambda s, seen=seen: s.evidence_count == seen)
        gate.set()
        await until(handle, lambda s, n=n: s.recurrences == n)
        seen += 1  # the flapping evidence the case adds for the recurrence
    state = await handle.result()
    assert state.stage == "escalated" and state.recurrences == 2
    assert fakes.actions == ["reconnect"] and fakes.stages.count("detected") == 1
