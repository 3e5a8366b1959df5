"""The safe actions for a flapping or down peer (hold_breaker) and for a surge (await_drain): the breaker hold itself,
the actions against a real store, and the case renewing a hold on each recurrence instead of spending attempts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.breaker import Breakers
from activities.diagnostics import DiagnosticsActivities
from activities.mllp import SendError
from activities.remediation import RemediationActivities
from infra.config import Destination, LifelineConfig, validate_config
from tests.healing.fakes import Fakes, proposed, until
from tests.healing.test_diagnosis import seed
from workflows.contract import (
    SIGNAL_EVIDENCE,
    ActionInput,
    ActionResult,
    CaseInput,
    DiagnoseInput,
    Diagnosis,
    Evidence,
    case_workflow_id,
)
from workflows.engine_restart import EngineRestartWorkflow
from workflows.remediation import RemediationCaseWorkflow

FUTURE = "9999-01-01T00:00:00+00:00"  # observed after any workflow time of the time-skipping server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def off_breaker() -> Destination:
    """A destination whose breaker the config leaves off (the default)."""
    return validate_config({"destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}}]},
                           "test").destinations[0]


async def send(b: Breakers, d: Destination, error_class: str | None) -> str:
    async def attempt() -> str:
        if error_class:
            raise SendError(error_class, "peer down")
        return "AA"

    return await b.call(d, attempt)


async def test_a_held_breaker_opens_at_the_first_failure_and_probes_at_a_fixed_interval() -> None:
    clock, d = Clock(), off_breaker()
    b = Breakers(clock=clock)
    # Off by config: five failures do not open anything, every send connects.
    for _ in range(5):
        with pytest.raises(SendError):
            await send(b, d, "refused")
    assert not b.held("default", "lab") and b.before_send(d) is False
    b.hold("default", "lab", 300)
    with pytest.raises(SendError):
        await send(b, d, "refused")  # one failure while held: open
    assert b.state("default", "lab").state == "open"
    with pytest.raises(Exception, match="circuit open"):
        b.before_send(d)  # fails fast, no connection
    interval = d.breaker.probe_interval.total_seconds()
    for _ in range(3):  # failed probes: the interval does not double while held (the next up-window is found)
        clock.now += interval
        with pytest.raises(SendError):
            await send(b, d, "refused")
        assert b.state("default", "lab").interval_s == interval
    clock.now += interval
    assert await send(b, d, None) == "AA"  # the probe goes through: closed, deliveries flow
    assert b.state("default", "lab").state == "closed"
    clock.now += 301  # the hold ends with the case's cool-down: back to the config (off)
    assert not b.held("default", "lab") and b.before_send(d) is False


async def test_hold_breaker_and_await_drain_against_the_store(pool: asyncpg.Pool) -> None:
    async def no_client() -> Client:
        raise AssertionError("not needed")

    config = validate_config({"destinations": [{"name": "hold", "mllp": {"host": "127.0.0.1", "port": 2600}},
                                               {"name": "surge", "mllp": {"host": "127.0.0.1", "port": 2601}}]},
                             "test")
    rem = RemediationActivities(pool, no_client, config)
    # hold_breaker: nothing delivered yet, then a delivery goes through: the action reports it resumed.
    await seed(pool, "hold", "refused", 3)

    async def peer_back() -> None:
        await asyncio.sleep(1.5)
        await seed(pool, "hold", None, 0, delivered=1)

    back = asyncio.create_task(peer_back())
    r = await rem.run_action(ActionInput("case:x", "default", "hold_breaker", "destination:hold", {"wait_s": "20"}))
    await back
    assert r.ok and "delivery resumed" in r.detail and "held for 300s" in r.detail, r
    # ... and a peer that stays down: not ok within the bound.
    r = await rem.run_action(ActionInput("case:x", "default", "hold_breaker", "destination:hold",
                                         {"wait_s": "0"}))
    assert not r.ok and "no delivery" in r.detail  # the earlier success counts only since the action began
    await seed(pool, "surge", None, 6, status="pending")
    r = await rem.run_action(ActionInput("case:x", "default", "await_drain", "destination:surge", {"wait_s": "3"}))
    assert not r.ok and "not draining" in r.detail  # a steady backlog is not draining

    async def drain() -> None:
        for _ in range(6):
            await asyncio.sleep(1.0)
            await pool.execute("update deliveries set status = 'delivered' where ctid = (select ctid from"
                               " deliveries where destination = 'surge' and status = 'pending' limit 1)")

    draining = asyncio.create_task(drain())
    r = await rem.run_action(ActionInput("case:x", "default", "await_drain", "destination:surge", {"wait_s": "30"}))
    await draining
    assert r.ok and "draining" in r.detail, r


async def test_diagnosis_ranks_the_new_safe_actions(pool: asyncpg.Pool) -> None:
    diag = DiagnosticsActivities(pool, LifelineConfig())
    await seed(pool, "down1", "refused", 5)
    got = await diag.diagnose(DiagnoseInput("destination_down", "destination:down1", "default", []))
    assert [a.action for a in got.actions][:2] == ["reconnect", "hold_breaker"]
    assert all(a.safety == "safe" for a in got.actions[:2])
    await seed(pool, "busy", None, 12, status="pending")
    await pool.execute("delete from delivery_attempts where destination = 'busy'")  # waiting, nothing failed
    got = await diag.diagnose(DiagnoseInput("backlog", "destination:busy", "default", []))
    assert got.signature == "backlog" and got.actions[0].action == "await_drain"


class HoldFakes(Fakes):
    """run_action: hold_breaker resumes delivery unless `peer_gone`; everything else changes nothing."""

    peer_gone = False
    down_after_hold = False  # the peer's next outage begins right after the delivery that went through under the hold

    @activity.defn(name="run_action")
    async def run_action(self, inp: ActionInput) -> ActionResult:
        self.actions.append(inp.action)
        if inp.action in self.fixes:
            self.fixed = True
        if inp.action == "hold_breaker" and self.down_after_hold:
            self.fixed = False
            return ActionResult(inp.action, True, "breaker held; delivery resumed (1 delivered)", 1)
        if inp.action == "hold_breaker" and not self.peer_gone:
            self.fixed = True
            return ActionResult(inp.action, True, "breaker held; delivery resumed")
        return ActionResult(inp.action, inp.action != "hold_breaker", f"{inp.action} done")


@pytest.fixture
async def rig(skip_env: WorkflowEnvironment) -> AsyncIterator[tuple[Client, HoldFakes, str]]:
    tq = f"hold-{uuid.uuid4().hex[:8]}"
    fakes = HoldFakes(skip_env.client)
    async with Worker(skip_env.client, task_queue=tq, workflows=[RemediationCaseWorkflow, EngineRestartWorkflow],
                      activities=fakes.activities()):
        yield skip_env.client, fakes, tq


async def test_flapping_peer_keeps_its_held_breaker_without_spending_attempts(
        rig: tuple[Client, HoldFakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9,
                                actions=proposed("reconnect", "hold_breaker", "replay_dead_letters",
                                                 destination="lab"))
    subj = f"destination:lab{uuid.uuid4().hex[:6]}"
    ev = Evidence("destination_down", subj, "2024-01-01T00:00:00+00:00", "3 connection failures", {}, "refused")
    handle: Any = await client.start_workflow(
        RemediationCaseWorkflow.run, CaseInput("destination_down", subj, mode="semi-auto", settle_s=1.0,
                                               cooldown_s=300.0),
        id=case_workflow_id("default", "destination_down", subj), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev])
    # reconnect does not verify (the peer is down), hold_breaker does once delivery resumes.
    await until(handle, lambda s: s.stage == "cooling_down")
    for n in (1, 2, 3, 4):  # it flaps: more recurrences than the attempt limit, each renews the hold
        fakes.fixed = False  # down again since the fix (the renewal's resumed delivery makes it healthy again)
        await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj, FUTURE, "down again", {}, "refused"))
        await until(handle, lambda s, n=n: s.recurrences == n and s.stage == "cooling_down"
                    and sum(1 for a in s.attempts if a["outcome"] == "renewed") == n)
    state = await handle.result()  # then quiet for the cool-down: resolved
    assert state.stage == "resolved" and state.recurrences == 4
    assert [(a["action"], a["outcome"]) for a in state.attempts] == [
        ("reconnect", "failed"), ("hold_breaker", "verified")] + [("hold_breaker", "renewed")] * 4
    assert fakes.stages.count("detected") == 1 and "escalated" not in fakes.stages
    assert [e.signature for e in state.evidence].count("flapping") == 4

    # A peer that stays down under the hold goes to a person.
    fakes.fixed, fakes.peer_gone = False, False
    subj2 = f"destination:lab{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow(
        RemediationCaseWorkflow.run, CaseInput("destination_down", subj2, mode="semi-auto", settle_s=1.0,
                                               cooldown_s=300.0),
        id=case_workflow_id("default", "destination_down", subj2), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev])
    await until(handle, lambda s: s.stage == "cooling_down")
    fakes.peer_gone, fakes.fixed = True, False
    await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_down", subj2, FUTURE, "down again", {}, "refused"))
    await until(handle, lambda s: s.stage == "escalated")
    state = await handle.query(RemediationCaseWorkflow.state)
    assert state is not None
    assert state.attempts[-1]["action"] == "hold_breaker" and state.attempts[-1]["outcome"] == "failed"
    await handle.terminate("test over")  # it would stay open through its cool-down


async def test_a_delivery_under_the_hold_verifies_it_even_if_the_peer_goes_down_again_at_once(
        rig: tuple[Client, HoldFakes, str]) -> None:
    """The flapping race: the hold's delivery went through, then the peer's next outage began before a settle window
    would have ended. The delivery is the verification; the next outage is the cool-down's business (renew)."""
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("hold_breaker", "replay_dead_letters",
                                                                         destination="lab"))
    fakes.down_after_hold = True
    subj = f"destination:lab{uuid.uuid4().hex[:6]}"
    ev = Evidence("destination_down", subj, "2024-01-01T00:00:00+00:00", "3 connection failures", {}, "refused")
    handle: Any = await client.start_workflow(
        RemediationCaseWorkflow.run, CaseInput("destination_down", subj, mode="full-auto", settle_s=30.0,
                                               cooldown_s=300.0),
        id=case_workflow_id("default", "destination_down", subj), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev])
    state = await until(handle, lambda s: s.stage == "cooling_down")
    assert [(a["action"], a["outcome"]) for a in state.attempts] == [("hold_breaker", "verified")]
    assert "1 delivered while the breaker hold stood" in state.attempts[0]["detail"]
    assert fakes.actions == ["hold_breaker"]  # no second action: nothing failed
    await handle.terminate("test over")


async def test_evidence_from_before_the_fix_still_in_the_window_is_not_a_recurrence(
        rig: tuple[Client, HoldFakes, str]) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("ack_reject:207", "rejects", 0.9, actions=proposed("replay_dead_letters",
                                                                                  destination="lab"))
    fakes.fixes = {"replay_dead_letters"}
    subj = f"destination:lab{uuid.uuid4().hex[:6]}"
    ev = Evidence("destination_rejecting", subj, "2024-01-01T00:00:00+00:00", "30% rejected", {}, "ack_reject:207")
    handle: Any = await client.start_workflow(
        RemediationCaseWorkflow.run, CaseInput("destination_rejecting", subj, mode="semi-auto", settle_s=1.0,
                                               cooldown_s=300.0),
        id=case_workflow_id("default", "destination_rejecting", subj), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev])
    await until(handle, lambda s: s.stage == "cooling_down")
    # The detector still counts the rejects of its 5-minute window, but nothing was rejected since the fix.
    await handle.signal(SIGNAL_EVIDENCE, Evidence("destination_rejecting", subj, FUTURE, "30% rejected", {},
                                                  "ack_reject:207"))
    await until(handle, lambda s: any("not a recurrence" in h for h in s.history))
    state = await handle.result()
    assert state.stage == "resolved" and state.recurrences == 0
    assert fakes.actions == ["replay_dead_letters"]  # remediated once, not again for stale evidence
