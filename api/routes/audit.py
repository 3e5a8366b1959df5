"""The audit trail: browse it and export it (role auditor); exports are themselves audited."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from api.deps import CurrentUser, PoolDep, guarded
from api.render import to_csv
from api.routes.sla import From, To, period
from infra.store.audit import append as audit
from infra.store.audit import export_audit, list_audit

router = APIRouter(prefix="/api/audit", tags=["audit"])
EXPORT_COLUMNS = ("id", "org_id", "at", "actor", "role", "action", "subject", "detail", "remote_addr", "prev_hash",
                  "hash")


@router.get("", **guarded("auditor"))
async def audit_log(pool: PoolDep, user: CurrentUser, actor: str | None = None,
                    action: Annotated[str | None, Query(description="exact, or a prefix ending in *")] = None,
                    since: datetime | None = None, until: datetime | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Audit rows of the caller's org, newest first."""
    items = await list_audit(pool, user.org, actor=actor, action=action, since=since, until=until, limit=limit,
                             offset=offset)
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/export", **guarded("auditor"))
async def audit_export(request: Request, pool: PoolDep, user: CurrentUser, from_: From = None, to: To = None,
                       format: Literal["csv"] = "csv") -> Response:  # noqa: A002
    """Every audit row of [from, to) as CSV, hashes included for offline verification."""
    start, end = await period(pool, from_, to, timedelta(days=30), max_period=timedelta(days=3660))
    rows = await export_audit(pool, user.org, start, end)
    for r in rows:
        r["detail"] = json.dumps(r["detail"], sort_keys=True)
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="audit.export",
                subject=f"{start.isoformat()}/{end.isoformat()}", detail={"rows": len(rows), "format": format},
                remote_addr=request.client.host if request.client else None)
    return Response(to_csv(EXPORT_COLUMNS, rows), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="audit-{start:%Y%m%d}-{end:%Y%m%d}.csv"'})
