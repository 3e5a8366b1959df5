"""Finding 3 (approvals by anyone who reaches Temporal): an approve / reject signal counts only when it carries a
Lifeline token with role oncall for the case's org that verify_approval (the real activity) accepts; a refusal is
noted in the case and audited; the verified subject is the approver; a worker drops signals sent around the codec."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.approvals import ApprovalActivities
from api.auth import mint_token
from infra.crypto import Cipher, data_converter
from infra.store.tokens import revoke
from tests.conftest import TEST_JWT_SECRET
from tests.healing.fakes import Fakes, proposed, until
from tests.healing.test_remediation_workflow import open_case, subject
from workflows.contract import SIGNAL_APPROVE, SIGNAL_REJECT, ApprovalInput, CaseState, Diagnosis
from workflows.engine_restart import EngineRestartWorkflow
from workflows.remediation import RemediationCaseWorkflow


def token(role: str, *, org: str = "default", subject: str = "oncall-alice") -> str:
    return mint_token(TEST_JWT_SECRET, subject=subject, org=org, roles=[role], ttl_seconds=600)


@pytest.fixture
async def rig(skip_env: WorkflowEnvironment, app_pool: asyncpg.Pool,
              cipher: Cipher) -> AsyncIterator[tuple[Client, Fakes, str]]:
    tq = f"approve-{uuid.uuid4().hex[:8]}"
    fakes = Fakes(skip_env.client)
    acts = [a for a in fakes.activities() if a != fakes.verify_approval]
    # Verification reads revocations and writes the audit log as the application role, under row-level security.
    acts.append(ApprovalActivities(app_pool, TEST_JWT_SECRET).verify_approval)
    # The worker's client refuses unencrypted payloads, as `lifeline worker` does.
    strict = Client(skip_env.client.service_client, namespace=skip_env.client.namespace,
                    data_converter=data_converter(cipher, refuse_plain=True))
    async with Worker(strict, task_queue=tq, workflows=[RemediationCaseWorkflow, EngineRestartWorkflow],
                      activities=acts):
        yield skip_env.client, fakes, tq


async def refusals(pool: asyncpg.Pool, case_id: str) -> list[str]:
    rows = await pool.fetch("select actor, detail from audit_log where action = 'approval.refused' and subject = $1"
                            " order by id", case_id)
    return [f"{r['actor']}: {r['detail']['reason']}" for r in rows]


async def test_only_a_verified_oncall_token_approves(rig: tuple[Client, Fakes, str], pool: asyncpg.Pool) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    handle = await open_case(client, tq, "destination_down", subject(), mode="manual")
    await until(handle, lambda s: s.stage == "awaiting_approval")
    case_id = handle.id

    revoked = token("oncall", subject="oncall-bob")
    from api.auth import verify_token
    claims = verify_token(TEST_JWT_SECRET, revoked)
    await revoke(pool, jti=claims.jti or "", org_id="default", revoked_by="test", expires_at=claims.expires_at or 0)
    attempts = [
        ApprovalInput("mallory", "trust me"),  # no token: `temporal workflow signal` with a made-up name
        ApprovalInput("mallory", "", token="not.a.jwt"),
        ApprovalInput("mallory", "", token=mint_token("other-secret-" + "y" * 40, subject="m", org="default",
                                                      roles=["oncall"])),
        ApprovalInput("victor", "", token=token("viewer", subject="victor")),
        ApprovalInput("oscar", "", token=token("oncall", org="other-org", subject="oscar")),
        ApprovalInput("oncall-bob", "", token=revoked),
    ]
    for n, attempt in enumerate(attempts, start=1):
        await handle.signal(SIGNAL_APPROVE, attempt)

        async def refused(n: int = n) -> bool:
            return len(await refusals(pool, case_id)) >= n

        for _ in range(150):
            if await refused():
                break
            await asyncio.sleep(0.1)
    reasons = await refusals(pool, case_id)
    assert len(reasons) == 6, reasons
    assert reasons[0].startswith("mallory: no token")
    assert "invalid token" in reasons[1] and "Signature verification failed" in reasons[2]
    assert "lacks role oncall" in reasons[3] and "org 'other-org'" in reasons[4] and "revoked" in reasons[5]
    state = await handle.query("state", result_type=CaseState)
    assert state.stage == "awaiting_approval" and fakes.actions == []  # nothing ran
    assert sum("refused" in h for h in state.history) == 6

    # A real oncall token approves; the token's subject is the approver, whatever name the signal claims.
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("someone-else", "go", token=token("oncall")))
    state = await handle.result()
    assert state.stage == "resolved" and fakes.actions == ["reconnect"] and state.approver == "oncall-alice"
    assert ("case.approve", "oncall-alice") in [(a.action, a.actor) for a in fakes.audits]


async def test_reject_needs_a_token_too(rig: tuple[Client, Fakes, str], pool: asyncpg.Pool) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    handle = await open_case(client, tq, "destination_down", subject(), mode="manual")
    await until(handle, lambda s: s.stage == "awaiting_approval")
    await handle.signal(SIGNAL_REJECT, ApprovalInput("mallory", "no"))
    await until(handle, lambda s: any("refused" in h for h in s.history))
    assert (await handle.query("state", result_type=CaseState)).stage == "awaiting_approval"
    await handle.signal(SIGNAL_REJECT, ApprovalInput("x", "needs the vendor", token=token("oncall")))
    await until(handle, lambda s: s.stage in ("rejected", "escalated") or any("reject" in a.get("outcome", "")
                                                                             for a in s.attempts))


async def test_worker_drops_a_signal_sent_without_the_codec(rig: tuple[Client, Fakes, str],
                                                            pool: asyncpg.Pool) -> None:
    client, fakes, tq = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    handle = await open_case(client, tq, "destination_down", subject(), mode="manual")
    await until(handle, lambda s: s.stage == "awaiting_approval")
    plain = Client(client.service_client, namespace=client.namespace)  # no codec: what a bare CLI sends
    await plain.get_workflow_handle(handle.id).signal(SIGNAL_APPROVE,
                                                      ApprovalInput("mallory", "", token=token("oncall")))
    # The signal is in history, and the worker has completed a workflow task after it (it was processed and
    # dropped): nothing was decided, no verification was even attempted, and a proper signal still works.
    for _ in range(150):
        events = (await client.get_workflow_handle(handle.id).fetch_history()).events
        signalled = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
        done = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
        if signalled and done and done[-1] > signalled[-1]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the worker never processed the unencrypted signal")
    state = await handle.query("state", result_type=CaseState)
    assert state.stage == "awaiting_approval" and not any("mallory" in h for h in state.history)
    assert await refusals(pool, handle.id) == []
    await handle.signal(SIGNAL_APPROVE, ApprovalInput("alice", "go", token=token("oncall")))
    assert (await handle.result()).stage == "resolved"
