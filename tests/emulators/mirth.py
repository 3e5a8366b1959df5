"""A Mirth Connect 3.12 REST API emulator (the subset Lifeline uses), answering as the real server does.

Shapes follow the Mirth 3.12 Swagger examples (dashboardStatus, channelStatistics, idsAndNames) and the reference
in shared/reference/interface-engines.md. HTTP only, as a server with `server.api.allowhttp=true` on :8080.

Fault switches (set from tests on the `MirthEmulator` object; it is served from another thread, plain attribute
writes are enough):
- `starting = True`: every request answers 503 (server still starting); `/api/server/status` says 2.
- `password = "..."`: change the accepted password (a wrong password in the adapter's env → 401 FAIL).
- `expire_sessions()`: forget every JSESSIONID (the next call gets 401 and must log in again).
- per channel (`emu.channels[id]`): `stuck_stopping` (stop leaves it in STOPPING; the POST hangs until a halt or
  `hang_seconds`), `start_error` (start goes STARTING → STOPPED; with returnErrors a 500 carrying that text),
  `queue_growth` / `error_growth` (added to `queued` / ERROR on every status read).
- `delay`: seconds each transition spends in its intermediate state (STOPPING, PAUSING, STARTING).
Control calls are synchronous like Mirth's: the POST returns once the channel reached its final state, while a
concurrent GET sees the intermediate one.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.emulators.staxon import El, el, leaf, to_json, to_xml

STATUS_KEY = "com.mirth.connect.donkey.model.message.Status"
REQUESTED_WITH_MESSAGE = "All requests must have 'X-Requested-With' header"
VERSION = "3.12.0"


@dataclass
class Destination:
    meta_data_id: int
    name: str
    queue_enabled: bool = True
    queued: int = 0


@dataclass
class MirthChannel:
    id: str
    name: str
    state: str = "STARTED"
    deployed: bool = True
    received: int = 0
    sent: int = 0
    error: int = 0
    filtered: int = 0
    queued: int = 0
    destinations: list[Destination] = field(default_factory=lambda: [Destination(1, "Destination 1")])
    # faults
    stuck_stopping: bool = False
    start_error: str | None = None
    queue_growth: int = 0
    error_growth: int = 0


class MirthEmulator:
    def __init__(self, username: str = "admin", password: str = "admin", delay: float = 0.2) -> None:
        self.username = username
        self.password = password
        self.delay = delay
        self.hang_seconds = 30.0
        self.starting = False
        self.server_id = str(uuid.uuid4())
        self.channels: dict[str, MirthChannel] = {}
        self.sessions: set[str] = set()
        self.logins = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.app = Starlette(routes=self._routes(), middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._gate)])

    def add_channel(self, name: str, **kwargs: object) -> MirthChannel:
        cid = str(kwargs.pop("id", uuid.uuid4()))
        channel = MirthChannel(id=cid, name=name, **kwargs)  # type: ignore[arg-type]
        self.channels[cid] = channel
        return channel

    def expire_sessions(self) -> None:
        self.sessions.clear()

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/api/users/_login", self.login, methods=["POST"]),
            Route("/api/users/_logout", self.logout, methods=["POST"]),
            Route("/api/server/status", self.server_status, methods=["GET"]),
            Route("/api/server/version", self.server_version, methods=["GET"]),
            Route("/api/channels/idsAndNames", self.ids_and_names, methods=["GET"]),
            Route("/api/channels/statuses", self.statuses, methods=["GET"]),
            Route("/api/channels/statistics", self.all_statistics, methods=["GET"]),
            Route("/api/channels/_{verb}", self.bulk_control, methods=["POST"]),
            Route("/api/channels/{cid}/status", self.status, methods=["GET"]),
            Route("/api/channels/{cid}/statistics", self.statistics, methods=["GET"]),
            Route("/api/channels/{cid}/messages/count", self.message_count, methods=["GET"]),
            Route("/api/channels/{cid}/_{verb}", self.control, methods=["POST"]),
        ]

    async def _gate(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        self.requests.append((request.method, request.url.path))
        if "x-requested-with" not in request.headers:
            return PlainTextResponse(REQUESTED_WITH_MESSAGE, status_code=400)
        path = request.url.path
        if self.starting and path != "/api/server/status":
            return PlainTextResponse("Service Unavailable", status_code=503)
        if path != "/api/users/_login" and not self._authorised(request):
            return Response(status_code=401)
        return await call_next(request)

    def _authorised(self, request: Request) -> bool:
        if request.cookies.get("JSESSIONID") in self.sessions:
            return True
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
            return (user, password) == (self.username, self.password)
        return False

    @staticmethod
    def _render(request: Request, node: El | None, root: str = "list") -> Response:
        node = node if node is not None else El(root)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(to_json(node))
        return Response(to_xml(node), media_type="application/xml")

    async def _form(self, request: Request) -> dict[str, list[str]]:
        return parse_qs((await request.body()).decode())

    def _channel(self, request: Request) -> MirthChannel | None:
        return self.channels.get(request.path_params["cid"])

    # -- users --------------------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        form = await self._form(request)
        ok = form.get("username", [""])[0] == self.username and form.get("password", [""])[0] == self.password
        status = el("com.mirth.connect.model.LoginStatus", leaf("status", "SUCCESS" if ok else "FAIL"),
                    El("message") if ok else leaf("message", "Incorrect username or password."))
        response = self._render(request, status)
        if not ok:
            response.status_code = 401
            return response
        self.logins += 1
        session = secrets.token_hex(16)
        self.sessions.add(session)
        response.set_cookie("JSESSIONID", session, path="/api", httponly=True)
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.discard(request.cookies.get("JSESSIONID", ""))
        return Response(status_code=204)

    # -- server -------------------------------------------------------------------------------------------------

    async def server_status(self, request: Request) -> Response:
        return self._render(request, leaf("int", 2 if self.starting else 0))

    async def server_version(self, request: Request) -> Response:
        return PlainTextResponse(VERSION)

    # -- channels -----------------------------------------------------------------------------------------------

    async def ids_and_names(self, request: Request) -> Response:
        entries = [el("entry", leaf("string", c.id), leaf("string", c.name)) for c in self.channels.values()]
        return self._render(request, el("map", *entries))

    def _read(self, channel: MirthChannel) -> None:
        """A status read: apply the growing-queue / climbing-errors faults."""
        channel.queued += channel.queue_growth
        channel.error += channel.error_growth
        if channel.destinations:
            channel.destinations[0].queued = channel.queued

    @staticmethod
    def _stats(tag: str, values: dict[str, int]) -> El:
        entries = [el("entry", leaf(STATUS_KEY, k), leaf("long", v)) for k, v in values.items()]
        return el(tag, *entries, **{"class": "linked-hash-map"})

    def _dashboard_status(self, c: MirthChannel) -> El:
        stats = {"RECEIVED": c.received, "FILTERED": c.filtered, "TRANSFORMED": 0, "SENT": c.sent,
                 "QUEUED": c.queued, "ERROR": c.error, "PENDING": 0}
        zero = dict.fromkeys(stats, 0)
        source_state = "STOPPED" if c.state in ("PAUSED", "STOPPED") else c.state
        children = [self._connector(c, 0, "Source", source_state, 0, "SOURCE_CONNECTOR", zero, False)]
        for d in c.destinations:
            children.append(self._connector(c, d.meta_data_id, d.name, c.state, d.queued, "DESTINATION_CONNECTOR",
                                            zero, d.queue_enabled))
        return el(
            "dashboardStatus",
            leaf("channelId", c.id), leaf("name", c.name), leaf("state", c.state),
            leaf("deployedRevisionDelta", 0),
            el("deployedDate", leaf("time", 1643708252777), leaf("timezone", "Etc/UTC")),
            self._stats("statistics", stats), self._stats("lifetimeStatistics", stats),
            el("childStatuses", *children),
            leaf("metaDataId", 0), leaf("queueEnabled", False), leaf("queued", c.queued),
            leaf("waitForPrevious", False), leaf("statusType", "CHANNEL"),
        )

    def _connector(self, c: MirthChannel, mid: int, name: str, state: str, queued: int, kind: str,
                   stats: dict[str, int], queue_enabled: bool) -> El:
        return el(
            "dashboardStatus",
            leaf("channelId", c.id), leaf("name", name), leaf("state", state),
            self._stats("statistics", stats), self._stats("lifetimeStatistics", stats), El("childStatuses"),
            leaf("metaDataId", mid), leaf("queueEnabled", queue_enabled), leaf("queued", queued),
            leaf("waitForPrevious", mid > 1), leaf("statusType", kind),
        )

    async def statuses(self, request: Request) -> Response:
        wanted = set(request.query_params.getlist("channelId"))
        undeployed = request.query_params.get("includeUndeployed") == "true"
        nodes = []
        for c in self.channels.values():
            if (wanted and c.id not in wanted) or (not c.deployed and not undeployed):
                continue
            self._read(c)
            nodes.append(self._dashboard_status(c))
        return self._render(request, el("list", *nodes))

    async def status(self, request: Request) -> Response:
        c = self._channel(request)
        if c is None or not c.deployed:
            return Response(status_code=404)
        self._read(c)
        return self._render(request, self._dashboard_status(c))

    def _statistics(self, c: MirthChannel) -> El:
        return el("channelStatistics", leaf("serverId", self.server_id), leaf("channelId", c.id),
                  leaf("received", c.received), leaf("sent", c.sent), leaf("error", c.error),
                  leaf("filtered", c.filtered), leaf("queued", c.queued))

    async def all_statistics(self, request: Request) -> Response:
        return self._render(request, el("list", *(self._statistics(c) for c in self.channels.values() if c.deployed)))

    async def statistics(self, request: Request) -> Response:
        c = self._channel(request)
        if c is None or not c.deployed:
            return Response(status_code=404)
        return self._render(request, self._statistics(c))

    async def message_count(self, request: Request) -> Response:
        c = self._channel(request)
        if c is None:
            return Response(status_code=404)
        statuses = request.query_params.getlist("status")
        counts = {"ERROR": c.error, "QUEUED": c.queued, "SENT": c.sent, "RECEIVED": c.received,
                  "FILTERED": c.filtered}
        total = sum(counts.get(s, 0) for s in statuses) if statuses else c.received
        return self._render(request, leaf("long", total))

    # -- control ------------------------------------------------------------------------------------------------

    async def control(self, request: Request) -> Response:
        c = self._channel(request)
        verb = request.path_params["verb"]
        return_errors = request.query_params.get("returnErrors") == "true"
        if c is None or not c.deployed:
            error = f"Channel {request.path_params['cid']} is not deployed."
            return PlainTextResponse(error, status_code=500) if return_errors else Response(status_code=204)
        error = await self._transition(c, verb)
        if error and return_errors:
            return PlainTextResponse(error, status_code=500)
        return Response(status_code=204)

    async def bulk_control(self, request: Request) -> Response:
        form = await self._form(request)
        errors = []
        for cid in form.get("channelId", []):
            c = self.channels.get(cid)
            if c is not None and c.deployed:
                error = await self._transition(c, request.path_params["verb"])
                if error:
                    errors.append(error)
        if errors and request.query_params.get("returnErrors") == "true":
            return PlainTextResponse("\n".join(errors), status_code=500)
        return Response(status_code=204)

    async def _transition(self, c: MirthChannel, verb: str) -> str | None:
        """Run one channel task as Mirth does (synchronously); returns the error text of a failure."""
        if verb == "halt":
            c.state = "STOPPED"
            return None
        if verb == "start" and c.state == "STOPPED":
            c.state = "STARTING"
            await asyncio.sleep(self.delay)
            if c.start_error:
                c.state = "STOPPED"
                return (f"com.mirth.connect.donkey.server.StartException: Failed to start channel {c.name} "
                        f"({c.id}): {c.start_error}")
            c.state = "STARTED"
        elif verb == "stop" and c.state in ("STARTED", "PAUSED"):
            c.state = "STOPPING"
            if c.stuck_stopping:
                deadline = time.monotonic() + self.hang_seconds
                while c.state == "STOPPING" and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                return None if c.state == "STOPPED" else f"Timed out stopping channel {c.name} ({c.id})."
            await asyncio.sleep(self.delay)
            c.state = "STOPPED"
        elif verb == "pause" and c.state == "STARTED":
            c.state = "PAUSING"
            await asyncio.sleep(self.delay)
            c.state = "PAUSED"
        elif verb == "resume" and c.state == "PAUSED":
            c.state = "STARTING"
            await asyncio.sleep(self.delay)
            c.state = "STARTED"
        # Anything else (start when started, resume when not paused, ...) is ignored, as Mirth logs and moves on.
        return None

