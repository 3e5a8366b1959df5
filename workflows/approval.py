"""The workflow side of invariant 10: an approve / reject counts only once verify_approval vouches for its token."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.contract import (
        ACTIVITY_VERIFY_APPROVAL,
        ApprovalInput,
        VerifyApprovalInput,
        VerifyApprovalResult,
    )
    from workflows.policies import STORE_RETRY


async def verify_approval(workflow_id: str, org_id: str, approved: bool, by: ApprovalInput,
                          action: str) -> ApprovalInput | None:
    """The decision with the verified subject as approver, or None when its token proves no oncall person."""
    result = await workflow.execute_activity(
        ACTIVITY_VERIFY_APPROVAL,
        VerifyApprovalInput(by.token, org_id or "default", workflow_id, by.approver,
                            "approve" if approved else "reject", action),
        start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY, result_type=VerifyApprovalResult)
    if not result.ok:
        return None
    # Who approved is who the token names; the token itself is not kept in workflow state.
    return ApprovalInput(result.subject, by.note, by.action)
