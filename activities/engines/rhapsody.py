"""Rhapsody 6.5+ over its REST API (`/api`): communication points and routes as channels.

Auth is HTTP Basic, but sending credentials logs in again (a new session, limited to 5 logins a minute → 429), so
credentials go only on the first request and after the session expired (401); otherwise the session cookie is
reused. Every response carries `X-CSRF-Token`; each PUT/POST/DELETE sends the latest one back, and a 400 that
hands out a new token is retried once with it.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx

from activities.engines._common import (
    credentials,
    segment,
    session_cookie,
    short,
    transport_error,
    watched,
)
from activities.engines.base import (
    EngineAuthError,
    EngineChannel,
    EngineError,
    EngineNotFound,
    EngineNotSupported,
    State,
)
from infra.config import Engine

STATES: dict[str, State] = {
    "RUNNING": "started", "STOPPED": "stopped", "STOPPING": "stopping", "STARTING": "starting",
    "INITIALIZING": "starting", "RETRYING": "error", "ERROR": "error", "NOT_CONFIGURED": "undeployed",
    "DELETED": "undeployed",
}
KINDS = {"COMMUNICATION_POINT": "commpoint", "ROUTE": "route"}
ROUTE_PREFIX = "route:"
MUTATING = frozenset({"PUT", "POST", "DELETE", "PATCH"})


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def components(tree: Any) -> list[dict[str, Any]]:
    """Every communication point and route anywhere in the folder tree, whatever the nesting keys are called."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") in KINDS and "id" in node:
                found.append(node)
            for value in node.values():
                if isinstance(value, list | dict):
                    walk(value)

    walk(tree)
    return found


def channel_id(component: dict[str, Any]) -> str:
    """Communication points keep their plain id; routes are `route:<id>` (the two id spaces may overlap)."""
    cid = str(component.get("id"))
    return ROUTE_PREFIX + cid if component.get("type") == "ROUTE" else cid


def _target(engine: Engine, channel_id: str) -> str:
    if channel_id.startswith(ROUTE_PREFIX):
        return f"/route/{segment(engine, channel_id[len(ROUTE_PREFIX):], 'route id')}"
    return f"/commpoint/{segment(engine, channel_id, 'communication point id')}"


class RhapsodyAdapter:
    kind = "rhapsody"
    # No pause/halt on Rhapsody; no documented queue purge for a communication point.
    capabilities = frozenset({"start", "stop", "restart"})

    def __init__(self, engine: Engine, http: httpx.AsyncClient | None = None) -> None:
        assert engine.url, "a rhapsody engine needs url"
        self.engine = engine
        self._base = engine.url.rstrip("/")
        self._timeout = engine.timeout.total_seconds()
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(verify=engine.verify_tls, timeout=self._timeout)
        self._session: str | None = None
        self._csrf: str | None = None
        self._lock = asyncio.Lock()  # one request at a time: session and token change under us otherwise

    # -- transport --------------------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, *, login: bool, **kwargs: Any) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if login or self._session is None:
            user, password = credentials(self.engine)
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        else:
            headers["Cookie"] = f"JSESSIONID={self._session}"
        if method in MUTATING and self._csrf and not login:
            headers["X-CSRF-Token"] = self._csrf
        headers.update(kwargs.pop("headers", {}))
        try:
            resp = await self._http.request(method, self._base + path, headers=headers, timeout=self._timeout,
                                            **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.engine, exc) from exc
        if cookie := session_cookie(resp):
            self._session = cookie
        if token := resp.headers.get("X-CSRF-Token"):
            self._csrf = token
        return resp

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with self._lock:
            fresh = self._session is None
            sent_token = self._csrf
            resp = await self._send(method, path, login=fresh, **kwargs)
            if resp.status_code == 401 and not fresh:  # session timed out: log in again, once
                self._session = None
                resp = await self._send(method, path, login=True, **kwargs)
            elif (resp.status_code == 400 and method in MUTATING and self._csrf
                  and self._csrf != sent_token):  # token missing or stale: retry with the one just handed out
                resp = await self._send(method, path, login=False, **kwargs)
        if resp.status_code in (401, 403):
            self._session = None
            raise EngineAuthError(f"rhapsody {self.engine.name}: HTTP {resp.status_code} {self._error(resp)}")
        if resp.status_code == 429:
            raise EngineError(f"rhapsody {self.engine.name}: login rate limit reached (429), try again in a minute")
        if resp.status_code == 404:
            raise EngineNotFound(f"rhapsody {self.engine.name}: {path} not found")
        return resp

    @staticmethod
    def _error(resp: httpx.Response) -> str:
        try:
            error = resp.json().get("error") or {}
            messages = error.get("messages") or []
            return short("; ".join(str(m) for m in messages)) or short(resp.text)
        except (ValueError, AttributeError):
            return short(resp.text)

    async def _data(self, path: str) -> Any:
        resp = await self._request("GET", path)
        if resp.status_code != 200:
            raise EngineError(f"rhapsody {self.engine.name}: HTTP {resp.status_code} on GET {path}: "
                              f"{self._error(resp)}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise EngineError(f"rhapsody {self.engine.name}: not JSON on GET {path}: {short(resp.text, 200)}") from exc
        if not isinstance(body, dict) or body.get("error"):
            raise EngineError(f"rhapsody {self.engine.name}: error on GET {path}: {self._error(resp)}")
        return body.get("data")

    # -- reads ------------------------------------------------------------------------------------------------

    async def list_channels(self) -> list[EngineChannel]:
        tree = await self._data("/components/status")
        listed = []
        for comp in components(tree):
            raw = str(comp.get("state") or "UNKNOWN")
            listed.append(EngineChannel(
                id=channel_id(comp), name=str(comp.get("name") or comp.get("id")),
                state=STATES.get(raw, "unknown"), raw_state=raw,
                queued=_int(comp.get("inboundQueueSize")) + _int(comp.get("outboundQueueSize")),
                detail={"type": str(comp.get("type")), "failedQueueSize": str(_int(comp.get("failedQueueSize")))},
            ))
        chosen = watched(self.engine, listed)
        # The tree has no message counts: read each component (few per engine; sequential, one session).
        out = []
        for summary in chosen:
            try:
                out.append(await self.channel_status(summary.id, name=summary.name))
            except EngineNotFound:
                continue  # deleted since the tree was read
        return out

    async def channel_status(self, channel_id: str, name: str = "") -> EngineChannel:
        data = await self._data(_target(self.engine, channel_id))
        if not isinstance(data, dict):
            raise EngineError(f"rhapsody {self.engine.name}: unexpected body for {channel_id}")
        raw = str(data.get("state") or "UNKNOWN")
        channel = EngineChannel(id=channel_id, name=str(data.get("name") or name or channel_id),
                                state=STATES.get(raw, "unknown"), raw_state=raw)
        if channel_id.startswith(ROUTE_PREFIX):
            channel.queued = _int(data.get("processingQueueSize")) + _int(data.get("waitingQueueSize"))
            channel.received = channel.sent = _int(data.get("processedCount"))
            channel.detail = {"type": "ROUTE"}
            return channel
        channel.queued = _int(data.get("inQueueSize")) + _int(data.get("outQueueSize"))
        channel.received, channel.sent = _int(data.get("receivedCount")), _int(data.get("sentCount"))
        channel.errors = _int(data.get("failedCount"))
        channel.detail = {"type": "COMMUNICATION_POINT", "mode": str(data.get("mode") or ""),
                          "failedQueueSize": str(_int(data.get("failedQueueSize"))),
                          "connectionCount": str(_int(data.get("connectionCount"))),
                          "uptime": str(data.get("uptime") or "")}
        return channel

    # -- control ----------------------------------------------------------------------------------------------

    async def _set_state(self, channel_id: str, action: str) -> None:
        path = _target(self.engine, channel_id) + "/state"
        resp = await self._request("PUT", path, content=action, headers={"Content-Type": "text/plain"})
        if resp.status_code in (200, 204):
            return
        raise EngineError(f"rhapsody {self.engine.name}: {action} {channel_id} refused (HTTP {resp.status_code}): "
                          f"{self._error(resp)}")

    async def start(self, channel_id: str) -> None:
        await self._set_state(channel_id, "START")

    async def stop(self, channel_id: str) -> None:
        await self._set_state(channel_id, "STOP")

    async def restart(self, channel_id: str) -> None:
        """Rhapsody's own RESTART (stop then start in one call)."""
        await self._set_state(channel_id, "RESTART")

    async def pause(self, channel_id: str) -> None:
        raise EngineNotSupported("Rhapsody has no pause: stop the communication point instead")

    async def resume(self, channel_id: str) -> None:
        raise EngineNotSupported("Rhapsody has no pause/resume: start the communication point instead")

    async def halt(self, channel_id: str) -> None:
        raise EngineNotSupported("Rhapsody has no forced halt: use stop or restart")

    async def clear_queue(self, channel_id: str) -> int:
        raise EngineNotSupported("Rhapsody's REST API documents no queue purge for a communication point")

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()
