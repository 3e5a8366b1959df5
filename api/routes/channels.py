"""REST ingress: the same accept path as MLLP."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from activities.store import accept
from api.deps import ConfigDep, CurrentUser, PoolDep, SettingsDep, guarded
from api.problems import Problem

router = APIRouter(prefix="/api/channels", tags=["ingress"])
HL7_TYPES = ("text/plain", "x-application/hl7-v2+er7", "application/hl7-v2")
MAX_BODY = 16 * 1024 * 1024


@router.post("/{channel}/messages", status_code=202, dependencies=guarded("sender")["dependencies"],
             openapi_extra={**guarded("sender")["openapi_extra"], "requestBody": {
                 "required": True, "content": {t: {"schema": {"type": "string"}} for t in HL7_TYPES}}})
async def post_message(channel: str, request: Request, pool: PoolDep, config: ConfigDep, settings: SettingsDep,
                       user: CurrentUser) -> JSONResponse:
    """Accept one HL7 v2 message (ER7 text); 202 with the message id and ACK, 422 with findings."""
    ch = config.channel(channel)
    if ch is None or ch.org != user.org:
        raise Problem(404, f"no channel named {channel!r}", field="channel")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in HL7_TYPES:
        raise Problem(415, f"content type must be one of {', '.join(HL7_TYPES)}", field="content-type")
    body = await request.body()
    if not body.strip():
        raise Problem(422, "empty body: send one HL7 v2 message", field="body")
    limit = ch.mllp.max_message_bytes if ch.mllp else MAX_BODY
    if len(body) > limit:
        raise Problem(413, f"message larger than {limit} bytes", field="body")
    peer = request.client.host if request.client else None
    result = await accept(pool, request.app.state.store_cipher, ch, body, source="rest", peer=peer,
                          limits=settings.message_limits())
    payload: dict[str, Any] = {"message_id": result.message_id, "status": result.status,
                               "ack_code": result.ack_code, "ack": result.ack, "duplicate": result.duplicate,
                               "findings": result.findings}
    if result.status == "rejected":
        errors = [f for f in result.findings if f["severity"] == "error"]
        first = errors[0] if errors else {}
        payload.update({"type": "about:blank", "title": "Message rejected", "status": 422,
                        "detail": first.get("text", "message rejected"),
                        "field": _field_name(first)})
        return JSONResponse(payload, status_code=422, media_type="application/problem+json")
    return JSONResponse(payload, status_code=202)


def _field_name(f: dict[str, Any]) -> str:
    if not f:
        return "body"
    name = f"{f.get('segment') or 'MSH'}"
    if f.get("field"):
        name += f"-{f['field']}"
        if f.get("component"):
            name += f".{f['component']}"
    return name
