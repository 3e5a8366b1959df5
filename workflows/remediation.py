"""RemediationCaseWorkflow: detect → diagnose → approve → remediate → verify, one per problem (`case:<kind>:<subject>`).

Detectors open and feed a case with signal-with-start of `evidence` (invariant 7). Each ranked action passes the
approval gate of the case's mode; destructive actions always wait for a person (invariant 6), and a wait that
times out escalates — it never approves.

MTTD = opened_at − onset, where onset is the diagnosis' `onset_at` (the first failure of the current failure
streak in the store) or, when the store cannot tell, the first evidence's `observed_at`.
MTTR = resolved_at − opened_at, for resolved cases only.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from workflows.approval import verify_approval
    from workflows.contract import (
        PATCH_CASE_COOLDOWN,
        PATCH_FLAP_HOLD,
        PATCH_HOLD_OPEN_EVERY_RECURRENCE,
        PATCH_HOLD_VERIFIED_BY_DELIVERY,
        PATCH_ONCALL_RESOLVE,
        PATCH_RECURRENCE_SINCE_FIX,
        PATCH_VERIFY_APPROVAL,
        QUERY_STATE,
        SA_CASE_KIND,
        SA_STATUS,
        SAFETY_DESTRUCTIVE,
        SAFETY_SAFE,
        SIGNAL_APPROVE,
        SIGNAL_EVIDENCE,
        SIGNAL_REJECT,
        ActionInput,
        ActionResult,
        ApprovalInput,
        AuditInput,
        CaseInput,
        CaseState,
        DiagnoseInput,
        Diagnosis,
        Evidence,
        MeasureInput,
        Measurement,
        NotifyInput,
        ProposedAction,
        RecordCaseInput,
        RecordResolutionInput,
        RestartInput,
        legacy_restart_workflow_id,
        parse_subject,
        restart_workflow_id,
    )
    from workflows.policies import STORE_RETRY

EVIDENCE_KEPT = 50  # the first evidence and the most recent ones; evidence_count counts them all
RESTART_WAIT = timedelta(seconds=5)
ACTION_TIMEOUT = timedelta(minutes=5)
STATUS_KEY = SearchAttributeKey.for_keyword(SA_STATUS)
KIND_KEY = SearchAttributeKey.for_keyword(SA_CASE_KIND)
CONNECTION_FAILURES = "connection_failures"


def needs_approval(mode: str, safety: str) -> bool:
    """The approval gate: manual waits always, semi-auto runs safe ones, full-auto all but destructive."""
    if safety == SAFETY_DESTRUCTIVE:
        return True
    if mode == "full-auto":
        return False
    if mode == "semi-auto":
        return safety != SAFETY_SAFE
    return True  # manual, and any mode we do not know


def verify(kind: str, subject: str, start: Measurement, end: Measurement) -> tuple[bool, str]:
    """Success criteria per kind; `start` is measured right after the action, `end` after the settle delay."""
    what, _ = parse_subject(subject)
    a, b = start.values, end.values
    if what == "engine":
        if end.state != "started":
            return False, f"channel is {end.state or 'unknown'}"
        moving = (b.get("received", 0), b.get("sent", 0)) != (a.get("received", 0), a.get("sent", 0))
        if kind == "engine_channel_erroring" and b.get("errors", 0) > a.get("errors", 0):
            return False, f"errors still rising ({a.get('errors', 0):.0f} → {b.get('errors', 0):.0f})"
        if kind == "engine_queue_growing" and b.get("queued", 0) > a.get("queued", 0):
            return False, f"queue still growing ({a.get('queued', 0):.0f} → {b.get('queued', 0):.0f})"
        if not moving and b.get("queued", 0) > 0 and kind != "engine_queue_growing":
            return False, "started but statistics do not move while messages are queued"
        return True, "started" + (", statistics moving" if moving else "")
    if what == "channel":
        if kind == "file_source_failing":
            ok = b.get("source_failures", 1) == 0 and b.get("source_polled_ok", 0) > 0
            return ok, f"{b.get('source_failures', 0):.0f} failed poll(s) in a row since the action"
        if kind == "file_source_silent":
            return b.get("source_files", 0) > 0, f"{b.get('source_files', 0):.0f} new file(s) since the action"
        if kind == "file_errors_growing":
            return (b.get("source_error_files", 0) == 0,
                    f"{b.get('source_error_files', 0):.0f} file(s) to error/ since the action")
        if kind == "malformed_burst":
            return b.get("rejected", 0) == 0, f"{b.get('rejected', 0):.0f} rejected since the action"
        return b.get("accepted", 0) > 0, f"{b.get('accepted', 0):.0f} accepted since the action"
    backlog, before = b.get("backlog", 0), a.get("backlog", 0)
    draining = backlog == 0 or backlog < before
    if kind == "lane_blocked":
        return b.get("blocked_lanes", 0) == 0, f"{b.get('blocked_lanes', 0):.0f} lane(s) still blocked"
    if kind == "destination_rejecting":
        return b.get("rejects", 0) == 0, f"{b.get('rejects', 0):.0f} rejection(s) since the action"
    if kind == "backlog":
        return draining, f"backlog {before:.0f} → {backlog:.0f}"
    if kind in ("latency_degraded", "throughput_drop"):
        ok = b.get("failures", 0) == 0 and (draining or backlog <= before)
        return ok, f"{b.get('failures', 0):.0f} failure(s), backlog {before:.0f} → {backlog:.0f}"
    # destination_down, manual and the rest: no connection failures since the action, backlog draining or zero.
    ok = b.get(CONNECTION_FAILURES, 0) == 0 and (draining or b.get("successes", 0) > 0)
    return ok, (f"{b.get(CONNECTION_FAILURES, 0):.0f} connection failure(s), {b.get('successes', 0):.0f} "
                f"success(es), backlog {before:.0f} → {backlog:.0f}")


def _seconds(later: str, earlier: str) -> float | None:
    try:
        return round((datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds(), 3)
    except ValueError:
        return None


@workflow.defn(name="RemediationCaseWorkflow")
class RemediationCaseWorkflow:
    def __init__(self) -> None:
        self._state: CaseState | None = None
        self._early: list[Evidence] = []  # evidence signalled before run() set the state up
        self._decision: tuple[bool, ApprovalInput] | None = None
        self._cooling_since: datetime | None = None  # set while the case cools down after a verified remediation
        self._recurred = False

    @workflow.query(name=QUERY_STATE)
    def state(self) -> CaseState | None:
        return self._state

    @workflow.signal(name=SIGNAL_EVIDENCE)
    def evidence(self, ev: Evidence) -> None:
        if self._state is None:
            self._early.append(ev)
            return
        self._add_evidence(ev)

    def _add_evidence(self, ev: Evidence) -> None:
        s = self._state
        assert s is not None
        if self._cooling_since is not None and ev.signature != "flapping":
            try:
                if datetime.fromisoformat(ev.observed_at) > self._cooling_since:
                    self._recurred = True
            except (ValueError, TypeError):  # unparseable or naive time: not proof of a recurrence
                pass
        s.evidence_count += 1
        s.evidence.append(ev)
        if len(s.evidence) > EVIDENCE_KEPT:
            del s.evidence[1]

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, inp: ApprovalInput) -> None:
        self._decide(True, inp)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, inp: ApprovalInput) -> None:
        self._decide(False, inp)

    def _decide(self, approved: bool, inp: ApprovalInput) -> None:
        s = self._state
        verb = "approve" if approved else "reject"
        if s is None or s.stage != "awaiting_approval" or s.pending_action is None or self._decision is not None:
            if s is not None:
                self._note(f"{verb} by {inp.approver} ignored: nothing awaits approval")
            return
        if inp.action and inp.action != s.pending_action.action:
            self._note(f"{verb} by {inp.approver} ignored: it names {inp.action}, pending is "
                       f"{s.pending_action.action}")
            return
        self._decision = (approved, inp)

    def _note(self, text: str) -> None:
        assert self._state is not None
        self._state.history.append(f"{workflow.now().isoformat()} {text}")

    async def _stage(self, stage: str, note: str = "", *, audit_action: str = "", actor: str = "lifeline",
                     detail: dict[str, str] | None = None) -> None:
        s = self._state
        assert s is not None
        s.stage = stage
        self._note(stage + (f": {note}" if note else ""))
        if any(p.key.name == SA_STATUS for p in workflow.info().typed_search_attributes):
            workflow.upsert_search_attributes([STATUS_KEY.value_set(stage)])
        await workflow.execute_activity(
            "record_case", RecordCaseInput(s, audit_action, actor, detail or {}),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY)

    async def _audit(self, actor: str, action: str, detail: dict[str, str]) -> None:
        s = self._state
        assert s is not None
        await workflow.execute_activity(
            "audit_event", AuditInput(s.org_id, actor, action, s.case_id, detail),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY)

    @workflow.run
    async def run(self, inp: CaseInput) -> CaseState:
        now = workflow.now().isoformat()
        s = CaseState(workflow.info().workflow_id, inp.kind, inp.subject, mode=inp.mode, opened_at=now,
                      org_id=inp.org_id)
        self._state = s
        for ev in self._early:
            self._add_evidence(ev)
        self._early.clear()
        await self._stage("detected", f"opened by {inp.opened_by}", audit_action="case.open", actor=inp.opened_by)

        await self._stage("diagnosing")
        diagnosis: Diagnosis = await workflow.execute_activity(
            "diagnose", DiagnoseInput(inp.kind, inp.subject, inp.org_id, s.evidence[-10:]),
            start_to_close_timeout=timedelta(minutes=2), retry_policy=STORE_RETRY, result_type=Diagnosis)
        s.diagnosis = diagnosis
        onset = diagnosis.onset_at or (s.evidence[0].observed_at if s.evidence else "")
        if onset:
            mttd = _seconds(s.opened_at, onset)
            s.mttd_s = max(0.0, mttd) if mttd is not None else None

        outcome = await self._remediate(inp, diagnosis)
        if outcome == "resolved" and inp.cooldown_s > 0 and workflow.patched(PATCH_CASE_COOLDOWN):
            outcome = await self._cool_down(inp, diagnosis)
        s.pending_action = None
        s.resolved_at = workflow.now().isoformat()
        if outcome == "resolved":
            s.mttr_s = _seconds(s.resolved_at, s.opened_at)
            await self._stage("resolved", audit_action="case.resolved", actor=s.approver or "lifeline",
                              detail={"approver": s.approver, "signature": diagnosis.signature})
            if workflow.patched(PATCH_ONCALL_RESOLVE):
                # An earlier run of this case may have paged: resolve that page (same dedup key, the case id).
                await workflow.execute_activity(
                    "notify", NotifyInput(s.case_id, inp.org_id, "", "resolved", ""),
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY)
        elif outcome == "rejected":
            await self._stage("rejected", "every proposed action was rejected", audit_action="case.rejected",
                              actor=s.approver or "lifeline")
        else:
            if inp.cooldown_s > 0:
                # Evidence observed from the escalation on is a recurrence, also when it arrives while the
                # escalation is still being recorded and notified (only read by _hold_open's patched path).
                self._cooling_since = workflow.now()
                self._recurred = False
            await self._escalate(inp, outcome)
            if inp.cooldown_s > 0 and workflow.patched(PATCH_CASE_COOLDOWN):
                await self._hold_open(inp)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return s

    async def _cool_down(self, inp: CaseInput, diagnosis: Diagnosis) -> str:
        """Stay open after a verified remediation; a recurrence (new evidence observed after the fix) is flapping:
        remediate again within the attempt limit, with the recurrences as evidence, else escalate."""
        s = self._state
        assert s is not None
        while True:
            self._cooling_since = workflow.now()
            self._recurred = False
            await self._stage("cooling_down", f"remediated; the case stays open {inp.cooldown_s:g}s in case the "
                              "problem comes back")
            if not await self._await_recurrence(inp):
                self._cooling_since = None
                return "resolved"
            self._cooling_since = None
            s.recurrences += 1
            tried = sum(1 for a in s.attempts if a.get("outcome") in ("verified", "failed"))
            summary = (f"flapping: {inp.subject} came back {s.recurrences} time(s) within {inp.cooldown_s:g}s of "
                       f"a verified remediation ({tried} remediation(s) so far)")
            self._add_evidence(Evidence(kind=inp.kind, subject=inp.subject, observed_at=workflow.now().isoformat(),
                                        summary=summary, signature="flapping",
                                        metrics={"recurrences": float(s.recurrences), "remediations": float(tried)}))
            self._note(summary)
            if self._holding() and workflow.patched(PATCH_FLAP_HOLD):
                # The held breaker is the mitigation for a flapping peer and is still in place: renew it and wait for
                # delivery to resume (no attempt spent). Only a peer that stays down past the wait goes to a person.
                renewed = await self._renew_hold(inp)
                if renewed is not None:
                    return renewed
                continue
            if tried >= inp.max_attempts:
                return f"flapping: came back {s.recurrences} time(s) after remediation; {tried} remediation(s) tried"
            outcome = await self._remediate(dataclasses.replace(inp, max_attempts=inp.max_attempts - tried),
                                            diagnosis)
            if outcome != "resolved":
                return outcome

    async def _await_recurrence(self, inp: CaseInput) -> bool:
        """Wait out the cool-down; True at a recurrence. Patched: evidence during the cool-down is a recurrence only
        if the problem shows since the fix (the verification measured from the start of the cool-down fails) —
        detectors look back over a window (5 min), so right after a fix they still report the failures before it."""
        deadline = workflow.now() + timedelta(seconds=inp.cooldown_s)
        base = await self._measure(inp) if workflow.patched(PATCH_RECURRENCE_SINCE_FIX) else None
        while True:
            try:
                await workflow.wait_condition(lambda: self._recurred,
                                              timeout=max(deadline - workflow.now(), timedelta(milliseconds=1)))
            except TimeoutError:
                return False
            if base is None:
                return True
            since = await self._measure(inp, since=base.at)
            ok, why = verify(inp.kind, inp.subject, base, since)
            if not ok:
                self._note(f"the problem shows again since the fix: {why}")
                return True
            self._note(f"evidence during the cool-down, but nothing failed since the fix ({why}): earlier failures "
                       "still in the detector's window, not a recurrence")
            # Look again at most once per settle period, however often the monitor repeats its window.
            await workflow.sleep(timedelta(seconds=max(1.0, inp.settle_s)))
            self._recurred = False

    def _holding(self) -> bool:
        """Whether the case's last effective action holds the destination's breaker (hold_breaker verified)."""
        s = self._state
        assert s is not None
        done = [a for a in s.attempts if a.get("outcome") in ("verified", "renewed", "failed")]
        return bool(done) and done[-1].get("action") == "hold_breaker" and done[-1].get("outcome") != "failed"

    async def _renew_hold(self, inp: CaseInput) -> str | None:
        """Renew the breaker hold after a recurrence; None when delivery resumed, else why the case escalates."""
        s = self._state
        assert s is not None
        action = ProposedAction("hold_breaker", SAFETY_SAFE,
                                dict(s.diagnosis.actions[0].params) if s.diagnosis and s.diagnosis.actions else {})
        approver = ""
        if needs_approval(inp.mode, action.safety):
            decision = await self._await_approval(inp, action)
            if decision is None:
                return f"approval for renewing hold_breaker timed out after {inp.approval_timeout_s:g}s"
            approved, by = decision
            s.approver = by.approver
            if not approved:
                s.attempts.append({"action": action.action, "outcome": "rejected", "by": by.approver,
                                   "note": by.note})
                return "renewing the breaker hold was rejected: a person takes the flapping peer"
            approver = by.approver
        s.pending_action = action
        await self._stage("remediating", "flapping: renewing hold_breaker" + (f" approved by {approver}"
                                                                               if approver else ""))
        try:
            result: ActionResult = await workflow.execute_activity(
                "run_action", ActionInput(s.case_id, inp.org_id, action.action, inp.subject, action.params, approver),
                start_to_close_timeout=ACTION_TIMEOUT, retry_policy=STORE_RETRY, result_type=ActionResult)
        except ActivityError as err:
            result = ActionResult(action.action, False, f"hold_breaker failed: {err.cause or err}")
        s.pending_action = None
        s.attempts.append({"action": action.action, "outcome": "renewed" if result.ok else "failed",
                           "by": approver or "auto", "detail": result.detail})
        if result.ok:
            return None
        return f"flapping: delivery did not resume under the held breaker ({result.detail})"

    async def _hold_open(self, inp: CaseInput) -> None:
        """An escalated case stays open while the problem keeps coming back (evidence within cooldown_s of the last),
        counting the recurrences as flapping evidence, so a flapping subject stays one case for the person."""
        s = self._state
        assert s is not None
        # Unpatched, a recurrence signalled while the case was still recording the escalation or the previous
        # recurrence (activities) was reset at the top of the loop and lost. Patched, evidence observed since the
        # escalation counts (run() sets _cooling_since before escalating) and a recurrence is cleared only once
        # it has been counted.
        every = workflow.patched(PATCH_HOLD_OPEN_EVERY_RECURRENCE)
        if every and self._cooling_since is None:
            self._cooling_since = workflow.now()
        while True:
            if not every:
                self._cooling_since = workflow.now()
                self._recurred = False
            try:
                await workflow.wait_condition(lambda: self._recurred, timeout=timedelta(seconds=inp.cooldown_s))
            except TimeoutError:
                self._cooling_since = None
                return
            self._recurred = False
            s.recurrences += 1
            summary = (f"flapping: {inp.subject} still failing after escalation; came back {s.recurrences} time(s) "
                       f"(the case stays open until {inp.cooldown_s:g}s pass without it)")
            self._add_evidence(Evidence(kind=inp.kind, subject=inp.subject, observed_at=workflow.now().isoformat(),
                                        summary=summary, signature="flapping",
                                        metrics={"recurrences": float(s.recurrences)}))
            if s.recurrences == 1 or s.recurrences % 10 == 0:
                await self._stage("escalated", summary)

    async def _escalate(self, inp: CaseInput, why: str) -> None:
        s = self._state
        assert s is not None
        await self._stage("escalated", why)
        sig = s.diagnosis.signature if s.diagnosis else ""
        await workflow.execute_activity(
            "notify", NotifyInput(s.case_id, inp.org_id, inp.notify_url, "escalated", f"{why} (signature {sig})"),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY)

    async def _remediate(self, inp: CaseInput, diagnosis: Diagnosis) -> str:
        """Try ranked actions until one verifies; 'resolved', 'rejected', or why the case escalates."""
        s = self._state
        assert s is not None
        if not diagnosis.actions:
            return "no automatic action for this signature: a person must look"
        ran = rejected = 0
        for action in diagnosis.actions:
            if ran >= inp.max_attempts:
                break
            approver = ""
            if needs_approval(inp.mode, action.safety):
                decision = await self._await_approval(inp, action)
                if decision is None:
                    return f"approval for {action.action} timed out after {inp.approval_timeout_s:g}s"
                approved, by = decision
                s.approver = by.approver
                if not approved:
                    rejected += 1
                    s.attempts.append({"action": action.action, "outcome": "rejected", "by": by.approver,
                                       "note": by.note})
                    continue
                approver = by.approver
            ran += 1
            ok, detail = await self._attempt(inp, action, approver)
            s.attempts.append({"action": action.action, "outcome": "verified" if ok else "failed",
                               "by": approver or "auto", "detail": detail})
            await workflow.execute_activity(
                "record_resolution", RecordResolutionInput(inp.org_id, diagnosis.signature, action.action, ok),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY)
            if ok:
                return "resolved"
        if ran == 0 and rejected:
            return "rejected"
        return f"{ran} remediation(s) tried, none verified"

    async def _await_approval(self, inp: CaseInput, action: ProposedAction) -> tuple[bool, ApprovalInput] | None:
        s = self._state
        assert s is not None
        s.pending_action = action
        self._decision = None
        await self._stage("awaiting_approval", f"{action.action} ({action.safety}) waits for approval",
                          audit_action="case.awaiting_approval", detail={"action": action.action})
        verify = workflow.patched(PATCH_VERIFY_APPROVAL)
        deadline = workflow.now() + timedelta(seconds=inp.approval_timeout_s)
        while True:
            try:
                await workflow.wait_condition(lambda: self._decision is not None,
                                              timeout=max(deadline - workflow.now(), timedelta(milliseconds=1)))
            except TimeoutError:
                return None  # never an approval
            decision = self._decision
            assert decision is not None
            if not verify:
                break
            approved, by = decision
            checked = await verify_approval(workflow.info().workflow_id, inp.org_id, approved, by, action.action)
            if checked is not None:
                decision = (approved, checked)
                self._decision = decision
                break
            self._note(f"{'approve' if approved else 'reject'} claimed by {by.approver or '?'} refused: "
                       "no valid oncall token (audited)")
            self._decision = None
        approved, by = decision
        s.pending_action = None
        await self._audit(by.approver, "case.approve" if approved else "case.reject",
                          {"action": action.action, "note": by.note, "safety": action.safety})
        return decision

    async def _attempt(self, inp: CaseInput, action: ProposedAction, approver: str) -> tuple[bool, str]:
        s = self._state
        assert s is not None
        s.pending_action = action
        await self._stage("remediating", f"{action.action}" + (f" approved by {approver}" if approver else ""))
        result: ActionResult | None = None
        try:
            if action.action == "restart_engine_channel":
                detail = await self._restart(inp, action, approver)
            else:
                result = await workflow.execute_activity(
                    "run_action", ActionInput(s.case_id, inp.org_id, action.action, inp.subject, action.params,
                                              approver),
                    start_to_close_timeout=ACTION_TIMEOUT, retry_policy=STORE_RETRY, result_type=ActionResult)
                detail = result.detail
        except (ActivityError, ChildWorkflowError) as err:
            return False, f"{action.action} failed: {err.cause or err}"
        except ApplicationError as err:
            return False, f"{action.action} failed: {err}"
        s.pending_action = None
        if (action.action == "hold_breaker" and result is not None and result.ok and result.affected > 0
                and workflow.patched(PATCH_HOLD_VERIFIED_BY_DELIVERY)):
            # The action returns once a delivery went through under the hold: that delivery is the verification.
            # A settle window after it would ask a flapping peer to stay up longer than its up-window, and the
            # cool-down (measured from here) already handles the peer going down again by renewing the hold.
            await self._stage("verifying", detail)
            why = f"{result.affected} delivered while the breaker hold stood"
            self._note(f"verification passed: {why}")
            return True, f"{detail}; {why}"
        await self._stage("verifying", detail)
        start = await self._measure(inp)
        await workflow.sleep(timedelta(seconds=max(0.0, inp.settle_s)))
        end = await self._measure(inp, since=start.at)
        ok, why = verify(inp.kind, inp.subject, start, end)
        self._note(f"verification {'passed' if ok else 'failed'}: {why}")
        return ok, f"{detail}; {why}"

    async def _measure(self, inp: CaseInput, since: str = "") -> Measurement:
        m: Measurement = await workflow.execute_activity(
            "measure", MeasureInput(inp.kind, inp.subject, inp.org_id, since),
            start_to_close_timeout=timedelta(seconds=60), retry_policy=STORE_RETRY, result_type=Measurement)
        return m

    async def _restart(self, inp: CaseInput, action: ProposedAction, approver: str) -> str:
        """Restart through EngineRestartWorkflow; if one already runs for the channel, wait for it instead."""
        what, parts = parse_subject(inp.subject)
        engine = action.params.get("engine") or (parts[0] if what == "engine" and parts else "")
        channel = action.params.get("channel") or (parts[1] if what == "engine" and len(parts) > 1 else "")
        if not engine or not channel:
            raise ApplicationError(f"no engine channel in {inp.subject!r}")
        # Restart ids carry the org since the tenant walls; histories recorded before keep the old id.
        with_org = workflow.patched("restart-id-with-org")
        wid = restart_workflow_id(inp.org_id, engine, channel) if with_org else legacy_restart_workflow_id(engine,
                                                                                                           channel)
        try:
            handle = await workflow.start_child_workflow(
                "EngineRestartWorkflow",
                RestartInput(engine, channel, inp.org_id, requested_by=approver or workflow.info().workflow_id,
                             force_halt=action.params.get("halt") == "1"),
                id=wid, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                # No LifelineOrg search attribute on this child: the id carries the org, and a server without the
                # attribute registered (the time-skipping test server) leaves the start hanging in a task retry loop.
                static_summary=f"restart for {inp.kind} case")
        except WorkflowAlreadyStartedError:
            self._note(f"{wid} already running: waiting for it instead of starting a second restart")
            while await workflow.execute_activity("workflow_running", wid, start_to_close_timeout=timedelta(seconds=15),
                                                  retry_policy=STORE_RETRY, result_type=bool):
                await workflow.sleep(RESTART_WAIT)
            return f"waited for the running {wid}"
        await handle
        return f"{wid} done"
