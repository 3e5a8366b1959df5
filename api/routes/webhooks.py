"""Webhook subscriptions of the caller's org: create, list, read, change, delete, test, and their deliveries."""

from __future__ import annotations

import secrets as pysecrets
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from activities.subscriptions import EventLinks, event_body, new_secret, post_signed, seal_secret
from api.deps import CurrentUser, PoolDep, SettingsDep, guarded
from api.models import Public
from api.problems import Problem
from infra.settings import Settings
from infra.ssrf import AddressRefused, Guard
from infra.store import webhooks as store
from infra.store.audit import append as audit
from workflows.contract import (
    EVENT_TYPES,
    WEBHOOK_RETRY_INITIAL_S,
    WEBHOOK_RETRY_MAXIMUM_ATTEMPTS,
    WEBHOOK_RETRY_MAXIMUM_S,
    WEBHOOK_TEST_EVENT,
)

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])
MAX_FILTERS = 100
BIGINT = 2**63 - 1  # ids are bigints: a larger number must be a 422, not PostgreSQL's 500


class WebhookFields(BaseModel):
    description: str = Field(default="", max_length=500)
    events: list[str] = Field(min_length=1, max_length=MAX_FILTERS,
                              description="event types, 'case.*' style prefixes, or '*'")
    channels: list[str] = Field(default_factory=list, max_length=MAX_FILTERS, description="empty: every channel")
    destinations: list[str] = Field(default_factory=list, max_length=MAX_FILTERS)
    message_types: list[str] = Field(default_factory=list, max_length=MAX_FILTERS, description="globs: 'ADT^*'")
    enabled: bool = True
    max_attempts: int = Field(default=WEBHOOK_RETRY_MAXIMUM_ATTEMPTS, ge=1, le=100)
    initial_interval_s: float = Field(default=WEBHOOK_RETRY_INITIAL_S, gt=0, le=3600)
    maximum_interval_s: float = Field(default=WEBHOOK_RETRY_MAXIMUM_S, gt=0, le=86400)


class WebhookCreate(WebhookFields):
    url: str = Field(max_length=2000)
    secret: str | None = Field(default=None, min_length=16, max_length=200,
                               description="HMAC secret; generated (and shown once) when omitted")


class WebhookUpdate(BaseModel):
    url: str | None = Field(default=None, max_length=2000)
    description: str | None = Field(default=None, max_length=500)
    events: list[str] | None = Field(default=None, min_length=1, max_length=MAX_FILTERS)
    channels: list[str] | None = Field(default=None, max_length=MAX_FILTERS)
    destinations: list[str] | None = Field(default=None, max_length=MAX_FILTERS)
    message_types: list[str] | None = Field(default=None, max_length=MAX_FILTERS)
    enabled: bool | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    initial_interval_s: float | None = Field(default=None, gt=0, le=3600)
    maximum_interval_s: float | None = Field(default=None, gt=0, le=86400)
    rotate_secret: bool = Field(default=False, description="issue a new secret (returned once)")


class WebhookPublic(WebhookFields):
    model_config = ConfigDict(extra="forbid")  # a response: no undeclared member (api.models.Public)

    id: str
    url: str
    created_at: datetime
    created_by: str
    updated_at: datetime
    last_seq: int = Field(description="the last sequence number given to an event of this subscription")
    queue: dict[str, int] = Field(default_factory=dict,
                                  description="sends by status: pending, delivered, dead_lettered (not replayed)")


class WebhookWithSecret(WebhookPublic):
    secret: str | None = Field(default=None, description="shown only when created or rotated")


class WebhookList(Public):
    items: list[WebhookPublic]


class TestResult(Public):
    ok: bool
    status: int | None = None
    error_type: str = ""
    error: str = ""
    latency_ms: int = 0


class WebhookDelivery(Public):
    id: int
    subscription_id: str
    event_id: int
    event_type: str
    seq: int
    status: str
    attempts: int
    next_at: datetime
    last_error: str | None = None
    response_status: int | None = None
    replay_of: int | None = None
    replayed_at: datetime | None = None
    created_at: datetime
    finished_at: datetime | None = None


class DeliveryPage(Public):
    items: list[WebhookDelivery]
    next_cursor: int | None = Field(default=None, description="pass as `before` for the next (older) page")


class ReplayRequest(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=BIGINT)]] | None = Field(default=None, min_length=1, max_length=5000,
                                  description="dead-lettered delivery ids; omitted: every one not yet replayed")


class ReplayResult(Public):
    queued: list[int]


def guard_for(request: Request, settings: Settings) -> Guard:
    """The SSRF guard with the operator's allow-list (tests may set app.state.webhook_resolver)."""
    return Guard(settings.webhook_allow_networks, getattr(request.app.state, "webhook_resolver", None))


def check_events(events: list[str]) -> list[str]:
    for i, name in enumerate(events):
        if name == "*":
            continue
        if name.endswith(".*") and any(t.startswith(name[:-1]) for t in EVENT_TYPES):
            continue
        if name not in EVENT_TYPES:
            raise Problem(422, f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)} (or 'case.*', '*')",
                          field=f"events[{i}]")
    return list(dict.fromkeys(events))


async def check_url(request: Request, settings: Settings, url: str) -> None:
    try:
        await guard_for(request, settings).check(url)
    except AddressRefused as exc:
        raise Problem(422, f"url refused: {exc}", field="url") from None


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _public(pool: Any, org: str, row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "queue": await store.counts(pool, org, row["id"])}


async def _owned(pool: Any, org: str, sub_id: str) -> dict[str, Any]:
    row = await store.get(pool, org, sub_id)
    if row is None:
        raise Problem(404, f"no webhook subscription {sub_id!r}", field="id")
    return row


@router.post("", status_code=201, response_model=WebhookWithSecret, **guarded("admin", 422))
async def create_webhook(body: WebhookCreate, request: Request, pool: PoolDep, settings: SettingsDep,
                         user: CurrentUser) -> dict[str, Any]:
    """Subscribe a URL to events of the caller's org; the response shows the signing secret once."""
    events = check_events(body.events)
    await check_url(request, settings, body.url)
    sub_id = "wh_" + pysecrets.token_hex(8)
    secret = body.secret or new_secret()
    secret_enc, key_id = seal_secret(request.app.state.store_cipher, sub_id, secret)
    row = await store.create(pool, user.org, sub_id=sub_id, url=body.url, description=body.description,
                             events=events, channels=body.channels, destinations=body.destinations,
                             message_types=body.message_types, secret_enc=secret_enc, key_id=key_id,
                             max_attempts=body.max_attempts, initial_interval_s=body.initial_interval_s,
                             maximum_interval_s=body.maximum_interval_s, created_by=user.subject)
    if not body.enabled:
        row = await store.update(pool, user.org, sub_id, {"enabled": False}) or row
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="webhook.create",
                subject=sub_id, detail={"url": body.url, "events": events}, remote_addr=_remote(request))
    return {**await _public(pool, user.org, row), "secret": secret}


@router.get("", response_model=WebhookList, **guarded("operator"))
async def list_webhooks(pool: PoolDep, user: CurrentUser) -> dict[str, Any]:
    """The caller's org's subscriptions (secrets are never listed)."""
    return {"items": [await _public(pool, user.org, r) for r in await store.list_subscriptions(pool, user.org)]}


@router.get("/{sub_id}", response_model=WebhookPublic, **guarded("operator", 404))
async def get_webhook(sub_id: str, pool: PoolDep, user: CurrentUser) -> dict[str, Any]:
    """One subscription with its queue counts."""
    return await _public(pool, user.org, await _owned(pool, user.org, sub_id))


@router.patch("/{sub_id}", response_model=WebhookWithSecret, **guarded("admin", 404, 422))
async def update_webhook(sub_id: str, body: WebhookUpdate, request: Request, pool: PoolDep,
                         settings: SettingsDep, user: CurrentUser) -> dict[str, Any]:
    """Change a subscription (only the fields given); `rotate_secret` issues a new secret, returned once."""
    await _owned(pool, user.org, sub_id)
    changes = body.model_dump(exclude_unset=True, exclude={"rotate_secret"})
    changes = {k: v for k, v in changes.items() if v is not None}
    if "events" in changes:
        changes["events"] = check_events(changes["events"])
    if "url" in changes:
        await check_url(request, settings, changes["url"])
    secret = None
    if body.rotate_secret:
        secret = new_secret()
        changes["secret_enc"], changes["key_id"] = seal_secret(request.app.state.store_cipher, sub_id, secret)
    row = await store.update(pool, user.org, sub_id, changes)
    if row is None:
        raise Problem(404, f"no webhook subscription {sub_id!r}", field="id")
    detail = {k: v for k, v in changes.items() if k not in ("secret_enc", "key_id")}
    detail["rotate_secret"] = body.rotate_secret
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="webhook.update",
                subject=sub_id, detail=detail, remote_addr=_remote(request))
    return {**await _public(pool, user.org, row), "secret": secret}


@router.delete("/{sub_id}", status_code=204, response_class=Response, **guarded("admin", 404))
async def delete_webhook(sub_id: str, request: Request, pool: PoolDep, user: CurrentUser) -> Response:
    """Remove a subscription and its delivery records; nothing more is sent to it."""
    row = await _owned(pool, user.org, sub_id)
    if not await store.delete(pool, user.org, sub_id):
        raise Problem(404, f"no webhook subscription {sub_id!r}", field="id")
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="webhook.delete",
                subject=sub_id, detail={"url": row["url"]}, remote_addr=_remote(request))
    return Response(status_code=204)


@router.post("/{sub_id}/test", response_model=TestResult, **guarded("admin", 404))
async def test_webhook(sub_id: str, request: Request, pool: PoolDep, settings: SettingsDep,
                       user: CurrentUser) -> dict[str, Any]:
    """Send one signed `webhook.test` event now (same checks, headers and signature as real events; not
    queued, no sequence number) and report the receiver's answer."""
    import httpx

    from activities.subscriptions import H_EVENT, H_SUBSCRIPTION, open_secret

    row = await _owned(pool, user.org, sub_id)
    sealed = await store.secret(pool, user.org, sub_id)
    assert sealed is not None
    secret = open_secret(request.app.state.store_cipher, sub_id, *sealed)
    links = EventLinks(settings.public_url, settings.temporal_ui_url, settings.temporal_namespace)
    body = event_body(event_id=None, event_type=WEBHOOK_TEST_EVENT, occurred_at=datetime.now().astimezone(),
                      org_id=user.org, subject=sub_id, data={"requested_by": user.subject},
                      subscription=sub_id, sequence=0, attempt=1, redelivery=False, links=links)
    async with httpx.AsyncClient() as http:
        outcome = await post_signed(http, guard_for(request, settings), row["url"], secret, body,
                                    headers={H_EVENT: WEBHOOK_TEST_EVENT, H_SUBSCRIPTION: sub_id})
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="webhook.test",
                subject=sub_id, detail={"ok": outcome.ok, "status": outcome.status, "error_type": outcome.error_type},
                remote_addr=_remote(request))
    return {"ok": outcome.ok, "status": outcome.status, "error_type": outcome.error_type, "error": outcome.error,
            "latency_ms": outcome.latency_ms}


@router.get("/{sub_id}/deliveries", response_model=DeliveryPage, **guarded("operator", 404))
async def webhook_deliveries(sub_id: str, pool: PoolDep, user: CurrentUser,
                             status: Literal["pending", "delivered", "dead_lettered"] | None = None,
                             before: Annotated[int | None, Query(ge=1, le=BIGINT, description="cursor")] = None,
                             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    """The subscription's sends, newest first: sequence number, attempts, outcome."""
    await _owned(pool, user.org, sub_id)
    items = await store.list_deliveries(pool, user.org, sub_id, status=status, before_id=before, limit=limit)
    return {"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None}


@router.post("/{sub_id}/replay", status_code=202, response_model=ReplayResult, **guarded("admin", 404))
async def replay_webhook(sub_id: str, body: ReplayRequest, request: Request, pool: PoolDep,
                         user: CurrentUser) -> dict[str, Any]:
    """Queue dead-lettered events of the subscription again, in their original order, with new sequence
    numbers (the body says `redelivery: true`)."""
    await _owned(pool, user.org, sub_id)
    queued = await store.replay(pool, user.org, sub_id, body.ids)
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="webhook.replay",
                subject=sub_id, detail={"queued": len(queued), "ids": body.ids or "all"},
                remote_addr=_remote(request))
    return {"queued": queued}
