"""Messages: list, detail with per-destination status; the body only for PHI readers, and audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from activities.store import load_body
from api.deps import CurrentUser, PoolDep, SettingsDep, guarded
from api.problems import Problem
from api.redact import for_user
from infra.store.audit import append as audit
from infra.store.messages import get_message, list_messages

router = APIRouter(prefix="/api/messages", tags=["messages"])


@router.get("", **guarded("viewer"))
async def messages(pool: PoolDep, user: CurrentUser, channel: str | None = None,
                   type: Annotated[str | None, Query(description="ADT^A01, ADT^*")] = None,  # noqa: A002
                   status: Literal["accepted", "rejected", "routed", "unrouted"] | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Messages of the caller's org, newest first."""
    items = await list_messages(pool, user.org, channel=channel, message_type=type, status=status, since=since,
                                until=until, limit=limit, offset=offset)
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/{message_id}", **guarded("viewer"))
async def message(message_id: str, request: Request, pool: PoolDep, settings: SettingsDep, user: CurrentUser,
                  include: Literal["body"] | None = None) -> dict[str, Any]:
    """One message with per-destination status, attempts and Web UI links; ?include=body for PHI readers."""
    if include == "body" and not user.can_read_phi:
        raise Problem(403, "reading message bodies needs role operator or admin", field="include",
                      required_role="operator")
    found = await get_message(pool, user.org, message_id)
    if found is None:
        raise Problem(404, f"no message {message_id!r}", field="message_id")
    ui = settings.temporal_ui_url.rstrip("/")
    for d in found["deliveries"]:
        d["workflow_url"] = f"{ui}/namespaces/{settings.temporal_namespace}/workflows/{d['workflow_id']}"
    found = dict(for_user(found, user))
    if include == "body":
        found["body"] = await load_body(pool, request.app.state.store_cipher, message_id, user.org)
        await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="message.read_body",
                    subject=message_id, remote_addr=request.client.host if request.client else None)
    return found
