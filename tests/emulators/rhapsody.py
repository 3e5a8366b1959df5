"""A Rhapsody 6.5 REST API emulator (communication points, routes, components), as documented.

Behaviour taken from the Rhapsody REST API documentation (see shared/reference/interface-engines.md):
- HTTP Basic; a session cookie (JSESSIONID) is reused; sending credentials logs in again (new session, new CSRF
  token); at most `login_limit` logins a minute, else 429. Sessions expire after `session_timeout` idle seconds.
- Every response carries `X-CSRF-Token`; every PUT/POST/DELETE after the first request of a session must send it
  (header, `?CSRFToken=` or form field), else 400.
- `Accept: application/json` gives the `{"data":..,"error":..}` envelope; anything else gets HTML.
- `PUT /api/commpoint/<id>/state` START|STOP|RESTART → 204 and the change runs in the background (STARTING /
  STOPPING for `delay` seconds); 400 for another value; 500 when the state cannot be changed (a start that fails,
  any change while stuck in STOPPING).
Unconfirmed details (shaped here, adapters must not depend on them): the folder keys `childFolders` /
`childComponents`, the exact CSRF error text, whether PUT state returns before the change completes.

Fault switches (attributes, set from tests): `password`, `force_429`, `expire_sessions()`, `rotate_csrf()`,
`delay`; per component (`emu.components[id]`): `stuck_stopping`, `start_error`, `queue_growth`, `error_growth`.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

CSRF_MESSAGE = "Missing or invalid CSRF token"


@dataclass
class Component:
    id: int
    name: str
    type: str = "COMMUNICATION_POINT"  # or ROUTE
    mode: str = "OUTPUT"
    folder: str = "Interfaces"
    state: str = "RUNNING"
    pending: tuple[str, float] | None = None  # (state, at monotonic time) for a change in progress
    then: tuple[str, float] | None = None  # a second step (RESTART: STOPPING → STARTING → RUNNING)
    in_queue: int = 0
    out_queue: int = 0
    failed_queue: int = 0
    received: int = 0
    sent: int = 0
    failed: int = 0
    started_at: float = 0.0
    # faults
    stuck_stopping: bool = False
    start_error: str | None = None
    queue_growth: int = 0
    error_growth: int = 0

    def settle(self) -> None:
        now = time.monotonic()
        while self.pending and now >= self.pending[1]:
            self.state = self.pending[0]
            self.pending, self.then = self.then, None
            if self.state == "RUNNING":
                self.started_at = time.time()


@dataclass
class Session:
    token: str
    last_seen: float


class RhapsodyEmulator:
    def __init__(self, username: str = "admin", password: str = "admin", delay: float = 0.2) -> None:
        self.username = username
        self.password = password
        self.delay = delay
        self.session_timeout = 120.0
        self.login_limit = 5
        self.force_429 = False
        self.components: dict[int, Component] = {}
        self.sessions: dict[str, Session] = {}
        self.login_times: list[float] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.app = Starlette(routes=[
            Route("/api/info", self.info, methods=["GET"]),
            Route("/api/components", self.tree, methods=["GET"]),
            Route("/api/components/status", self.tree_status, methods=["GET"]),
            Route("/api/commpoint/{id:int}", self.commpoint, methods=["GET"]),
            Route("/api/commpoint/{id:int}/messagecount", self.messagecount, methods=["GET"]),
            Route("/api/commpoint/{id:int}/state", self.state, methods=["GET", "PUT"]),
            Route("/api/route/{id:int}", self.route, methods=["GET"]),
            Route("/api/route/{id:int}/state", self.state, methods=["GET", "PUT"]),
            Route("/api/errorqueue/count", self.errorqueue_count, methods=["GET"]),
        ], middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._gate)])

    def add(self, name: str, **kwargs: Any) -> Component:
        cid = int(kwargs.pop("id", len(self.components) + 1))
        comp = Component(id=cid, name=name, started_at=time.time(), **kwargs)
        self.components[cid] = comp
        return comp

    @property
    def logins(self) -> int:
        return len(self.login_times)

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def rotate_csrf(self) -> None:
        """The server hands out new tokens: clients holding the old one get 400 on their next PUT."""
        for session in self.sessions.values():
            session.token = secrets.token_hex(16)

    # -- plumbing -----------------------------------------------------------------------------------------------

    async def _gate(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await self._guarded(request, call_next)
        self.requests.append((request.method, request.url.path, response.status_code))
        return response

    async def _guarded(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last_seen > self.session_timeout:
                del self.sessions[sid]
        sid = None
        new_session = False
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):  # credentials sent: a login, counted against the rate limit
            self.login_times = [t for t in self.login_times if now - t < 60]
            if self.force_429 or len(self.login_times) >= self.login_limit:
                return self._error(request, 429, "Too many login attempts; try again later")
            self.login_times.append(now)
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user = password = ""
            if (user, password) != (self.username, self.password):
                response = self._error(request, 401, "Invalid username or password")
                response.headers["WWW-Authenticate"] = 'Basic realm="Rhapsody"'
                return response
            sid, new_session = secrets.token_hex(16), True
            self.sessions[sid] = Session(secrets.token_hex(16), now)
        else:
            sid = request.cookies.get("JSESSIONID")
            if sid not in self.sessions:
                response = self._error(request, 401, "Authentication required")
                response.headers["WWW-Authenticate"] = 'Basic realm="Rhapsody"'
                return response
        session = self.sessions[sid]
        session.last_seen = now
        if request.method in ("PUT", "POST", "DELETE") and not new_session:
            sent = request.headers.get("x-csrf-token") or request.query_params.get("CSRFToken")
            if not sent and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                sent = (parse_qs((await request.body()).decode()).get("CSRFToken") or [None])[0]
            if sent != session.token:
                response = self._error(request, 400, CSRF_MESSAGE)
                response.headers["X-CSRF-Token"] = session.token
                return response
        response = await call_next(request)
        response.headers["X-CSRF-Token"] = session.token
        if new_session:
            response.set_cookie("JSESSIONID", sid, path="/", httponly=True)
        return response

    @staticmethod
    def _json(request: Request) -> bool:
        return "application/json" in request.headers.get("accept", "")

    def _ok(self, request: Request, data: Any) -> Response:
        if not self._json(request):
            return HTMLResponse(f"<html><body><pre>{data!r}</pre></body></html>")
        return JSONResponse({"data": data, "error": None})

    def _error(self, request: Request, status: int, message: str) -> Response:
        if not self._json(request):
            return HTMLResponse(f"<html><body><h1>{status}</h1><p>{message}</p></body></html>", status_code=status)
        return JSONResponse({"data": None, "error": {"code": status, "messages": [message], "errorFields": [],
                                                     "invalidFields": []}}, status_code=status)

    def _find(self, request: Request) -> Component | None:
        kind = "ROUTE" if request.url.path.startswith("/api/route/") else "COMMUNICATION_POINT"
        comp = self.components.get(request.path_params["id"])
        if comp is None or comp.type != kind:
            return None
        comp.settle()
        return comp

    def _read(self, comp: Component) -> None:
        comp.out_queue += comp.queue_growth
        comp.failed += comp.error_growth
        comp.failed_queue += comp.error_growth

    # -- endpoints ----------------------------------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        return self._ok(request, {"version": "6.5.0", "uptime": 3600})

    def _item(self, comp: Component, status: bool) -> dict[str, Any]:
        comp.settle()
        item: dict[str, Any] = {"id": comp.id, "uuid": f"00000000-0000-0000-0000-{comp.id:012d}", "name": comp.name,
                                "state": comp.state, "type": comp.type}
        if status:
            item |= {"inboundQueueSize": comp.in_queue, "outboundQueueSize": comp.out_queue,
                     "failedQueueSize": comp.failed_queue}
        return item

    def _folders(self, status: bool) -> dict[str, Any]:
        folders: dict[str, list[dict[str, Any]]] = {}
        for comp in self.components.values():
            folders.setdefault(comp.folder, []).append(self._item(comp, status))
        return {"id": 0, "name": "Workspace", "childFolders": [
            {"id": i + 1, "name": name, "childFolders": [], "childComponents": items}
            for i, (name, items) in enumerate(folders.items())
        ], "childComponents": []}

    async def tree(self, request: Request) -> Response:
        return self._ok(request, self._folders(status=False))

    async def tree_status(self, request: Request) -> Response:
        return self._ok(request, self._folders(status=True))

    async def commpoint(self, request: Request) -> Response:
        comp = self._find(request)
        if comp is None:
            return self._error(request, 404, f"Communication point {request.path_params['id']} not found")
        self._read(comp)
        uptime = int(time.time() - comp.started_at) if comp.state == "RUNNING" else 0
        return self._ok(request, {
            "id": comp.id, "name": comp.name, "mode": comp.mode, "state": comp.state,
            "inQueueSize": comp.in_queue, "outQueueSize": comp.out_queue, "failedQueueSize": comp.failed_queue,
            "connectionCount": 1 if comp.state == "RUNNING" else 0, "receivedCount": comp.received,
            "sentCount": comp.sent, "failedCount": comp.failed, "uptime": uptime,
        })

    async def route(self, request: Request) -> Response:
        comp = self._find(request)
        if comp is None:
            return self._error(request, 404, f"Route {request.path_params['id']} not found")
        self._read(comp)
        return self._ok(request, {"id": comp.id, "name": comp.name, "state": comp.state,
                                  "processedCount": comp.sent, "processingQueueSize": comp.in_queue,
                                  "waitingQueueSize": comp.out_queue})

    async def messagecount(self, request: Request) -> Response:
        comp = self._find(request)
        if comp is None:
            return self._error(request, 404, f"Communication point {request.path_params['id']} not found")
        return self._ok(request, {"received": comp.received, "sent": comp.sent, "failed": comp.failed})

    async def errorqueue_count(self, request: Request) -> Response:
        return PlainTextResponse(str(sum(c.failed_queue for c in self.components.values())))

    async def state(self, request: Request) -> Response:
        comp = self._find(request)
        if comp is None:
            return self._error(request, 404, f"Component {request.path_params['id']} not found")
        if request.method == "GET":
            return PlainTextResponse(comp.state)
        action = (await request.body()).decode().strip()
        if action not in ("START", "STOP", "RESTART"):
            return self._error(request, 400, f"Invalid state '{action}': expected START, STOP or RESTART")
        now = time.monotonic()
        if action == "STOP" and comp.state in ("STOPPED", "STOPPING"):
            return Response(status_code=204)
        if action == "START" and comp.state in ("RUNNING", "STARTING"):
            return Response(status_code=204)
        if comp.state == "STOPPING" or (action != "STOP" and comp.start_error):
            why = comp.start_error or "it is stopping"
            return self._error(request, 500, f"The state of '{comp.name}' could not be changed: {why}")
        if action == "START":
            comp.state, comp.pending, comp.then = "STARTING", ("RUNNING", now + self.delay), None
            return Response(status_code=204)
        comp.state, comp.pending, comp.then = "STOPPING", None, None
        if comp.stuck_stopping:
            return Response(status_code=204)
        if action == "STOP":
            comp.pending = ("STOPPED", now + self.delay)
        else:  # RESTART: stop, then start
            comp.pending, comp.then = ("STARTING", now + self.delay), ("RUNNING", now + 2 * self.delay)
        return Response(status_code=204)
