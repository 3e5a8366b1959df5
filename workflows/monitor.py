"""FlowMonitorWorkflow: one metrics snapshot, the detectors over it, one case per finding (signal-with-start).

Started by the Temporal Schedule MONITOR_SCHEDULE_ID every `monitor.interval` (overlap SKIP); each run is short.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.contract import (
        CaseInput,
        EvaluateSlaInput,
        EvaluateSlaResult,
        FlowMonitorInput,
        FlowMonitorResult,
        OpenCaseInput,
        OpenCaseResult,
        Snapshot,
        SnapshotInput,
    )
    from workflows.detectors import detect, subject_orgs
    from workflows.policies import MONITOR_RETRY


@workflow.defn(name="FlowMonitorWorkflow")
class FlowMonitorWorkflow:
    @workflow.run
    async def run(self, inp: FlowMonitorInput) -> FlowMonitorResult:
        snap = await workflow.execute_activity(
            "snapshot", SnapshotInput(window_s=inp.window_s), result_type=Snapshot,
            start_to_close_timeout=timedelta(seconds=60), retry_policy=MONITOR_RETRY)
        findings = detect(snap, inp.thresholds, snap.baselines)
        orgs = subject_orgs(snap)
        task_queue = inp.case_task_queue or workflow.info().task_queue
        opened = await asyncio.gather(*(
            workflow.execute_activity(
                "open_or_feed_case",
                OpenCaseInput(evidence=ev, task_queue=task_queue, case=CaseInput(
                    kind=ev.kind, subject=ev.subject, org_id=orgs.get(ev.subject, "default"), mode=inp.mode,
                    approval_timeout_s=inp.approval_timeout_s, notify_url=inp.notify_url, settle_s=inp.settle_s,
                    cooldown_s=inp.cooldown_s)),
                result_type=OpenCaseResult, start_to_close_timeout=timedelta(seconds=30),
                retry_policy=MONITOR_RETRY)
            for ev in findings))
        if inp.evaluate_sla:
            try:
                await workflow.execute_activity(
                    "evaluate_sla", EvaluateSlaInput(), result_type=EvaluateSlaResult,
                    start_to_close_timeout=timedelta(seconds=60), retry_policy=MONITOR_RETRY)
            except ActivityError as exc:
                # SLA bookkeeping failing must not stop detection; the next run evaluates again.
                workflow.logger.warning("flow monitor: SLA evaluation failed: %s", exc.cause or exc)
        if findings:
            workflow.logger.info("flow monitor: %d finding(s): %s", len(findings),
                                 ", ".join(f"{e.kind} {e.subject}" for e in findings))
        return FlowMonitorResult(observed_at=snap.observed_at, findings=len(findings),
                                 cases=[r.workflow_id for r in opened])
