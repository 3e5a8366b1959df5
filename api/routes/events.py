"""The event log: what happened, when, to what (ids, types, times and links; never message content)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field

from activities.subscriptions import EventLinks
from api.deps import CurrentUser, PoolDep, SettingsDep, guarded
from api.models import Public
from api.problems import Problem
from infra.settings import Settings
from infra.store import events as store

router = APIRouter(prefix="/api/events", tags=["events"])
BIGINT = 2**63 - 1  # ids are bigints: a larger number must be a 422, not PostgreSQL's 500


class Event(Public):
    id: int
    type: str
    occurred_at: datetime
    subject: str
    channel: str | None = None
    destination: str | None = None
    message_type: str | None = None
    data: dict[str, Any]
    links: dict[str, str]


class EventPage(Public):
    items: list[Event]
    next_cursor: int | None = Field(default=None, description="pass as `cursor` for the next (older) page")
    retention_days: float


def _links(settings: Settings) -> EventLinks:
    return EventLinks(settings.public_url, settings.temporal_ui_url, settings.temporal_namespace)


@router.get("/log", response_model=EventPage, **guarded("viewer"))
async def event_log(pool: PoolDep, user: CurrentUser, settings: SettingsDep,
                    type: Annotated[list[str] | None, Query(description="exact, or a prefix such as case.*")] = None,  # noqa: A002
                    since: datetime | None = None, until: datetime | None = None,
                    subject: str | None = None, channel: str | None = None, destination: str | None = None,
                    cursor: Annotated[int | None, Query(ge=1, le=BIGINT, description="next_cursor of the previous page")
                                      ] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Events of the caller's org, newest first, kept for LIFELINE_EVENT_RETENTION_DAYS."""
    rows = await store.list_events(pool, user.org, types=type, since=since, until=until, subject=subject,
                                   channel=channel, destination=destination, before_id=cursor, limit=limit)
    links = _links(settings)
    items = [{**r, "links": links.for_event(r["id"], r["data"])} for r in rows]
    return {"items": items, "next_cursor": rows[-1]["id"] if len(rows) == limit else None,
            "retention_days": settings.event_retention_days}


@router.get("/log/{event_id}", response_model=Event, **guarded("viewer", 404))
async def event(event_id: Annotated[int, Path(ge=1, le=BIGINT)], pool: PoolDep, user: CurrentUser,
                settings: SettingsDep) -> dict[str, Any]:
    """One event of the caller's org."""
    row = await store.get_event(pool, user.org, event_id)
    if row is None:
        raise Problem(404, f"no event {event_id} (it may have passed the retention)", field="event_id")
    return {**row, "links": _links(settings).for_event(row["id"], row["data"])}
