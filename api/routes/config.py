"""Live configuration (numbered versions per org, admin writes, each change audited with its diff) and the dry run."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, Field

from activities.pipeline import plan, plan_dict
from activities.store import audit
from api.deps import CurrentUser, PoolDep, get_config, guarded
from api.models import Public
from api.problems import Problem
from infra.config import ConfigError, LifelineConfig
from infra.live import check_org_document, merge, org_document
from infra.store import config as store
from interop.errors import InteropError
from interop.message import parse
from interop.transform import parse_csv_table

router = APIRouter(tags=["configuration"])
_SECTIONS = {"channels": "channel", "destinations": "destination", "tables": "code table"}
REDACTED = "<redacted>"


class ConfigPut(BaseModel):
    config: dict[str, Any]
    comment: str = Field(default="", max_length=500)
    expected_version: int | None = None  # optimistic concurrency: 409 when someone changed it since


class Restore(BaseModel):
    comment: str = Field(default="", max_length=500)


ORG_DOCUMENT = ("the org's configuration document: channels, destinations, tables, ... as in lifeline.yaml"
                " (webhook secrets <redacted> unless the caller is admin)")


class ConfigChange(Public):
    """One change between two documents, by key path (named items of lists by name: channels[adt-in].routes)."""

    path: str
    op: Literal["add", "remove", "change"]
    from_: Any = Field(default=None, alias="from", description="the value before (remove, change)")
    to: Any = Field(default=None, description="the value after (add, change)")


class ConfigStored(Public):
    version: int = Field(description="the new version")
    previous: int = Field(description="the version it replaced (0: the file's configuration, never stored)")
    diff: list[ConfigChange]


class ConfigCurrent(Public):
    version: int = Field(description="0 while nothing is stored (the process runs on its file)")
    config: dict[str, Any] = Field(description=ORG_DOCUMENT)


class ConfigVersionSummary(Public):
    version: int
    author: str
    created_at: datetime
    comment: str
    restored_from: int | None
    diff: list[ConfigChange] = Field(description="from the version before")


class ConfigVersions(Public):
    items: list[ConfigVersionSummary]


class ConfigVersionDocument(Public):
    version: int
    author: str
    created_at: datetime
    config: dict[str, Any] = Field(description=ORG_DOCUMENT)


class StepPlan(Public):
    index: int
    step: str
    applied: bool = Field(description="false when its `when` held nowhere")
    diff: list[str] = Field(description="'-old segment' / '+new segment' lines")


class DestinationPlanPublic(Public):
    destination: str
    routed: bool
    reason: str
    kind: str
    filtered: str | None = Field(description="the filter step's reason when it stopped the message")
    filtered_by: str | None
    error: str | None
    output: str | None = Field(description="the message after the steps (ER7)")
    rendered: str | None = Field(description="what the destination would receive")
    steps: list[StepPlan]


class DryRun(Public):
    channel: str
    config_version: int
    message_type: str
    destinations: list[DestinationPlanPublic]


# Versions are PostgreSQL integers: a larger number was a 500 (found by Schemathesis).
Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="a version number (GET /api/config/versions)")]
# A diff entry has `from` only for remove/change and `to` only for add/change: unset members stay out.
CHANGES: dict[str, Any] = {"response_model_exclude_unset": True}


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _current(request: Request, org: str) -> tuple[int, dict[str, Any]]:
    pool = request.app.state.pool
    row = await store.latest(pool, org)
    if row is not None:
        return row.version, row.document
    # Not stored yet (a process without live configuration): the file's part, as version 0.
    return 0, org_document(get_config(request), org)


def _redact(document: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    for dest in doc.get("destinations", []):
        if isinstance(dest.get("webhook"), dict) and "secret" in dest["webhook"]:
            dest["webhook"]["secret"] = REDACTED
    return doc


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Changes between two JSON documents by key path; named list items (channels, ...) are matched by name."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                out.append({"path": sub, "op": "remove", "from": before[key]})
            elif key not in before:
                out.append({"path": sub, "op": "add", "to": after[key]})
            else:
                out += diff(before[key], after[key], sub)
        return out
    if isinstance(before, list) and isinstance(after, list) and all(
            isinstance(x, dict) and "name" in x for x in before + after):
        b = {x["name"]: x for x in before}
        a = {x["name"]: x for x in after}
        out = []
        for name in list(b) + [n for n in a if n not in b]:
            sub = f"{path}[{name}]"
            if name not in a:
                out.append({"path": sub, "op": "remove", "from": b[name]})
            elif name not in b:
                out.append({"path": sub, "op": "add", "to": a[name]})
            else:
                out += diff(b[name], a[name], sub)
        return out
    return [] if before == after else [{"path": path, "op": "change", "from": before, "to": after}]


async def _store(request: Request, user: CurrentUser, document: dict[str, Any], *, comment: str = "",
                 expected: int | None = None, restored_from: int | None = None, action: str = "config.change",
                 file: str = "config") -> dict[str, Any]:
    """Validate the org's new document (alone, then with every other org's), store it, audit the diff."""
    pool = request.app.state.pool
    org = user.org
    try:
        check_org_document(document, org, file)
    except ConfigError as exc:
        path, reason = exc.problems[0]
        raise Problem(422, f"{path or '<top>'}: {reason}", field=path,
                      errors=[{"field": p, "reason": r} for p, r in exc.problems]) from None
    others = {r.org_id: r.document for r in await store.current_versions(pool) if r.org_id != org}
    try:
        merge({**others, org: document})
    except ConfigError as exc:
        path, reason = exc.problems[0]
        raise Problem(422, f"{path or '<top>'}: {reason} (with the other orgs' configuration)", field=path) from None
    previous_version, previous = await _current(request, org)
    row = await store.add_version(pool, org, document, user.subject, comment=comment, restored_from=restored_from,
                                  expected=expected)
    if row is None:
        raise Problem(409, f"the configuration changed since version {expected}; read it again",
                      field="expected_version")
    changes = diff(_redact(previous), _redact(document))
    await audit(pool, org_id=org, actor=user.subject, role=",".join(user.roles), action=action,
                subject=f"config:{row.version}", remote_addr=_remote(request),
                detail={"version": row.version, "previous": previous_version, "comment": comment,
                        "restored_from": restored_from, "diff": changes})
    return {"version": row.version, "previous": previous_version, "diff": changes}


@router.get("/api/config", **guarded("operator"))
async def get_current(request: Request, user: CurrentUser) -> ConfigCurrent:
    """The caller's org's configuration now: {"version": N, "config": {...}} (webhook secrets only for admin)."""
    version, document = await _current(request, user.org)
    return ConfigCurrent(version=version, config=document if user.satisfies("admin") else _redact(document))


@router.put("/api/config", response_model=ConfigStored, **CHANGES, **guarded("admin", 409, 422))
async def put_config(body: ConfigPut, request: Request, user: CurrentUser) -> dict[str, Any]:
    """Replace the org's whole configuration: the new version, or 422 naming the key path."""
    return await _store(request, user, body.config, comment=body.comment, expected=body.expected_version)


@router.get("/api/config/versions", response_model=ConfigVersions, **CHANGES, **guarded("operator"))
async def versions(pool: PoolDep, user: CurrentUser,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """Versions newest first, with author, comment and the diff from the version before."""
    rows = await store.list_versions(pool, user.org, limit + 1)
    items = []
    for i, r in enumerate(rows[:limit]):
        before = rows[i + 1].document if i + 1 < len(rows) else {}
        items.append({"version": r.version, "author": r.author, "created_at": r.created_at, "comment": r.comment,
                      "restored_from": r.restored_from, "diff": diff(_redact(before), _redact(r.document))})
    return {"items": items}


@router.get("/api/config/versions/{version}", **guarded("operator", 404))
async def get_version(version: Version, pool: PoolDep, user: CurrentUser) -> ConfigVersionDocument:
    """One stored version's document."""
    row = await store.get_version(pool, user.org, version)
    if row is None:
        raise Problem(404, f"no configuration version {version}", field="version")
    document = row.document if user.satisfies("admin") else _redact(row.document)
    return ConfigVersionDocument(version=row.version, author=row.author, created_at=row.created_at, config=document)


@router.post("/api/config/versions/{version}/restore", response_model=ConfigStored, **CHANGES,
             **guarded("admin", 404, 409, 422))
async def restore(version: Version, request: Request, user: CurrentUser,
                  body: Annotated[Restore | None, Body()] = None) -> dict[str, Any]:
    """Roll back: version n's document becomes a new version (history is never rewritten)."""
    row = await store.get_version(request.app.state.pool, user.org, version)
    if row is None:
        raise Problem(404, f"no configuration version {version}", field="version")
    return await _store(request, user, row.document, comment=(body.comment if body else "") or f"restore {version}",
                        restored_from=version, action="config.restore")


async def _put_item(request: Request, user: CurrentUser, section: str, name: str,
                    item: dict[str, Any] | None) -> dict[str, Any]:
    _, document = await _current(request, user.org)
    document = copy.deepcopy(document)
    items = [x for x in document.get(section, []) if x.get("name") != name]
    found = len(items) != len(document.get(section, []))
    if item is None and not found:
        raise Problem(404, f"no {_SECTIONS[section]} named {name!r}", field="name")
    if item is not None:
        item = {**item, "name": name}
        old = [i for i, x in enumerate(document.get(section, [])) if x.get("name") == name]
        items.insert(old[0] if old else len(items), item)
    document[section] = items
    verb = "remove" if item is None else "put"
    return await _store(request, user, document, comment=f"{verb} {_SECTIONS[section]} {name}",
                        action=f"config.{section}.{verb}")


@router.put("/api/config/channels/{name}", response_model=ConfigStored, **CHANGES, **guarded("admin", 409, 422))
async def put_channel(name: str, request: Request, user: CurrentUser,
                      channel: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Add or replace one channel (with its routes and their steps) as a new version."""
    return await _put_item(request, user, "channels", name, channel)


@router.delete("/api/config/channels/{name}", response_model=ConfigStored, **CHANGES,
                **guarded("admin", 404, 409, 422))
async def delete_channel(name: str, request: Request, user: CurrentUser) -> dict[str, Any]:
    """Remove one channel as a new version (its listener port closes)."""
    return await _put_item(request, user, "channels", name, None)


@router.put("/api/config/destinations/{name}", response_model=ConfigStored, **CHANGES, **guarded("admin", 409, 422))
async def put_destination(name: str, request: Request, user: CurrentUser,
                          destination: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Add or replace one destination as a new version."""
    return await _put_item(request, user, "destinations", name, destination)


@router.delete("/api/config/destinations/{name}", response_model=ConfigStored, **CHANGES,
                **guarded("admin", 404, 409, 422))
async def delete_destination(name: str, request: Request, user: CurrentUser) -> dict[str, Any]:
    """Remove one destination as a new version (refused while a route still names it)."""
    return await _put_item(request, user, "destinations", name, None)


@router.put("/api/config/tables/{name}", response_model=ConfigStored, **CHANGES,
            **guarded("admin", 409, 422, body={"content": {
                "text/csv": {"schema": {"type": "string"}, "example": "from,to\nM,male\nF,female\n"},
                "application/json": {"schema": {"type": "object", "required": ["values"], "properties": {
                    "values": {"type": "object", "additionalProperties": {"type": "string"}}}},
                    "example": {"values": {"M": "male", "F": "female"}}}}}))
async def put_table(name: str, request: Request, user: CurrentUser) -> dict[str, Any]:
    """Upload a code table: a two-column CSV (`from,to`) or JSON {"values": {...}}; a new version."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if ctype in ("text/csv", "text/plain"):
        try:
            values = parse_csv_table(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problem(422, f"not a two-column CSV: {exc}", field="body") from None
    else:
        import json

        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise Problem(422, "body is not JSON", field="body") from None
        given = data.get("values") if isinstance(data, dict) else None
        if not isinstance(given, dict):
            raise Problem(422, "send {\"values\": {\"code\": \"mapped\", ...}} or text/csv", field="values")
        values = {str(k): str(v) for k, v in given.items()}
    return await _put_item(request, user, "tables", name, {"values": values})


@router.delete("/api/config/tables/{name}", response_model=ConfigStored, **CHANGES,
                **guarded("admin", 404, 409, 422))
async def delete_table(name: str, request: Request, user: CurrentUser) -> dict[str, Any]:
    """Remove one code table as a new version (refused while a step still uses it)."""
    return await _put_item(request, user, "tables", name, None)


@router.post("/api/channels/{channel}/dry-run", **guarded("operator", 404, 422, body={
    "required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}))
async def dry_run(channel: str, request: Request, pool: PoolDep, user: CurrentUser) -> DryRun:
    """What the current configuration would do with a sample message: routing per destination, each step's diff,
    the rendered output, errors. Nothing is stored or sent; the call is audited (it returns message content)."""
    config: LifelineConfig = get_config(request)
    ch = config.channel(channel)
    if ch is None or ch.org != user.org:
        raise Problem(404, f"no channel named {channel!r}", field="channel")
    body = (await request.body()).decode("utf-8", errors="replace")
    source = getattr(request.app.state, "source", None)
    version = (source.version(user.org) if source is not None else None) or 0
    await audit(pool, org_id=user.org, actor=user.subject, role=",".join(user.roles), action="channel.dry_run",
                subject=f"channel:{channel}", remote_addr=_remote(request), detail={"config_version": version})
    try:
        message = parse(body)
    except InteropError as exc:
        raise Problem(422, f"not an HL7 v2 message: {exc}", field="body") from None
    return DryRun.model_validate({"channel": channel, "config_version": version, "message_type": message.message_type,
                                  "destinations": [plan_dict(p) for p in plan(config, ch, message)]})
