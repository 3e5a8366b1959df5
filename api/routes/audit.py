"""The audit trail: browse it and export it (role auditor); exports are themselves audited."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from api.deps import CurrentUser, Offset, PoolDep, guarded
from api.models import Public
from api.problems import Problem
from api.render import to_csv
from api.routes.sla import From, To, period
from infra.store.audit import append as audit
from infra.store.audit import export_audit, list_audit, parse_head, verify_chain

router = APIRouter(prefix="/api/audit", tags=["audit"])
EXPORT_COLUMNS = ("id", "org_id", "seq", "at", "actor", "role", "action", "subject", "detail", "remote_addr",
                  "key_id", "prev_hash", "hash")


class AuditHeadPublic(Public):
    seq: int
    hash: str


class AuditVerifyPublic(Public):
    ok: bool
    rows: int
    unkeyed: int = Field(description="rows from before the keyed chain, verified unkeyed and sealed by the first "
                                     "keyed row")
    head: AuditHeadPublic | None = Field(description="the org's last row: compare with the logged 'audit head'")
    broken_id: int | None = Field(description="the first bad row's id (None when the tail was deleted)")
    broken_seq: int | None = None
    reason: str = ""


class AuditEntry(Public):
    id: int
    org_id: str
    seq: int = Field(description="the row's place in the org's chain")
    at: datetime
    actor: str = Field(description="who: a token subject, apikey:<name>, or lifeline (the engine itself)")
    role: str | None
    action: str = Field(examples=["message.read_body", "config.change", "remediations.approve"])
    subject: str | None
    detail: dict[str, Any] = Field(description="what the action recorded (ids, reasons, diffs; never PHI)")
    remote_addr: str | None
    key_id: str | None = Field(description="the chain key's id (null: a row from before the keyed chain)")
    prev_hash: str | None = Field(description="hex: the previous row's hash in the org's chain")
    hash: str = Field(description="hex: this row's HMAC (SHA-256 for rows before the keyed chain), over it and"
                                  " prev_hash")


class AuditPage(Public):
    items: list[AuditEntry]
    limit: int
    offset: int


CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {"schema": {"type": "string"}}},
             "description": "CSV with a header row: " + ", ".join(EXPORT_COLUMNS)}}


@router.get("", **guarded("auditor"))
async def audit_log(pool: PoolDep, user: CurrentUser, actor: str | None = None,
                    action: Annotated[str | None, Query(description="exact, or a prefix ending in *")] = None,
                    since: datetime | None = None, until: datetime | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Offset = 0) -> AuditPage:
    """Audit rows of the caller's org, newest first."""
    items = await list_audit(pool, user.org, actor=actor, action=action, since=since, until=until, limit=limit,
                             offset=offset)
    return AuditPage.model_validate({"items": items, "limit": limit, "offset": offset})


@router.get("/verify", response_model=AuditVerifyPublic, **guarded("auditor", 422))
async def audit_verify(pool: PoolDep, user: CurrentUser,
                       head: Annotated[list[str] | None, Query(description="exported heads ORG:SEQ:HASH (from the"
                                                                           " 'audit head' log line)")] = None
                       ) -> AuditVerifyPublic:
    """Recompute the caller's org's keyed audit chain; names the first bad row."""
    try:
        heads = [parse_head(h) for h in head or []]
    except ValueError as exc:
        raise Problem(422, str(exc), field="query.head") from None
    result = await verify_chain(pool, user.org, heads=[h for h in heads if h[0] == user.org])
    last = result.heads.get(user.org)
    return AuditVerifyPublic(ok=result.ok, rows=result.rows, unkeyed=result.unkeyed,
                             head=AuditHeadPublic(seq=last[0], hash=last[1]) if last else None,
                             broken_id=result.broken_id, broken_seq=result.broken_seq, reason=result.reason)


@router.get("/export", response_class=Response, **guarded("auditor", 422, responses=CSV))
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
