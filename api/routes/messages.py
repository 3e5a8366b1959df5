"""Messages: list, detail with per-destination status; the body only for PHI readers, and audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from activities.store import load_body
from api.deps import CurrentUser, Offset, PoolDep, SettingsDep, guarded
from api.models import Public, StoredFinding
from api.problems import Problem
from api.redact import for_user
from infra.store.audit import append as audit
from infra.store.messages import get_message, list_messages

router = APIRouter(prefix="/api/messages", tags=["messages"])
PHI_TEXT = "peer text: redacted to its ACK/HTTP head unless the caller reads PHI (operator, admin)"


class MessageSummary(Public):
    id: str
    channel: str
    received_at: datetime
    status: Literal["accepted", "rejected", "routed", "unrouted"]
    message_type: str = Field(examples=["ADT^A01"])
    control_id: str = Field(description="MSH-10")
    version: str = Field(description="MSH-12")
    sending_app: str
    sending_facility: str
    size_bytes: int
    ack_code: str = Field(description="the ACK code answered: AA, AE or AR")
    source: str = Field(description="mllp | rest | file | sftp")
    findings: list[StoredFinding]
    dispatched_at: datetime | None
    config_version: int | None = Field(description="the configuration version it was routed with")


class MessageList(Public):
    items: list[MessageSummary]
    limit: int
    offset: int


class Attempt(Public):
    destination: str
    attempt: int
    at: datetime
    outcome: str = Field(description="delivered | failed | rejected | ...")
    error_class: str | None
    error: str | None = Field(description=PHI_TEXT)
    peer_answer: str | None = Field(description=PHI_TEXT)
    duration_ms: int | None


class Delivery(Public):
    destination: str
    status: str = Field(description="pending | started | delivered | dead_lettered | skipped | filtered")
    lane: str | None = Field(description="the ordered lane (per destination or key), when the destination is ordered")
    attempts: int
    workflow_id: str
    workflow_url: str = Field(description="the DeliveryWorkflow in the Temporal Web UI")
    created_at: datetime
    started_at: datetime | None
    first_attempt_at: datetime | None
    finished_at: datetime | None
    latency_ms: int | None
    last_error: str | None = Field(description=PHI_TEXT)
    peer_answer: str | None = Field(description=PHI_TEXT)
    replay_count: int
    filter_reason: str | None
    config_version: int | None
    attempt_history: list[Attempt]


class MessageDetail(MessageSummary):
    deliveries: list[Delivery]
    body: str | None = Field(default=None, description="?include=body only (PHI readers; the read is audited)")


@router.get("", **guarded("viewer"))
async def messages(pool: PoolDep, user: CurrentUser, channel: str | None = None,
                   type: Annotated[str | None, Query(description="ADT^A01, ADT^*")] = None,  # noqa: A002
                   status: Literal["accepted", "rejected", "routed", "unrouted"] | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Offset = 0) -> MessageList:
    """Messages of the caller's org, newest first."""
    items = await list_messages(pool, user.org, channel=channel, message_type=type, status=status, since=since,
                                until=until, limit=limit, offset=offset)
    return MessageList.model_validate({"items": items, "limit": limit, "offset": offset})


@router.get("/{message_id}", response_model=MessageDetail, response_model_exclude_unset=True,
            **guarded("viewer", 404))
async def message(message_id: str, request: Request, pool: PoolDep, settings: SettingsDep, user: CurrentUser,
                  include: Literal["body"] | None = None) -> Any:
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
