"""verify_approval: an approve / reject signal proves who sent it with a Lifeline token (invariant 10).

Whatever the door (REST, dashboard, `temporal workflow signal`, the Web UI), the workflow asks this activity before it
acts; a refusal is written to the audit log of the case's org, naming who the signal claimed to be and why.
"""

from __future__ import annotations

import logging

import asyncpg
from temporalio import activity

from activities.store import audit
from api.auth import AuthError, verify_token
from workflows.contract import ACTIVITY_VERIFY_APPROVAL, APPROVER_ROLE, VerifyApprovalInput, VerifyApprovalResult

log = logging.getLogger("lifeline.approvals")


class ApprovalActivities:
    """Built once per worker with the JWT secret and the store (audit, revocations)."""

    def __init__(self, pool: asyncpg.Pool, jwt_secret: str, issuer: str = "lifeline") -> None:
        self.pool = pool
        self.secret = jwt_secret
        self.issuer = issuer

    async def check(self, inp: VerifyApprovalInput) -> VerifyApprovalResult:
        if not inp.token:
            return VerifyApprovalResult(False, reason="no token: an approval must carry a Lifeline token with role "
                                                      f"{APPROVER_ROLE}")
        if not self.secret:
            return VerifyApprovalResult(False, reason="this worker has no LIFELINE_JWT_SECRET to verify tokens with")
        try:
            principal = verify_token(self.secret, inp.token, self.issuer)
        except AuthError as exc:
            return VerifyApprovalResult(False, reason=str(exc))
        if principal.jti and await _revoked(self.pool, principal.jti, principal.org):
            return VerifyApprovalResult(False, reason="token revoked")
        if not principal.satisfies(APPROVER_ROLE):
            return VerifyApprovalResult(False, reason=f"token of {principal.subject} lacks role {APPROVER_ROLE}")
        if principal.org != inp.org_id:
            return VerifyApprovalResult(False, reason=f"token is for org {principal.org!r}, the case is not")
        return VerifyApprovalResult(True, subject=principal.subject)

    @activity.defn(name=ACTIVITY_VERIFY_APPROVAL)
    async def verify_approval(self, inp: VerifyApprovalInput) -> VerifyApprovalResult:
        """Verify the token an approve / reject signal carries; audit a refusal."""
        result = await self.check(inp)
        if not result.ok:
            log.warning("%s on %s claimed by %r refused: %s", inp.decision, inp.workflow_id, inp.claimed, result.reason)
            await audit(self.pool, org_id=inp.org_id, actor=inp.claimed or "unknown", role=None,
                        action="approval.refused", subject=inp.workflow_id,
                        detail={"decision": inp.decision, "action": inp.action, "reason": result.reason})
        return result


async def _revoked(pool: asyncpg.Pool, jti: str, org: str) -> bool:
    from infra.store.tokens import is_revoked

    return await is_revoked(pool, jti, org)
