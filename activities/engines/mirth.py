"""Mirth Connect / NextGen Connect 3.x–4.x over its REST API (`/api`), JSON via staxon.

Staxon turns XStream XML into JSON, so every list may arrive as an array, a single object (one element) or null
(empty): `_many` accepts all three. Control calls are synchronous on the server (the POST returns when the channel
has reached its new state), so a stop that hangs in STOPPING surfaces here as a timeout; the caller then polls
`channel_status` and may `halt`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from activities.engines._common import (
    credentials,
    segment,
    session_cookie,
    short,
    transport_error,
    valid_id,
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

STATUS_KEY = "com.mirth.connect.donkey.model.message.Status"
LOGIN_OK = ("SUCCESS", "SUCCESS_GRACE_PERIOD")
STATES: dict[str, State] = {
    "STARTED": "started", "STOPPED": "stopped", "PAUSED": "paused",
    "STARTING": "starting", "DEPLOYING": "starting",
    "STOPPING": "stopping", "UNDEPLOYING": "stopping",
    "PAUSING": "pausing", "UNDEPLOYED": "undeployed",
    "SYNCING": "unknown", "UNKNOWN": "unknown",
}


def _many(value: Any) -> list[Any]:
    """A staxon list: null → [], one object → [it], array → itself."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    """Staxon's autoPrimitive turns "true"/"12" into JSON booleans/numbers; give the XML text back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def statistics(stats: Any) -> dict[str, int]:
    """`{"@class":"linked-hash-map","entry":[{"<Status>":"SENT","long":3}]}` (entry may be one object) → {SENT: 3}."""
    out: dict[str, int] = {}
    if not isinstance(stats, dict):
        return out
    for entry in _many(stats.get("entry")):
        if isinstance(entry, dict):
            out[_text(entry.get(STATUS_KEY))] = _int(entry.get("long", entry.get("int")))
    return out


def channel_from_status(status: dict[str, Any], name: str = "") -> EngineChannel:
    """One dashboardStatus → EngineChannel (destination connectors summarised in `detail`)."""
    raw = _text(status.get("state")) or "UNKNOWN"
    stats = statistics(status.get("statistics"))
    detail: dict[str, str] = {}
    children = status.get("childStatuses")
    for child in _many(children.get("dashboardStatus") if isinstance(children, dict) else None):
        if not isinstance(child, dict) or _text(child.get("statusType")) != "DESTINATION_CONNECTOR":
            continue
        key = f"destination {_text(child.get('metaDataId'))} {_text(child.get('name'))}"
        detail[key] = f"{_text(child.get('state'))} queued={_int(child.get('queued'))}"
    if status.get("deployedRevisionDelta") is not None:
        detail["deployedRevisionDelta"] = _text(status.get("deployedRevisionDelta"))
    return EngineChannel(
        id=_text(status.get("channelId")), name=_text(status.get("name")) or name,
        state=STATES.get(raw, "unknown"), raw_state=raw, queued=_int(status.get("queued")),
        received=stats.get("RECEIVED", 0), sent=stats.get("SENT", 0), errors=stats.get("ERROR", 0),
        filtered=stats.get("FILTERED", 0), detail=detail,
    )


class MirthAdapter:
    kind = "mirth"
    # No clear_queue: Mirth documents no queue purge (only per-message remove/reprocess), so it is not offered.
    capabilities = frozenset({"start", "stop", "pause", "resume", "halt"})

    def __init__(self, engine: Engine, http: httpx.AsyncClient | None = None) -> None:
        assert engine.url, "a mirth engine needs url"
        self.engine = engine
        self._base = engine.url.rstrip("/")
        self._timeout = engine.timeout.total_seconds()
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(verify=engine.verify_tls, timeout=self._timeout)
        self._session: str | None = None
        self._login_lock = asyncio.Lock()

    # -- transport --------------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"X-Requested-With": "lifeline", "Accept": "application/json"}
        if self._session:
            headers["Cookie"] = f"JSESSIONID={self._session}"
        return headers

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, self._base + path, headers=self._headers(),
                                            timeout=self._timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.engine, exc) from exc

    async def _login(self, stale: str | None) -> None:
        async with self._login_lock:
            if self._session is not None and self._session != stale:
                return  # another call logged in meanwhile
            self._session = None
            user, password = credentials(self.engine)
            resp = await self._send("POST", "/users/_login", data={"username": user, "password": password})
            if resp.status_code == 503:
                raise EngineError(f"mirth {self.engine.name} is starting (503)")
            body = self._json(resp) if resp.content else {}
            login = body.get("com.mirth.connect.model.LoginStatus") if isinstance(body, dict) else None
            status = _text(login.get("status")) if isinstance(login, dict) else ""
            message = _text(login.get("message")) if isinstance(login, dict) else ""
            if resp.status_code in (401, 403) or (status and status not in LOGIN_OK):
                raise EngineAuthError(f"mirth {self.engine.name} login refused: {status or resp.status_code} {message}")
            if resp.status_code != 200:
                raise EngineError(f"mirth {self.engine.name} login failed: HTTP {resp.status_code} {short(resp.text)}")
            self._session = session_cookie(resp)
            if not self._session:
                raise EngineError(f"mirth {self.engine.name} login set no JSESSIONID cookie")

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._session is None:
            await self._login(None)
        resp = await self._send(method, path, **kwargs)
        if resp.status_code == 401:  # session expired (or server restarted): log in again, once
            await self._login(self._session)
            resp = await self._send(method, path, **kwargs)
        if resp.status_code in (401, 403):
            raise EngineAuthError(f"mirth {self.engine.name}: HTTP {resp.status_code} on {method} {path}")
        if resp.status_code == 503:
            raise EngineError(f"mirth {self.engine.name} is starting (503)")
        return resp

    def _json(self, resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise EngineError(f"mirth {self.engine.name}: not JSON (HTTP {resp.status_code}): "
                              f"{short(resp.text, 200)}") from exc

    async def _get(self, path: str, **params: Any) -> Any:
        resp = await self._request("GET", path, params=params or None)
        if resp.status_code == 404:
            raise EngineNotFound(f"mirth {self.engine.name}: {path} not found")
        if resp.status_code != 200:
            raise EngineError(f"mirth {self.engine.name}: HTTP {resp.status_code} on GET {path}: {short(resp.text)}")
        return self._json(resp)

    # -- reads ------------------------------------------------------------------------------------------------

    async def names(self) -> dict[str, str]:
        """Every channel (deployed or not): id → name."""
        body = await self._get("/channels/idsAndNames")
        mapping = body.get("map") if isinstance(body, dict) else None
        out: dict[str, str] = {}
        for entry in _many(mapping.get("entry") if isinstance(mapping, dict) else None):
            pair = _many(entry.get("string")) if isinstance(entry, dict) else []
            if len(pair) == 2:
                out[_text(pair[0])] = _text(pair[1])
        return out

    async def list_channels(self) -> list[EngineChannel]:
        names = await self.names()
        body = await self._get("/channels/statuses")
        listing = body.get("list") if isinstance(body, dict) else None
        statuses = _many(listing.get("dashboardStatus") if isinstance(listing, dict) else None)
        deployed = {c.id: c for c in (channel_from_status(s) for s in statuses if isinstance(s, dict))}
        channels = list(deployed.values())
        for cid, name in names.items():
            if cid not in deployed:
                channels.append(EngineChannel(id=cid, name=name, state="undeployed", raw_state="UNDEPLOYED"))
        return watched(self.engine, channels)

    async def _resolve(self, channel_id: str) -> tuple[str, dict[str, str]]:
        """Accept a channel name as well as its id (lifeline.yaml may list either)."""
        names = await self.names()
        if channel_id in names and valid_id(channel_id):
            return channel_id, names
        by_name = [cid for cid, name in names.items() if name == channel_id and valid_id(cid)]
        if len(by_name) == 1:
            return by_name[0], names
        raise EngineNotFound(f"mirth {self.engine.name}: no channel {channel_id!r}")

    async def channel_status(self, channel_id: str) -> EngineChannel:
        names: dict[str, str] | None = None
        cid = channel_id
        try:
            if not valid_id(cid):
                raise EngineNotFound(cid)  # maybe a display name: resolve it against the engine's own list
            body = await self._get(f"/channels/{segment(self.engine, cid)}/status")
        except EngineNotFound:  # a name, an undeployed channel, or no such channel
            cid, names = await self._resolve(channel_id)
            try:
                body = await self._get(f"/channels/{segment(self.engine, cid)}/status")
            except EngineNotFound:
                return EngineChannel(id=cid, name=names.get(cid, ""), state="undeployed", raw_state="UNDEPLOYED")
        status = body.get("dashboardStatus") if isinstance(body, dict) else None
        if not isinstance(status, dict):
            raise EngineError(f"mirth {self.engine.name}: unexpected status body for {cid}")
        return channel_from_status(status, (names or {}).get(cid, ""))

    # -- control ----------------------------------------------------------------------------------------------

    async def _control(self, channel_id: str, verb: str) -> None:
        cid, _ = await self._resolve(channel_id)
        path = f"/channels/{segment(self.engine, cid)}/_{verb}"
        # returnErrors: without it Mirth answers 204 even when the operation failed.
        resp = await self._request("POST", path, params={"returnErrors": "true"})
        if resp.status_code in (200, 204):
            return
        if resp.status_code == 404:
            raise EngineNotFound(f"mirth {self.engine.name}: channel {cid} not found")
        raise EngineError(f"mirth {self.engine.name}: {verb} {cid} failed (HTTP {resp.status_code}): "
                          f"{short(resp.text)}")

    async def start(self, channel_id: str) -> None:
        await self._control(channel_id, "start")

    async def stop(self, channel_id: str) -> None:
        await self._control(channel_id, "stop")

    async def pause(self, channel_id: str) -> None:
        await self._control(channel_id, "pause")

    async def resume(self, channel_id: str) -> None:
        await self._control(channel_id, "resume")

    async def halt(self, channel_id: str) -> None:
        await self._control(channel_id, "halt")

    async def clear_queue(self, channel_id: str) -> int:
        raise EngineNotSupported("Mirth has no documented queue clear; stop the destination or reprocess/remove "
                                 "messages one by one instead")

    async def close(self) -> None:
        if self._session is not None:
            try:
                await self._http.post(self._base + "/users/_logout", headers=self._headers(), timeout=self._timeout)
            except httpx.HTTPError:
                pass  # best effort: the server expires the session anyway
            self._session = None
        if self._own_http:
            await self._http.aclose()
