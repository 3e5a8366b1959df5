"""Dead letters, their replay (ReplayWorkflow) and blocked ordered lanes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator
from temporalio.client import WorkflowQueryFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.deps import ConfigDep, CurrentUser, PoolDep, SettingsDep, TemporalDep, guarded
from api.problems import Problem
from api.redact import for_user
from infra.store.audit import append as audit
from infra.store.deliveries import blocked_lanes, list_dead_letters, open_dead_letter_ids
from workflows.contract import QUERY_PROGRESS, ReplayInput, ReplayProgress, org_attribute, replay_workflow_id

router = APIRouter(tags=["dead letters"])
MAX_REPLAY = 5000


class ReplayFilter(BaseModel):
    destination: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ReplayRequest(BaseModel):
    ids: list[int] | None = Field(default=None, min_length=1, max_length=MAX_REPLAY)
    filter: ReplayFilter | None = None
    reason: str = Field(default="", max_length=500)
    with_current_config: bool = False  # re-render with the current configuration version, not the pinned one

    @model_validator(mode="after")
    def _one(self) -> ReplayRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either ids or filter")
        return self


@router.get("/api/dead-letters", **guarded("viewer"))
async def dead_letters(pool: PoolDep, user: CurrentUser, destination: str | None = None,
                       status: Literal["open", "replayed", "discarded"] | None = "open",
                       since: datetime | None = None, until: datetime | None = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Dead letters of the caller's org with their attempt history."""
    items = await list_dead_letters(pool, user.org, destination=destination, status=status, since=since,
                                    until=until, limit=limit, offset=offset)
    return {"items": for_user(items, user), "limit": limit, "offset": offset}


@router.post("/api/dead-letters/replay", status_code=202, **guarded("operator"))
async def replay(body: ReplayRequest, request: Request, pool: PoolDep, client: TemporalDep,
                 settings: SettingsDep, user: CurrentUser) -> dict[str, Any]:
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
    return {"workflow_id": wf_id, "count": len(ids), "ids": ids}


@router.get("/api/replays/{workflow_id}", **guarded("viewer"))
async def replay_progress(workflow_id: str, client: TemporalDep, user: CurrentUser) -> dict[str, Any]:
    """Progress of a ReplayWorkflow."""
    if not workflow_id.startswith("replay:"):
        raise Problem(422, "not a replay workflow id", field="workflow_id")
    try:
        progress = await client.get_workflow_handle(workflow_id).query(QUERY_PROGRESS, result_type=ReplayProgress)
    except (RPCError, WorkflowQueryFailedError):
        raise Problem(404, f"no replay {workflow_id!r}", field="workflow_id") from None
    if progress.org_id != user.org:  # another org's replay is not there for this caller (nor one without an org)
        raise Problem(404, f"no replay {workflow_id!r}", field="workflow_id")
    return {"workflow_id": workflow_id, **progress.__dict__}


@router.get("/api/lanes/blocked", **guarded("viewer"))
async def lanes_blocked(pool: PoolDep, config: ConfigDep, user: CurrentUser) -> dict[str, Any]:
    """Ordered lanes held up by a dead-lettered head (policy `block`)."""
    blocking = [d.name for d in config.destinations if d.ordered and d.on_dead_letter == "block"]
    return {"items": await blocked_lanes(pool, user.org, blocking)}
