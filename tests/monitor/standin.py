"""A stand-in RemediationCaseWorkflow: records evidence signals, answers `state`, ends on `reject`."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.contract import QUERY_STATE, SIGNAL_EVIDENCE, SIGNAL_REJECT, CaseInput, CaseState, Evidence


@workflow.defn(name="RemediationCaseWorkflow")
class StandInCaseWorkflow:
    def __init__(self) -> None:
        self._state = CaseState(case_id="", kind="", subject="")
        self._closed = False

    @workflow.signal(name=SIGNAL_EVIDENCE)
    def evidence(self, ev: Evidence) -> None:
        self._state.evidence.append(ev)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, _: object = None) -> None:
        self._closed = True

    @workflow.query(name=QUERY_STATE)
    def state(self) -> CaseState:
        return self._state

    @workflow.run
    async def run(self, inp: CaseInput) -> CaseState:
        self._state.case_id = workflow.info().workflow_id
        self._state.kind, self._state.subject, self._state.mode = inp.kind, inp.subject, inp.mode
        await workflow.wait_condition(lambda: self._closed)
        return self._state
