"""Remediation cases (RemediationCaseWorkflow), their approval by on-call staff, and engine channel restarts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.engines import build_adapter
from activities.engines.base import EngineAdapter, EngineError
from api.auth import Principal, approval_token
from api.deps import ConfigDep, CurrentUser, PoolDep, SettingsDep, TemporalDep, guarded
from api.problems import Problem
from infra.config import Engine, LifelineConfig
from infra.store import cases
from infra.store.audit import append as audit
from workflows.contract import (
    CASE_KINDS,
    QUERY_STATE,
    SA_CASE_KIND,
    SA_STATUS,
    SIGNAL_APPROVE,
    SIGNAL_EVIDENCE,
    SIGNAL_REJECT,
    ApprovalInput,
    CaseInput,
    CaseState,
    Evidence,
    RestartInput,
    case_workflow_id,
    org_attribute,
    restart_workflow_id,
)

router = APIRouter(tags=["remediations"])
STAGES = ("detected", "diagnosing", "awaiting_approval", "remediating", "verifying", "resolved", "escalated",
          "rejected")
_SUBJECT = r"^[A-Za-z0-9_.:-]{1,200}$"


class CaseCreate(BaseModel):
    kind: Literal[CASE_KINDS] = "manual"  # type: ignore[valid-type]
    subject: Annotated[str, Field(pattern=_SUBJECT, description="destination:<name>, engine:<engine>:<channel>,"
                                                               " channel:<name>")]
    mode: Literal["manual", "semi-auto", "full-auto"] | None = None
    reason: str = Field(default="", max_length=500, description="kept in the audit log, not in the workflow")


class Decision(BaseModel):
    note: str = Field(default="", max_length=500)
    action: str | None = Field(default=None, max_length=64, description="the pending action this decision is for")


class RestartRequest(BaseModel):
    clear_queue: bool = False
    reason: str = Field(default="", max_length=500)


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _row(pool: Any, org: str, case_id: str) -> dict[str, Any] | None:
    return await cases.latest_case(pool, org, case_id)


async def _query(client: Client, case_id: str) -> CaseState | None:
    try:
        state: CaseState | None = await client.get_workflow_handle(case_id).query(QUERY_STATE,
                                                                                  result_type=CaseState)
    except (RPCError, WorkflowQueryFailedError):
        return None
    return state


@router.get("/api/remediations", **guarded("viewer"))
async def list_cases(pool: PoolDep, user: CurrentUser, kind: str | None = None, stage: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Remediation cases of the caller's org, newest first."""
    if kind is not None and kind not in CASE_KINDS:
        raise Problem(422, f"unknown case kind {kind!r}; kinds are {', '.join(CASE_KINDS)}", field="kind")
    if stage is not None and stage not in STAGES:
        raise Problem(422, f"unknown stage {stage!r}; stages are {', '.join(STAGES)}", field="stage")
    items = await cases.list_cases(pool, user.org, kind=kind, stage=stage, limit=limit, offset=offset)
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/api/remediations/{case_id:path}", **guarded("viewer"))
async def get_case(case_id: str, pool: PoolDep, client: TemporalDep, user: CurrentUser) -> dict[str, Any]:
    """A case: the live workflow state when it runs, else the recorded row."""
    _check_case_id(case_id)
    row = await _row(pool, user.org, case_id)
    state = await _query(client, case_id)
    if state is not None and (state.org_id or "default") == user.org:
        return {"case_id": case_id, "live": True, "state": dataclasses.asdict(state), "record": row}
    if row is None:
        raise Problem(404, f"no case {case_id!r}", field="case_id")
    return {"case_id": case_id, "live": False, "state": None, "record": row}


def _check_case_id(case_id: str) -> None:
    if not case_id.startswith("case:"):
        raise Problem(422, "not a case id (case:<kind>:<subject>)", field="case_id")


@router.post("/api/remediations", status_code=201, **guarded("operator"))
async def open_case(body: CaseCreate, request: Request, pool: PoolDep, client: TemporalDep, settings: SettingsDep,
                    config: ConfigDep, user: CurrentUser) -> dict[str, Any]:
    """Open a case by hand (or add evidence to the open case for the same kind and subject)."""
    kind: str = body.kind
    if not config.owns(user.org, body.subject):
        # Unknown and another org's subjects look the same: the caller learns nothing about other tenants.
        raise Problem(404, f"no destination, channel or engine {body.subject!r} in your org", field="subject")
    case_id = case_workflow_id(user.org, kind, body.subject)
    inp = CaseInput(kind, body.subject, user.org, body.mode or config.remediation.mode,
                    config.remediation.approval_timeout.total_seconds(), opened_by=user.subject,
                    settle_s=config.remediation.settle.total_seconds())
    ev = Evidence(kind, body.subject, datetime.now(UTC).isoformat(), f"opened by hand by {user.subject}",
                  signature="")
    handle = await client.start_workflow(
        "RemediationCaseWorkflow", inp, id=case_id, task_queue=settings.task_queue,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=org_attribute(
            user.org, SearchAttributePair(SearchAttributeKey.for_keyword(SA_CASE_KIND), kind),
            SearchAttributePair(SearchAttributeKey.for_keyword(SA_STATUS), "detected")),
        static_summary=f"{kind} {body.subject} (opened by {user.subject})")
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="remediations.open",
                subject=case_id, detail={"kind": kind, "subject": body.subject, "reason": body.reason,
                                         "run_id": handle.result_run_id}, remote_addr=_remote(request))
    return {"case_id": case_id, "run_id": handle.result_run_id}


async def _decide(case_id: str, body: Decision, request: Request, pool: Any, client: Client, user: Principal,
                  approve: bool) -> dict[str, Any]:
    _check_case_id(case_id)
    state = await _query(client, case_id)
    if state is None or (state.org_id or "default") != user.org:
        raise Problem(404, f"no running case {case_id!r}", field="case_id")
    if state.stage != "awaiting_approval" or state.pending_action is None:
        raise Problem(409, f"case is {state.stage}, not awaiting approval", field="case_id")
    if body.action and body.action != state.pending_action.action:
        raise Problem(409, f"pending action is {state.pending_action.action!r}, not {body.action!r}", field="action")
    action = state.pending_action.action
    signal = SIGNAL_APPROVE if approve else SIGNAL_REJECT
    try:
        await client.get_workflow_handle(case_id).signal(
            signal, ApprovalInput(user.subject, body.note, action, token=approval_token(request, user)))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(404, f"no running case {case_id!r}", field="case_id") from None
        raise
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles),
                action=f"remediations.{signal}", subject=case_id, detail={"action": action, "note": body.note},
                remote_addr=_remote(request))
    return {"case_id": case_id, "decision": signal, "action": action, "approver": user.subject}


@router.post("/api/remediations/{case_id:path}/approve", **guarded("oncall"))
async def approve(case_id: str, body: Decision, request: Request, pool: PoolDep, client: TemporalDep,
                  user: CurrentUser) -> dict[str, Any]:
    """Approve the action the case waits on; the approver is the caller."""
    return await _decide(case_id, body, request, pool, client, user, True)


@router.post("/api/remediations/{case_id:path}/reject", **guarded("oncall"))
async def reject(case_id: str, body: Decision, request: Request, pool: PoolDep, client: TemporalDep,
                 user: CurrentUser) -> dict[str, Any]:
    """Reject the action the case waits on; the case moves to its next action."""
    return await _decide(case_id, body, request, pool, client, user, False)


# -- engines ---------------------------------------------------------------------------------------------------

def _engine(config: LifelineConfig, user: Principal, name: str) -> Engine:
    for e in config.engines:
        if e.name == name and e.org == user.org:
            return e
    raise Problem(404, f"no engine {name!r}", field="engine")


def _build_adapter(request: Request, engine: Engine) -> EngineAdapter:
    factory = getattr(request.app.state, "adapter_factory", None)  # tests put a stand-in here
    if factory is not None:
        adapter: EngineAdapter = factory(engine)
        return adapter
    try:
        return build_adapter(engine, pool=request.app.state.pool, config=request.app.state.config)
    except EngineError as exc:
        raise Problem(503, f"engine {engine.name!r} has no adapter: {exc}", field="engine") from None


@router.get("/api/engines", **guarded("viewer"))
async def engines(config: ConfigDep, user: CurrentUser) -> dict[str, Any]:
    """Interface engines Lifeline watches (credentials never leave the environment)."""
    return {"items": [{"name": e.name, "kind": e.kind, "url": e.url, "channels": e.channels}
                      for e in config.engines if e.org == user.org]}


@router.get("/api/engines/{engine}/channels", **guarded("viewer"))
async def engine_channels(engine: str, request: Request, config: ConfigDep, user: CurrentUser) -> dict[str, Any]:
    """The engine's channels with their state and statistics, as its adapter reads them."""
    adapter = _build_adapter(request, _engine(config, user, engine))
    try:
        channels = await adapter.list_channels()
    except EngineError as exc:
        raise Problem(502, f"engine {engine!r} did not answer: {exc}", field="engine") from None
    finally:
        await adapter.close()
    return {"engine": engine, "capabilities": sorted(adapter.capabilities),
            "items": [dataclasses.asdict(c) for c in channels]}


@router.post("/api/engines/{engine}/channels/{channel:path}/restart", status_code=202, **guarded("operator"))
async def restart_channel(engine: str, channel: str, body: RestartRequest, request: Request, pool: PoolDep,
                          client: TemporalDep, settings: SettingsDep, config: ConfigDep,
                          user: CurrentUser) -> dict[str, Any]:
    """Restart one engine channel (EngineRestartWorkflow); 409 while a restart of it runs."""
    _engine(config, user, engine)
    if not channel or len(channel) > 200:
        raise Problem(422, "channel must be 1-200 characters", field="channel")
    wid = restart_workflow_id(user.org, engine, channel)
    inp = RestartInput(engine, channel, user.org, clear_queue=body.clear_queue, requested_by=user.subject,
                       approval_timeout_s=config.remediation.approval_timeout.total_seconds())
    try:
        handle = await client.start_workflow("EngineRestartWorkflow", inp, id=wid, task_queue=settings.task_queue,
                                             id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                                             search_attributes=org_attribute(user.org),
                                             static_summary=f"restart requested by {user.subject}")
    except WorkflowAlreadyStartedError:
        raise Problem(409, f"a restart of {engine}/{channel} is already running", field="channel",
                      workflow_id=wid) from None
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="engines.restart",
                subject=wid, detail={"clear_queue": body.clear_queue, "reason": body.reason},
                remote_addr=_remote(request))
    return {"workflow_id": wid, "run_id": handle.result_run_id}
