"""The remediation REST API and the `temporal` CLI against a real dev server, real PostgreSQL and a worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.approvals import ApprovalActivities
from activities.diagnostics import DiagnosticsActivities
from activities.engines.base import EngineChannel
from activities.remediation import RemediationActivities
from api.app import create_app
from api.auth import mint_token
from infra.config import Destination, Engine, LifelineConfig, MllpOut
from infra.devstack import find_binary
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.healing.fakes import Fakes, proposed, until
from tests.healing.probe_workflow import BackoffProbe
from workflows.contract import (
    ERR_NOT_OWNED,
    SA_ORG,
    SIGNAL_EVIDENCE,
    ActionInput,
    CaseInput,
    CaseState,
    Diagnosis,
    EngineOpInput,
    Evidence,
    PrepareReplayInput,
    PrepareReplayResult,
    ReplayInput,
    case_workflow_id,
    org_attribute,
    replay_workflow_id,
)
from workflows.engine_restart import EngineRestartWorkflow
from workflows.remediation import RemediationCaseWorkflow
from workflows.replay import ReplayWorkflow


def auth(role: str, subject: str = "", org: str = "default") -> dict[str, str]:
    token = mint_token(TEST_JWT_SECRET, subject=subject or f"{role}-user", org=org, roles=[role])
    return {"Authorization": f"Bearer {token}"}


class FakeAdapter:
    kind = "mirth"
    capabilities = frozenset({"start", "stop", "halt"})

    async def list_channels(self) -> list[EngineChannel]:
        return [EngineChannel("c1", "ADT out", "started", "STARTED", queued=2, received=10)]

    async def close(self) -> None:
        return None


@dataclass
class Stack:
    http: httpx.AsyncClient
    client: Client
    fakes: Fakes
    pool: asyncpg.Pool  # the superuser: seeds and cross-org assertions
    task_queue: str
    address: str
    remediation: RemediationActivities
    app_pool: asyncpg.Pool  # lifeline_app, what the activities run as


@pytest.fixture
async def stack(db_url: str, pool: asyncpg.Pool, app_pool: asyncpg.Pool, temporal_env: WorkflowEnvironment,
                task_queue: str) -> AsyncIterator[Stack]:
    client = temporal_env.client
    mllp = MllpOut(host="127.0.0.1", port=9)
    config = LifelineConfig(
        destinations=[Destination(name=task_queue, mllp=mllp), Destination(name="b-lab", org="org-b", mllp=mllp)],
        engines=[Engine(name="mirth1", kind="mirth", url="https://mirth.invalid:8443/api"),
                 Engine(name="mirth-b", org="org-b", kind="mirth", url="https://mirth-b.invalid:8443/api")])
    fakes = Fakes(client)

    async def provider() -> Client:
        return client

    # The activities act as the application role, under row-level security, like the worker.
    diag = DiagnosticsActivities(app_pool, config)
    rem = RemediationActivities(app_pool, provider, config)
    acts = [fakes.diagnose, diag.record_case, diag.record_resolution, fakes.run_action, fakes.measure,
            fakes.notify, rem.audit_event, fakes.engine_status, fakes.engine_control, rem.workflow_running,
            ApprovalActivities(app_pool, TEST_JWT_SECRET).verify_approval]
    address = client.service_client.config.target_host
    app: FastAPI = create_app(make_settings(database_url=db_url, temporal_address=address, task_queue=task_queue),
                              config)
    app.state.adapter_factory = lambda engine: FakeAdapter()
    async with Worker(client, task_queue=task_queue, workflows=[RemediationCaseWorkflow, EngineRestartWorkflow],
                      activities=acts), app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            yield Stack(http, client, fakes, pool, task_queue, address, rem, app_pool)


def problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    if field is not None:
        assert body.get("field") == field, body
    return body


async def test_open_approve_via_rest_is_audited_and_reaches_the_workflow(stack: Stack) -> None:
    stack.fakes.diagnosis = Diagnosis("blocked:render", "blocked", 0.9, actions=proposed("skip_blocked_head"))
    subject = f"destination:{stack.task_queue}"
    problem(await stack.http.post("/api/remediations", json={"kind": "lane_blocked", "subject": subject},
                                  headers=auth("viewer")), 403)
    problem(await stack.http.post("/api/remediations", json={"kind": "nope", "subject": subject},
                                  headers=auth("operator")), 422, "body.kind")
    problem(await stack.http.post("/api/remediations", json={"kind": "manual", "subject": "has space"},
                                  headers=auth("operator")), 422, "body.subject")
    r = await stack.http.post("/api/remediations", json={"kind": "lane_blocked", "subject": subject,
                                                         "mode": "full-auto", "reason": "seen on the wall"},
                              headers=auth("operator"))
    assert r.status_code == 201, r.text
    case_id = r.json()["case_id"]
    assert case_id == case_workflow_id("default", "lane_blocked", subject)
    handle = stack.client.get_workflow_handle(case_id)
    await until(handle, lambda s: s.stage == "awaiting_approval")

    r = await stack.http.get(f"/api/remediations/{case_id}", headers=auth("viewer"))
    assert r.status_code == 200 and r.json()["live"] and r.json()["state"]["pending_action"]["action"] == (
        "skip_blocked_head")
    r = await stack.http.get("/api/remediations", params={"stage": "awaiting_approval"}, headers=auth("viewer"))
    assert [i["case_id"] for i in r.json()["items"]] == [case_id]
    problem(await stack.http.get("/api/remediations", params={"stage": "bogus"}, headers=auth("viewer")), 422,
            "stage")

    body = {"note": "head is a test message"}
    problem(await stack.http.post(f"/api/remediations/{case_id}/approve", json=body, headers=auth("viewer")), 403)
    problem(await stack.http.post(f"/api/remediations/{case_id}/approve", json=body,
                                  headers=auth("operator")), 403)
    problem(await stack.http.post(f"/api/remediations/{case_id}/approve", json={**body, "action": "discard"},
                                  headers=auth("oncall")), 409, "action")
    problem(await stack.http.post("/api/remediations/case:manual:nothing/approve", json=body,
                                  headers=auth("oncall")), 404, "case_id")
    r = await stack.http.post(f"/api/remediations/{case_id}/approve", json=body, headers=auth("oncall", "amy"))
    assert r.status_code == 200, r.text
    assert r.json() == {"case_id": case_id, "decision": "approve", "action": "skip_blocked_head", "approver": "amy"}
    state = await until(handle, lambda s: s.stage in ("verifying", "resolved"))
    assert state.approver == "amy"
    assert stack.fakes.actions == ["skip_blocked_head"]
    problem(await stack.http.post(f"/api/remediations/{case_id}/reject", json=body, headers=auth("oncall")), 409,
            "case_id")
    rows = await stack.pool.fetch("select actor, action, detail from audit_log where subject = $1 order by id",
                                  case_id)
    by_action = {r["action"]: r for r in rows}
    assert by_action["remediations.open"]["actor"] == "operator-user"
    assert by_action["remediations.approve"]["actor"] == "amy"
    assert by_action["case.approve"]["actor"] == "amy"  # written by the workflow itself
    assert by_action["case.approve"]["detail"]["note"] == "head is a test message"
    await handle.terminate("test over")


async def test_cli_signal_with_plain_json_reaches_the_worker(stack: Stack) -> None:
    stack.fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    stack.fakes.fixes = {"reconnect"}
    subject = f"destination:{stack.task_queue}"
    case_id = case_workflow_id("default", "destination_down", subject)
    handle = await stack.client.start_workflow(
        RemediationCaseWorkflow.run, CaseInput("destination_down", subject, mode="manual", settle_s=0.2),
        id=case_id, task_queue=stack.task_queue, start_signal=SIGNAL_EVIDENCE,
        start_signal_args=[Evidence("destination_down", subject, "2024-01-01T00:00:00+00:00", "down")],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
    await until(handle, lambda s: s.stage == "awaiting_approval")
    # The README's CLI form: the signal carries a token from `lifeline token --role oncall` (this worker accepts
    # plain JSON; `lifeline worker` also needs --codec-endpoint, see README).
    oncall = mint_token(TEST_JWT_SECRET, subject="cli", org="default", roles=["oncall"], ttl_seconds=600)
    proc = await asyncio.to_thread(
        subprocess.run,
        [find_binary("temporal"), "workflow", "signal", "--address", stack.address, "--namespace", "default",
         "--workflow-id", case_id, "--name", "approve", "--input",
         json.dumps({"approver": "cli", "note": "ok", "token": oncall})],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    state: CaseState = await asyncio.wait_for(handle.result(), 60)
    assert state.stage == "resolved" and state.approver == "cli"
    row = await stack.pool.fetchrow("select actor, detail from audit_log where action = 'case.approve'"
                                    " and subject = $1", case_id)
    assert row["actor"] == "cli" and row["detail"]["note"] == "ok"
    case = await stack.pool.fetchrow("select stage, approver, mttr_ms from cases where case_id = $1", case_id)
    assert case["stage"] == "resolved" and case["approver"] == "cli" and case["mttr_ms"] is not None


async def test_engines_and_restart(stack: Stack) -> None:
    r = await stack.http.get("/api/engines", headers=auth("viewer"))
    assert r.json()["items"][0]["name"] == "mirth1"
    r = await stack.http.get("/api/engines/mirth1/channels", headers=auth("viewer"))
    assert r.status_code == 200 and r.json()["items"][0]["id"] == "c1"
    problem(await stack.http.get("/api/engines/nope/channels", headers=auth("viewer")), 404, "engine")
    stack.fakes.transition_polls = 3
    url = f"/api/engines/mirth1/channels/{stack.task_queue}/restart"
    problem(await stack.http.post(url, json={}, headers=auth("oncall")), 403)
    r = await stack.http.post(url, json={"reason": "stuck"}, headers=auth("operator"))
    assert r.status_code == 202, r.text
    problem(await stack.http.post(url, json={}, headers=auth("operator")), 409, "channel")
    result = await stack.client.get_workflow_handle(r.json()["workflow_id"]).result()
    assert result["stage"] == "done" if isinstance(result, dict) else result.stage == "done"
    assert [op for _, op in stack.fakes.ops] == ["stop", "start"]


async def test_reconnect_resets_the_backoff_of_started_deliveries(stack: Stack) -> None:
    from tests.healing.test_diagnosis import seed

    calls: list[int] = []

    @activity.defn(name="deliver")
    async def deliver() -> int:
        calls.append(activity.info().attempt)
        if len(calls) == 1:
            raise RuntimeError("refused")
        return len(calls)

    dest = f"r{stack.task_queue[-6:]}"
    await seed(stack.pool, dest, "refused", 1)
    wid = await stack.pool.fetchval("select workflow_id from deliveries where destination = $1", dest)
    tq = f"{stack.task_queue}-probe"
    async with Worker(stack.client, task_queue=tq, workflows=[BackoffProbe], activities=[deliver]):
        handle = await stack.client.start_workflow(BackoffProbe.run, id=wid, task_queue=tq)
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

        async def provider() -> Client:
            return stack.client

        rem = RemediationActivities(stack.app_pool, provider, LifelineConfig())
        result = await rem.run_action(ActionInput("case:destination_down:x", "default", "reconnect",
                                                  f"destination:{dest}"))
        assert result.ok and result.affected == 1, result
        assert await asyncio.wait_for(handle.result(), 30) == 2  # retried now, not after an hour


# -- tenant walls: org "default" (A) must not reach org-b's (B) engines, destinations, cases or replays ------------

async def test_org_a_cannot_open_or_feed_a_case_on_org_b_subjects(stack: Stack) -> None:
    stack.fakes.diagnosis = Diagnosis("engine:STOPPED", "stopped", 0.9, actions=proposed("restart_engine_channel"))
    b_subject = "engine:mirth-b:c1"
    r = await stack.http.post("/api/remediations", json={"kind": "engine_channel_stopped", "subject": b_subject,
                                                         "mode": "manual"}, headers=auth("operator", org="org-b"))
    assert r.status_code == 201, r.text
    b_case = r.json()["case_id"]
    assert b_case == case_workflow_id("org-b", "engine_channel_stopped", b_subject) == (
        "case:org-b:engine_channel_stopped:engine:mirth-b:c1")
    handle = stack.client.get_workflow_handle(b_case)
    before = await until(handle, lambda s: s.stage == "awaiting_approval")
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(SearchAttributeKey.for_keyword(SA_ORG)) == "org-b"

    # A full-auto case on B's engine (restart without approval) and evidence for B's case: both refused.
    for subject in (b_subject, "destination:b-lab", "engine:mirth-b:other"):
        problem(await stack.http.post("/api/remediations", json={"kind": "engine_channel_stopped", "subject": subject,
                                                                 "mode": "full-auto"}, headers=auth("operator")),
                404, "subject")
    problem(await stack.http.get(f"/api/remediations/{b_case}", headers=auth("viewer")), 404, "case_id")
    problem(await stack.http.post(f"/api/remediations/{b_case}/approve", json={}, headers=auth("oncall")), 404,
            "case_id")
    problem(await stack.http.post("/api/engines/mirth-b/channels/c1/restart", json={}, headers=auth("operator")),
            404, "engine")
    after = await handle.query("state", result_type=CaseState)
    assert after.evidence_count == before.evidence_count == 1
    assert after.org_id == "org-b" and after.case_id == b_case
    r = await stack.http.get("/api/remediations", headers=auth("viewer"))
    assert b_case not in [i["case_id"] for i in r.json()["items"]]
    assert await stack.pool.fetchval("select count(*) from audit_log where org_id = 'default' and subject = $1",
                                     b_case) == 0
    await handle.terminate("test over")


async def test_activities_refuse_another_orgs_engine_and_destination(stack: Stack) -> None:
    """Even a case of org A that somehow names B's subject cannot act on it: the activities check the owner."""
    rem = stack.remediation
    for call in (rem.engine_control(EngineOpInput("mirth-b", "c1", "stop", "default")),
                 rem.engine_status(EngineOpInput("mirth-b", "c1", "status", "default")),
                 rem.run_action(ActionInput("case:default:x:y", "default", "pause_destination", "destination:b-lab")),
                 rem.run_action(ActionInput("case:default:x:y", "default", "discard", "destination:mine",
                                            params={"destination": "b-lab"})),
                 rem.run_action(ActionInput("case:default:x:y", "default", "clear_queue", "engine:mirth-b:c1"))):
        with pytest.raises(ApplicationError) as err:
            await call
        assert err.value.type == ERR_NOT_OWNED and err.value.non_retryable
    assert await stack.pool.fetchval("select count(*) from destination_state") == 0


@activity.defn(name="prepare_replay")
async def _prepare_nothing(inp: PrepareReplayInput) -> PrepareReplayResult:
    return PrepareReplayResult([])


async def test_replay_progress_of_another_org_is_not_found(stack: Stack, task_queue: str) -> None:
    tq = f"{task_queue}-replay"
    wid = replay_workflow_id("org-b:1,2")
    async with Worker(stack.client, task_queue=tq, workflows=[ReplayWorkflow], activities=[_prepare_nothing]):
        await stack.client.execute_workflow(ReplayWorkflow.run, ReplayInput("org-b", [1, 2], "b-user"), id=wid,
                                            task_queue=tq, search_attributes=org_attribute("org-b"))
        r = await stack.http.get(f"/api/replays/{wid}", headers=auth("viewer", org="org-b"))
        assert r.status_code == 200 and r.json()["org_id"] == "org-b", r.text
        problem(await stack.http.get(f"/api/replays/{wid}", headers=auth("viewer")), 404, "workflow_id")
