"""Remediation cases (RemediationCaseWorkflow), their approval by on-call staff, and engine channel restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
from activities.engines.base import EngineAdapter, EngineChannel, EngineError
from api.auth import Principal, approval_token
from api.deps import ConfigDep, CurrentUser, Offset, PoolDep, SettingsDep, TemporalDep, guarded
from api.models import Public
from api.problems import Problem
from infra.config import Engine, LifelineConfig
from infra.store import cases
from infra.store.audit import append as audit
from workflows.contract import (
    CASE_KINDS,
    QUERY_STATE,
    QUERY_TIMEOUT_S,
    SA_CASE_KIND,
    SA_STATUS,
    SIGNAL_APPROVE,
    SIGNAL_EVIDENCE,
    SIGNAL_REJECT,
    ApprovalInput,
    CaseInput,
    CaseState,
    Diagnosis,
    Evidence,
    RestartInput,
    case_workflow_id,
    org_attribute,
    restart_workflow_id,
)

router = APIRouter(tags=["remediations"])
# Without a worker a query waits: the request hung (found by Schemathesis).
QUERY_TIMEOUT = timedelta(seconds=QUERY_TIMEOUT_S)
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


class CaseRecord(Public):
    """A case run as the store recorded it (kept after the workflow closes)."""

    case_id: str
    run_id: str
    kind: str
    subject: str
    stage: str = Field(description=" | ".join(STAGES))
    mode: str
    signature: str = Field(description="the diagnosed error signature (refused, timeout, ack_reject:207, ...)")
    opened_at: datetime
    first_evidence_at: datetime | None
    onset_at: datetime | None
    resolved_at: datetime | None
    mttd_ms: int | None = Field(description="time to detect: onset to first evidence")
    mttr_ms: int | None = Field(description="time to resolve")
    action: str | None = Field(description="the pending or last action")
    approver: str | None
    evidence_count: int
    diagnosis: Diagnosis | None
    attempts: list[dict[str, str]] = Field(description="remediations tried, with their outcome")
    updated_at: datetime


class CaseList(Public):
    items: list[CaseRecord]
    limit: int
    offset: int


class CaseView(Public):
    case_id: str
    live: bool = Field(description="the workflow runs and answered its state query")
    state: CaseState | None = Field(description="the live workflow state (null when it does not run)")
    record: CaseRecord | None


class CaseOpened(Public):
    case_id: str = Field(examples=["case:default:destination_down:destination:lab"])
    run_id: str | None


class DecisionTaken(Public):
    case_id: str
    decision: Literal["approve", "reject"]
    action: str
    approver: str


class EnginePublic(Public):
    name: str
    kind: str
    url: str | None
    channels: list[str] = Field(description="the channels watched (empty: all)")


class EngineList(Public):
    items: list[EnginePublic]


class EngineChannels(Public):
    engine: str
    capabilities: list[str] = Field(description="what the adapter can do: start, stop, pause, clear_queue, ...")
    items: list[EngineChannel]


class RestartStarted(Public):
    workflow_id: str = Field(description="restart:<org>:<engine>:<channel>")
    run_id: str | None


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _row(pool: Any, org: str, case_id: str) -> dict[str, Any] | None:
    return await cases.latest_case(pool, org, case_id)


async def _query(client: Client, case_id: str, *, answer_required: bool = False) -> CaseState | None:
    """The running case's state; None when it does not run. A query waits for a worker to answer it: without one
    (workers down) it is given up after QUERY_TIMEOUT, a 503 when the caller needs the answer."""
    try:
        state: CaseState | None = await client.get_workflow_handle(case_id).query(
            QUERY_STATE, result_type=CaseState, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if answer_required and exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise Problem(503, f"case {case_id!r} did not answer: is a Lifeline worker running?",
                          field="case_id") from None
        return None
    except WorkflowQueryFailedError:
        return None
    return state


@router.get("/api/remediations", **guarded("viewer", 422))
async def list_cases(pool: PoolDep, user: CurrentUser, kind: str | None = None, stage: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Offset = 0) -> CaseList:
    """Remediation cases of the caller's org, newest first."""
    if kind is not None and kind not in CASE_KINDS:
        raise Problem(422, f"unknown case kind {kind!r}; kinds are {', '.join(CASE_KINDS)}", field="kind")
    if stage is not None and stage not in STAGES:
        raise Problem(422, f"unknown stage {stage!r}; stages are {', '.join(STAGES)}", field="stage")
    items = await cases.list_cases(pool, user.org, kind=kind, stage=stage, limit=limit, offset=offset)
    return CaseList.model_validate({"items": items, "limit": limit, "offset": offset})


@router.get("/api/remediations/{case_id:path}", **guarded("viewer", 404, 422))
async def get_case(case_id: str, pool: PoolDep, client: TemporalDep, user: CurrentUser) -> CaseView:
    """A case: the live workflow state when it runs, else the recorded row."""
    _check_case_id(case_id)
    row = await _row(pool, user.org, case_id)
    state = await _query(client, case_id)
    if state is not None and (state.org_id or "default") == user.org:
        return CaseView.model_validate({"case_id": case_id, "live": True, "state": state, "record": row})
    if row is None:
        raise Problem(404, f"no case {case_id!r}", field="case_id")
    return CaseView.model_validate({"case_id": case_id, "live": False, "state": None, "record": row})


def _check_case_id(case_id: str) -> None:
    if not case_id.startswith("case:"):
        raise Problem(422, "not a case id (case:<kind>:<subject>)", field="case_id")


@router.post("/api/remediations", status_code=201, **guarded("operator", 404))
async def open_case(body: CaseCreate, request: Request, pool: PoolDep, client: TemporalDep, settings: SettingsDep,
                    config: ConfigDep, user: CurrentUser) -> CaseOpened:
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
    return CaseOpened(case_id=case_id, run_id=handle.result_run_id)


async def _decide(case_id: str, body: Decision, request: Request, pool: Any, client: Client, user: Principal,
                  approve: bool) -> DecisionTaken:
    _check_case_id(case_id)
    state = await _query(client, case_id, answer_required=True)
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
    return DecisionTaken(case_id=case_id, decision=signal, action=action, approver=user.subject)  # type: ignore[arg-type]


@router.post("/api/remediations/{case_id:path}/approve", **guarded("oncall", 404, 409, 422))
async def approve(case_id: str, body: Decision, request: Request, pool: PoolDep, client: TemporalDep,
                  user: CurrentUser) -> DecisionTaken:
    """Approve the action the case waits on; the approver is the caller."""
    return await _decide(case_id, body, request, pool, client, user, True)


@router.post("/api/remediations/{case_id:path}/reject", **guarded("oncall", 404, 409, 422))
async def reject(case_id: str, body: Decision, request: Request, pool: PoolDep, client: TemporalDep,
                 user: CurrentUser) -> DecisionTaken:
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
async def engines(config: ConfigDep, user: CurrentUser) -> EngineList:
    """Interface engines Lifeline watches (credentials never leave the environment)."""
    return EngineList(items=[EnginePublic(name=e.name, kind=e.kind, url=e.url, channels=e.channels)
                             for e in config.engines if e.org == user.org])


@router.get("/api/engines/{engine}/channels", **guarded("viewer", 404, 502))
async def engine_channels(engine: str, request: Request, config: ConfigDep, user: CurrentUser) -> EngineChannels:
    """The engine's channels with their state and statistics, as its adapter reads them."""
    adapter = _build_adapter(request, _engine(config, user, engine))
    try:
        channels = await adapter.list_channels()
    except EngineError as exc:
        raise Problem(502, f"engine {engine!r} did not answer: {exc}", field="engine") from None
    finally:
        await adapter.close()
    return EngineChannels(engine=engine, capabilities=sorted(adapter.capabilities), items=channels)


@router.post("/api/engines/{engine}/channels/{channel:path}/restart", status_code=202,
             **guarded("operator", 404, 409, 422))
async def restart_channel(engine: str, channel: str, body: RestartRequest, request: Request, pool: PoolDep,
                          client: TemporalDep, settings: SettingsDep, config: ConfigDep,
                          user: CurrentUser) -> RestartStarted:
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
    return RestartStarted(workflow_id=wid, run_id=handle.result_run_id)
