"""EngineRestartWorkflow: stop → (halt) → (approved queue clearing) → start → verify, one per engine channel.

Its id `restart:<engine>:<channel>` is what keeps restarts of one channel from overlapping (invariant 7):
Temporal refuses a second run of a running id.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.approval import verify_approval
    from workflows.contract import (
        PATCH_VERIFY_APPROVAL,
        QUERY_STATE,
        SIGNAL_APPROVE,
        SIGNAL_REJECT,
        ApprovalInput,
        AuditInput,
        EngineOpInput,
        EngineStatus,
        RestartInput,
        RestartState,
    )
    from workflows.policies import STORE_RETRY

POLL = timedelta(seconds=2)
VERIFY_SETTLE = timedelta(seconds=10)
ERR_RESTART_FAILED = "RestartFailed"
# Engine calls: short timeouts, a few quick retries; the workflow's own deadlines bound the whole phase.
ENGINE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=10), maximum_attempts=5,
                           non_retryable_error_types=["ActionUnsupported", "EngineUnknown"])


@workflow.defn(name="EngineRestartWorkflow")
class EngineRestartWorkflow:
    def __init__(self) -> None:
        self._state: RestartState | None = None
        self._decision: ApprovalInput | None = None
        self._approved = False

    @workflow.query(name=QUERY_STATE)
    def state(self) -> RestartState | None:
        return self._state

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, inp: ApprovalInput) -> None:
        if self._state is not None and self._state.awaiting_approval and self._decision is None:
            self._decision, self._approved = inp, True

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, inp: ApprovalInput) -> None:
        if self._state is not None and self._state.awaiting_approval and self._decision is None:
            self._decision, self._approved = inp, False

    def _stage(self, stage: str, note: str = "") -> None:
        assert self._state is not None
        self._state.stage = stage
        self._state.history.append(f"{workflow.now().isoformat()} {stage}" + (f": {note}" if note else ""))

    async def _op(self, inp: RestartInput, op: str) -> int:
        result: int = await workflow.execute_activity(
            "engine_control", EngineOpInput(inp.engine, inp.channel, op, inp.org_id),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=ENGINE_RETRY, result_type=int)
        return result

    async def _status(self, inp: RestartInput) -> EngineStatus:
        st: EngineStatus = await workflow.execute_activity(
            "engine_status", EngineOpInput(inp.engine, inp.channel, "status", inp.org_id),
            start_to_close_timeout=timedelta(seconds=15), retry_policy=ENGINE_RETRY, result_type=EngineStatus)
        assert self._state is not None
        self._state.raw_state = st.raw_state or st.state
        return st

    async def _wait_for(self, inp: RestartInput, wanted: str, timeout_s: float) -> EngineStatus:
        deadline = workflow.now() + timedelta(seconds=timeout_s)
        st = await self._status(inp)
        while st.state != wanted and workflow.now() < deadline:
            await workflow.sleep(POLL)
            st = await self._status(inp)
        return st

    async def _audit(self, inp: RestartInput, actor: str, action: str, detail: dict[str, str]) -> None:
        await workflow.execute_activity(
            "audit_event", AuditInput(inp.org_id, actor, action, workflow.info().workflow_id, detail),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY)

    @workflow.run
    async def run(self, inp: RestartInput) -> RestartState:
        self._state = RestartState(inp.engine, inp.channel)
        stopped = False
        try:
            self._stage("stopping")
            before = await self._status(inp)
            if before.state != "stopped" and inp.force_halt and "halt" in before.capabilities:
                self._stage("halting", f"stuck {before.raw_state or before.state}: forced halt, then start")
                await self._op(inp, "halt")
                st = await self._wait_for(inp, "stopped", inp.stop_timeout_s)
                if st.state != "stopped":
                    raise ApplicationError(f"channel did not halt (state {st.raw_state or st.state})",
                                           type=ERR_RESTART_FAILED)
            elif before.state != "stopped":
                await self._op(inp, "stop")
                st = await self._wait_for(inp, "stopped", inp.stop_timeout_s)
                if st.state != "stopped":
                    if "halt" not in before.capabilities:
                        raise ApplicationError(f"channel did not stop within {inp.stop_timeout_s:g}s "
                                               f"(state {st.raw_state or st.state}) and the engine cannot halt",
                                               type=ERR_RESTART_FAILED)
                    self._stage("halting", f"still {st.raw_state or st.state} after {inp.stop_timeout_s:g}s")
                    await self._op(inp, "halt")
                    st = await self._wait_for(inp, "stopped", inp.stop_timeout_s)
                    if st.state != "stopped":
                        raise ApplicationError(f"channel did not halt (state {st.raw_state or st.state})",
                                               type=ERR_RESTART_FAILED)
            stopped = True
            if inp.clear_queue:
                await self._clear(inp)
            self._stage("starting")
            await self._op(inp, "start")
            st = await self._wait_for(inp, "started", inp.start_timeout_s)
            if st.state != "started":
                raise ApplicationError(f"channel did not start within {inp.start_timeout_s:g}s "
                                       f"(state {st.raw_state or st.state})", type=ERR_RESTART_FAILED)
            stopped = False
            self._stage("verifying")
            await workflow.sleep(VERIFY_SETTLE)
            after = await self._status(inp)
            moving = (after.received, after.sent) != (st.received, st.sent)
            if after.state != "started":
                raise ApplicationError(f"channel fell back to {after.raw_state or after.state} after starting",
                                       type=ERR_RESTART_FAILED)
            self._stage("done", "statistics moving" if moving else "started and stayed started")
            await self._audit(inp, inp.requested_by or "lifeline", "engine.restart",
                              {"outcome": "done", "moving": str(moving)})
        except (ActivityError, ApplicationError) as err:
            cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
            self._state.error = str(cause)
            if stopped:
                # Compensation: never leave a channel stopped because a later step failed.
                try:
                    await self._op(inp, "start")
                    self._state.history.append(f"{workflow.now().isoformat()} compensated: start sent")
                except ActivityError as exc:
                    self._state.history.append(f"{workflow.now().isoformat()} compensation failed: {exc.cause}")
            self._stage("failed", self._state.error)
            await self._audit(inp, inp.requested_by or "lifeline", "engine.restart",
                              {"outcome": "failed", "error": self._state.error[:500]})
            await workflow.wait_condition(workflow.all_handlers_finished)
            raise ApplicationError(f"restart of {inp.engine}/{inp.channel} failed: {self._state.error}",
                                   type=ERR_RESTART_FAILED, non_retryable=True) from None
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state

    async def _clear(self, inp: RestartInput) -> None:
        """Destructive: runs only on an explicit `approve` (invariant 6); a timeout skips it, never approves."""
        assert self._state is not None
        self._stage("awaiting_approval", "clearing the queue needs an approve signal")
        self._state.awaiting_approval = True
        verify = workflow.patched(PATCH_VERIFY_APPROVAL)
        deadline = workflow.now() + timedelta(seconds=inp.approval_timeout_s)
        while True:
            try:
                await workflow.wait_condition(lambda: self._decision is not None,
                                              timeout=max(deadline - workflow.now(), timedelta(milliseconds=1)))
            except TimeoutError:
                break
            if not verify or self._decision is None:
                break
            checked = await verify_approval(workflow.info().workflow_id, inp.org_id, self._approved, self._decision,
                                            "clear_queue")
            if checked is not None:
                self._decision = checked
                break
            self._state.history.append(f"{workflow.now().isoformat()} {'approve' if self._approved else 'reject'} "
                                       f"claimed by {self._decision.approver or '?'} refused: no valid oncall token")
            self._decision = None
        self._state.awaiting_approval = False
        d = self._decision
        if d is not None and self._approved:
            self._stage("clearing", f"approved by {d.approver}")
            await self._audit(inp, d.approver, "engine.clear_queue.approve", {"note": d.note})
            n = await self._op(inp, "clear_queue")
            self._state.history.append(f"{workflow.now().isoformat()} cleared {n} message(s)")
        elif d is not None:
            self._state.history.append(f"{workflow.now().isoformat()} clearing rejected by {d.approver}")
            await self._audit(inp, d.approver, "engine.clear_queue.reject", {"note": d.note})
        else:
            self._state.history.append(f"{workflow.now().isoformat()} clearing skipped: approval timed out")
            await self._audit(inp, "lifeline", "engine.clear_queue.timeout", {})
