"""Dead letters, their replay (ReplayWorkflow) and blocked ordered lanes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator
from temporalio.client import WorkflowQueryFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ConfigDep, CurrentUser, Offset, PoolDep, SettingsDep, TemporalDep, guarded
from api.models import Public
from api.problems import Problem
from api.redact import for_user
from infra.store.audit import append as audit
from infra.store.deliveries import blocked_lanes, list_dead_letters, open_dead_letter_ids
from workflows.contract import (
    QUERY_PROGRESS,
    QUERY_TIMEOUT_S,
    ReplayInput,
    ReplayProgress,
    org_attribute,
    replay_workflow_id,
)

router = APIRouter(tags=["dead letters"])
MAX_REPLAY = 5000
QUERY_TIMEOUT = timedelta(seconds=QUERY_TIMEOUT_S)


class ReplayFilter(BaseModel):
    destination: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ReplayRequest(BaseModel):
    # Dead-letter ids are bigints: a larger one was a 500 from PostgreSQL (found by Schemathesis).
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(default=None, min_length=1,
                                                                        max_length=MAX_REPLAY)
    filter: ReplayFilter | None = None
    reason: str = Field(default="", max_length=500)
    with_current_config: bool = False  # re-render with the current configuration version, not the pinned one

    @model_validator(mode="after")
    def _one(self) -> ReplayRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either ids or filter")
        return self


PHI_TEXT = "peer text: redacted to its ACK/HTTP head unless the caller reads PHI (operator, admin)"


class DeadLetterAttempt(Public):
    """One attempt as recorded when the delivery was dead-lettered (a stored snapshot: members may be missing)."""

    attempt: int | None = None
    at: str | None = Field(default=None, description="ISO 8601")
    outcome: str | None = None
    error_class: str | None = None
    error: str | None = Field(default=None, description=PHI_TEXT)
    peer_answer: str | None = Field(default=None, description=PHI_TEXT)
    duration_ms: int | None = None


class DeadLetter(Public):
    id: int
    message_id: str
    destination: str
    channel: str
    message_type: str
    created_at: datetime
    error_type: str
    reason: str = Field(description=PHI_TEXT)
    attempts: list[DeadLetterAttempt] = Field(description="the attempt history when it was dead-lettered")
    status: Literal["open", "replayed", "discarded"]
    replay_workflow_id: str | None
    resolved_at: datetime | None
    resolved_by: str | None


class DeadLetterList(Public):
    items: list[DeadLetter]
    limit: int
    offset: int


class ReplayStarted(Public):
    workflow_id: str = Field(description="replay:<hash of the selection>; GET /api/replays/{workflow_id}")
    count: int
    ids: list[int]


class ReplayStatus(Public):
    workflow_id: str
    total: int
    started: int
    delivered: int
    failed: int
    workflow_ids: list[str] = Field(description="the DeliveryWorkflows it started")
    org_id: str


class BlockedLane(Public):
    destination: str
    lane: str
    head_message_id: str = Field(description="the dead-lettered head holding the lane")
    blocked_since: datetime | None
    waiting: int = Field(description="deliveries pending behind the head")


class BlockedLanes(Public):
    items: list[BlockedLane]


@router.get("/api/dead-letters", response_model_exclude_unset=True, **guarded("viewer"))
async def dead_letters(pool: PoolDep, user: CurrentUser, destination: str | None = None,
                       status: Literal["open", "replayed", "discarded"] | None = "open",
                       since: datetime | None = None, until: datetime | None = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Offset = 0) -> DeadLetterList:
    """Dead letters of the caller's org with their attempt history."""
    items = await list_dead_letters(pool, user.org, destination=destination, status=status, since=since,
                                    until=until, limit=limit, offset=offset)
    return DeadLetterList.model_validate({"items": for_user(items, user), "limit": limit, "offset": offset})


@router.post("/api/dead-letters/replay", status_code=202, **guarded("operator", 404))
async def replay(body: ReplayRequest, request: Request, pool: PoolDep, client: TemporalDep,
                 settings: SettingsDep, user: CurrentUser) -> ReplayStarted:
    """Re-deliver dead letters by ids or by filter through a ReplayWorkflow."""
    if body.ids is not None:
        ids = await open_dead_letter_ids(pool, user.org, ids=body.ids)
    else:
        f = body.filter
        assert f is not None
        ids = await open_dead_letter_ids(pool, user.org, destination=f.destination, since=f.since, until=f.until,
                                         limit=MAX_REPLAY)
    if not ids:
        raise Problem(404, "no open dead letter matches", field="ids" if body.ids is not None else "filter")
    wf_id = replay_workflow_id(f"{user.org}:{','.join(map(str, ids))}")
    try:
        await client.start_workflow("ReplayWorkflow",
                                    ReplayInput(user.org, ids, user.subject, body.with_current_config), id=wf_id,
                                    task_queue=settings.task_queue, search_attributes=org_attribute(user.org),
                                    static_summary=f"replay of {len(ids)} dead letter(s)")
    except WorkflowAlreadyStartedError:
        pass  # the same selection submitted twice while its replay has not prepared yet: one replay serves both
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="dead_letters.replay",
                subject=wf_id, detail={"ids": ids, "reason": body.reason,
                                       "with_current_config": body.with_current_config},
                remote_addr=request.client.host if request.client else None)
    return ReplayStarted(workflow_id=wf_id, count=len(ids), ids=ids)


@router.get("/api/replays/{workflow_id}", **guarded("viewer", 404, 422))
async def replay_progress(workflow_id: str, client: TemporalDep, user: CurrentUser) -> ReplayStatus:
    """Progress of a ReplayWorkflow."""
    if not workflow_id.startswith("replay:"):
        raise Problem(422, "not a replay workflow id", field="workflow_id")
    try:
        progress = await client.get_workflow_handle(workflow_id).query(QUERY_PROGRESS, result_type=ReplayProgress,
                                                                        rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise Problem(503, f"replay {workflow_id!r} did not answer: is a Lifeline worker running?",
                          field="workflow_id") from None
        raise Problem(404, f"no replay {workflow_id!r}", field="workflow_id") from None
    except WorkflowQueryFailedError:
        raise Problem(404, f"no replay {workflow_id!r}", field="workflow_id") from None
    if progress.org_id != user.org:  # another org's replay is not there for this caller (nor one without an org)
        raise Problem(404, f"no replay {workflow_id!r}", field="workflow_id")
    return ReplayStatus(workflow_id=workflow_id, **progress.__dict__)


@router.get("/api/lanes/blocked", **guarded("viewer"))
async def lanes_blocked(pool: PoolDep, config: ConfigDep, user: CurrentUser) -> BlockedLanes:
    """Ordered lanes held up by a dead-lettered head (policy `block`)."""
    blocking = [d.name for d in config.destinations if d.ordered and d.on_dead_letter == "block"]
    return BlockedLanes.model_validate({"items": await blocked_lanes(pool, user.org, blocking)})
