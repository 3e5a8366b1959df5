"""The operator dashboard: one page (vanilla JS/CSS from api/static), a cookie session, live snapshots over SSE.

Browser flow: GET /dashboard without a session answers 401 with a login form (problem JSON for other clients);
the form posts the token to POST /dashboard/session, which checks it and stores it in an HttpOnly SameSite=Strict
cookie that `current_principal` accepts like the Authorization header. The page then reads GET /api/events.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute

from api.auth import AuthError, Principal, verify_token
from api.deps import SESSION_COOKIE, ConfigDep, CurrentUser, PoolDep, SettingsDep, guarded, same_origin
from api.problems import Problem, merge_responses, problem_responses
from api.redact import redact
from infra.config import LifelineConfig
from infra.settings import Settings
from infra.store import cases as store_cases
from infra.store import config as config_store
from infra.store.breakers import list_breakers
from infra.store.deliveries import blocked_lanes, count_open_dead_letters, list_dead_letters
from infra.store.files import file_flow
from infra.store.flow import flow
from workflows.contract import ACTION_SAFETY

log = logging.getLogger("lifeline.dashboard")

EVENT_INTERVAL_S = 2.0
WINDOW_S = 300.0
SNAPSHOT_TTL_S = 1.0  # several open pages of one org share one snapshot per interval
CLOSED_STAGES = ["resolved", "escalated", "rejected"]
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def _static(name: str) -> str:
    return resources.files("api").joinpath("static", name).read_text(encoding="utf-8")


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def login_page(message: str, status: int) -> HTMLResponse:
    body = _static("login.html").replace("{{message}}", html.escape(message))
    response = HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": LOGIN_CSP,
                                                               "Cache-Control": "no-store"})
    if status == 401:
        response.delete_cookie(SESSION_COOKIE, path="/")  # an expired or forged session: drop it
    return response


class _LoginOnDenied(APIRoute):
    """Browsers (Accept: text/html) denied a page get the login form instead of problem JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as exc:
                if exc.status_code in (401, 403) and _wants_html(request):
                    first_visit = (exc.status_code == 401 and request.method == "GET"
                                   and SESSION_COOKIE not in request.cookies and "authorization" not in request.headers)
                    message = "Log in with a Lifeline token." if first_visit else str(exc.detail)
                    return login_page(message, exc.status_code)
                raise

        return route


def _login_form_too(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Problem JSON, or (Accept: text/html) the login form."""
    return {s: {"content": {"text/html": {"schema": {"type": "string"}}}} for s in statuses}


HTML: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {"schema": {"type": "string"}}}}}
STATIC: dict[int | str, dict[str, Any]] = {200: {"description": "the file", "content": {
    t.split(";")[0]: {"schema": {"type": "string"}} for t in STATIC_TYPES.values()}}}
pages = APIRouter(tags=["dashboard"], route_class=_LoginOnDenied)
events = APIRouter(tags=["dashboard"])
router = APIRouter()


@pages.get("/dashboard", response_class=HTMLResponse, **guarded("viewer", responses=_login_form_too(401, 403)))
async def dashboard(settings: SettingsDep, user: CurrentUser) -> HTMLResponse:
    """The live operator dashboard (HTML); browsers without a session get the login form."""
    config = {
        "temporal_ui_url": settings.temporal_ui_url.rstrip("/"),
        "namespace": settings.temporal_namespace,
        "user": user.subject, "org": user.org, "roles": list(user.roles),
        "can_approve": user.satisfies("oncall"),
        "events_url": "/api/events", "interval_s": EVENT_INTERVAL_S,
    }
    # JSON inside a non-executed script element: only "</" could end it early.
    page = _static("dashboard.html").replace("{{config}}", json.dumps(config).replace("</", "<\\/"))
    return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})


@pages.get("/dashboard/static/{name}", response_class=Response,
           **guarded("viewer", 404, responses={**STATIC, **_login_form_too(401, 403)}))
async def dashboard_static(name: str) -> Response:
    """The dashboard's script and style sheet."""
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
        raise Problem(404, f"no dashboard file {name!r}", field="name")
    try:
        text = _static(name)
    except (FileNotFoundError, IsADirectoryError):
        raise Problem(404, f"no dashboard file {name!r}", field="name") from None
    return Response(text, media_type=STATIC_TYPES[suffix], headers={"Cache-Control": "no-cache"})


async def _session_token(request: Request, settings: SettingsDep) -> tuple[Principal, str]:
    """The token from the login form body, else the caller's own credentials (header or cookie)."""
    token = ""
    if not same_origin(request, settings):
        # Login CSRF: another site must not log a browser in to Lifeline under the attacker's token.
        raise Problem(403, "a session can only be opened from Lifeline's own pages (Origin check)", field="origin")
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
    if not token:  # no form: the caller's own bearer token or session cookie becomes the session
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(SESSION_COOKIE, "")
    token = token.removeprefix("Bearer ").strip()
    if not token:
        raise Problem(401, "paste a bearer token (an API key cannot open a dashboard session)", field="token")
    try:
        user = verify_token(settings.jwt_secret.get_secret_value(), token, settings.jwt_issuer)
    except AuthError as exc:
        raise Problem(401, str(exc), field="token") from None
    if not user.satisfies("viewer"):
        raise Problem(403, "role 'viewer' required", required_role="viewer")
    return user, token


@pages.post("/dashboard/session", status_code=303, response_class=RedirectResponse,
            responses=merge_responses({303: {"description": "the session cookie is set; go to /dashboard", "headers": {
                "Location": {"schema": {"type": "string"}}, "Set-Cookie": {"schema": {"type": "string"}}}}},
                problem_responses(401, 403), _login_form_too(401, 403)),
            openapi_extra={"x-required-role": "viewer", "security": [], "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}}}}})
async def open_session(settings: SettingsDep,
                       session: Annotated[tuple[Principal, str], Depends(_session_token)]) -> RedirectResponse:
    """Log in: the form's token, once verified, becomes the HttpOnly session cookie; 303 to the dashboard."""
    _, token = session
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=settings.public_url.startswith("https://"), max_age=12 * 3600)
    return response


@pages.delete("/dashboard/session", status_code=204, response_class=Response,
              **guarded("viewer", responses={204: {"description": "logged out: the token is revoked, the cookie"
                                                                  " dropped"}, **_login_form_too(401, 403)}))
async def close_session(request: Request, pool: PoolDep, settings: SettingsDep, user: CurrentUser) -> Response:
    """Log out: revoke the session's token and drop the cookie."""
    session = _cookie_principal(request, settings)
    # The token in the cookie, not the caller's: a bearer caller with a stale or foreign cookie revoked its own
    # bearer token here (found by Schemathesis: its admin token died mid-run).
    if session is not None and session.jti is not None and session.org == user.org:
        from infra.store.tokens import revoke

        await revoke(pool, jti=session.jti, org_id=session.org, revoked_by=user.subject,
                     expires_at=session.expires_at or 0, reason="logout")
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _cookie_principal(request: Request, settings: Settings) -> Principal | None:
    """Who the session cookie names, when it holds a valid token."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        return verify_token(settings.jwt_secret.get_secret_value(), cookie, settings.jwt_issuer)
    except AuthError:
        return None


# -- live snapshot -----------------------------------------------------------------------------------------------

def _ui_link(settings: Settings, workflow_id: str) -> str:
    return f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"


def _idle_channel(name: str) -> dict[str, Any]:
    return {"channel": name, "received": 0, "accepted": 0, "rejected": 0, "rate": {"per_minute": 0.0},
            "outbox_depth": 0, "outbox_oldest_age_s": 0.0}


def _idle_flow(channel: str, destination: str) -> dict[str, Any]:
    return {"channel": channel, "destination": destination, "messages": 0, "attempts_succeeded": 0,
            "attempts_failed": 0, "attempts_rejected": 0, "delivered": 0, "dead_lettered": 0,
            "rate": {"per_minute": 0.0}, "success_rate": None, "latency": {"end_to_end": {"p95_ms": None}},
            "backlog": {"depth": 0, "oldest_age_s": 0.0}}


async def compose_snapshot(pool: asyncpg.Pool, settings: Settings, config: LifelineConfig, org: str) -> dict[str, Any]:
    """Flow (as GET /api/flow gives it), blocked lanes, dead letters and open cases of one org, from the store."""
    window = timedelta(seconds=WINDOW_S)
    current = await flow(pool, org, window=window, bucket=window)
    blocking = [d.name for d in config.destinations if d.org == org and d.ordered and d.on_dead_letter == "block"]
    lanes = await blocked_lanes(pool, org, blocking)
    dead_open = await count_open_dead_letters(pool, org)
    # One snapshot serves every role of the org, so it carries no peer texts (the API gives them to PHI readers).
    dead_recent = redact(await list_dead_letters(pool, org, status="open", limit=10))
    cases = await store_cases.open_cases(pool, org, CLOSED_STAGES)

    # Configured channels and routes show up idle, so the panels list them before their first message.
    channels = {c["channel"]: c for c in current["channels"]}
    flows = {(f["channel"], f["destination"]): f for f in current["flows"]}
    for ch in config.channels:
        if ch.org == org:
            channels.setdefault(ch.name, _idle_channel(ch.name))
            for route in ch.routes:
                flows.setdefault((ch.name, route.to), _idle_flow(ch.name, route.to))
    blocked_by_dest: dict[str, int] = {}
    for lane in lanes:
        blocked_by_dest[lane["destination"]] = blocked_by_dest.get(lane["destination"], 0) + 1
        lane["workflow_url"] = _ui_link(settings, f"delivery:{lane['head_message_id']}:{lane['destination']}")
    breaker = {b["destination"]: b["state"] for b in await list_breakers(pool, org)}
    for f in flows.values():
        f.pop("buckets", None)  # the sparkline data is for GET /api/flow; a 2 s snapshot stays small
        f["lanes_blocked"] = blocked_by_dest.get(f["destination"], 0)
        f["breaker"] = breaker.get(f["destination"], "closed")
    version, routed_with = await config_store.channel_versions(pool, org, WINDOW_S)
    for c in channels.values():
        c.pop("buckets", None)
        c["config_version"] = version  # None: the process runs on its file, no stored version
        c["routed_with"] = routed_with.get(c["channel"])  # the newest version its recent messages were routed with

    open_cases = []
    for r in cases:
        case = dict(r)
        case["safety"] = ACTION_SAFETY.get(case["action"] or "", "")
        case["awaiting_approval"] = case["stage"] == "awaiting_approval"
        case["workflow_url"] = _ui_link(settings, case["case_id"])
        open_cases.append(case)
    for dl in dead_recent:
        dl.pop("attempts", None)  # the attempt history is for GET /api/dead-letters, not a live panel
        dl["workflow_url"] = _ui_link(settings, f"delivery:{dl['message_id']}:{dl['destination']}")

    flow_rows = sorted(flows.values(), key=lambda f: (f["channel"], f["destination"]))
    channel_rows = sorted(channels.values(), key=lambda c: c["channel"])
    return {
        "observed_at": datetime.now().astimezone().isoformat(),
        "org": org, "window_s": WINDOW_S,
        "totals": {
            "received": sum(c["received"] for c in channel_rows),
            "accepted": sum(c["accepted"] for c in channel_rows),
            "rejected": sum(c["rejected"] for c in channel_rows),
            "delivered": sum(f["delivered"] for f in flow_rows),
            "failed_attempts": sum(f["attempts_failed"] for f in flow_rows),
            "backlog": sum(f["backlog"]["depth"] for f in flow_rows),
            "oldest_pending_age_s": max((f["backlog"]["oldest_age_s"] for f in flow_rows), default=0.0),
            "blocked_lanes": len(lanes),
            "dead_letters_open": int(dead_open or 0),
            "cases_open": len(open_cases),
            "cases_awaiting_approval": sum(1 for c in open_cases if c["awaiting_approval"]),
        },
        "channels": channel_rows,
        "flows": flow_rows,
        "files": await file_flow(pool, org, config),
        "blocked_lanes": lanes,
        "dead_letters": dead_recent,
        "cases": open_cases,
    }


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


async def cached_snapshot(request: Request, org: str) -> dict[str, Any]:
    """One snapshot per org and TTL, however many pages are open."""
    state = request.app.state
    if not hasattr(state, "dashboard_cache"):
        state.dashboard_cache = {}
        state.dashboard_lock = asyncio.Lock()
    cache: dict[str, tuple[float, dict[str, Any]]] = state.dashboard_cache
    async with state.dashboard_lock:
        hit = cache.get(org)
        if hit is not None and time.monotonic() - hit[0] < SNAPSHOT_TTL_S:
            return hit[1]
        snap = await compose_snapshot(state.pool, state.settings, state.config, org)
        cache[org] = (time.monotonic(), snap)
        return snap


@events.get("/api/events", response_class=StreamingResponse, **guarded("viewer", responses={
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
          "description": "`event: snapshot` (a JSON snapshot) every 2 s; `event: problem` when the store fails"}}))
async def event_stream(request: Request, user: CurrentUser, pool: PoolDep, config: ConfigDep) -> StreamingResponse:
    """Server-sent events: a JSON snapshot of flow, backlog, blocked lanes, dead letters and open cases every 2 s."""

    async def stream() -> AsyncIterator[str]:
        seq = 0
        yield f"retry: {int(EVENT_INTERVAL_S * 1500)}\n\n"
        while not await request.is_disconnected():
            seq += 1
            try:
                async with asyncio.timeout(10):
                    snap = await cached_snapshot(request, user.org)
                yield f"id: {seq}\nevent: snapshot\ndata: {json.dumps(snap, default=_json_default)}\n\n"
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("dashboard snapshot failed: %s", type(exc).__name__)
                problem = {"status": 503, "detail": f"store unavailable: {type(exc).__name__}"}
                yield f"id: {seq}\nevent: problem\ndata: {json.dumps(problem)}\n\n"
            await asyncio.sleep(EVENT_INTERVAL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


router.include_router(pages)
router.include_router(events)
