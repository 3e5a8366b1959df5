"""REST ingress: the same accept path as MLLP."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from activities.store import accept
from api.deps import ConfigDep, CurrentUser, PoolDep, SettingsDep, guarded
from api.models import Public, StoredFinding
from api.problems import PROBLEM_MEDIA_TYPE, Problem, ProblemDetails

router = APIRouter(prefix="/api/channels", tags=["ingress"])
HL7_TYPES = ("text/plain", "x-application/hl7-v2+er7", "application/hl7-v2")
MAX_BODY = 16 * 1024 * 1024
ADT_EXAMPLE = ("MSH|^~\\&|EHR|HOSP|LAB|HOSP|20240101120000||ADT^A01|MSG0001|P|2.5\rEVN|A01|20240101120000\r"
               "PID|1||M1^^^HOSP^MR||DOE^JANE||19800101|F\rPV1|1|I")


class Accepted(Public):
    """The message is stored (committed) and ACKed."""

    model_config = {"json_schema_extra": {"examples": [
        {"message_id": "01JD3Y8W6M3K5Q2V7T9R4N1B0C", "status": "accepted", "ack_code": "AA",
         "ack": "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240101120001||ACK^A01|A1|P|2.5\rMSA|AA|MSG0001",
         "duplicate": False, "findings": []}]}}

    message_id: str
    status: Literal["accepted"]
    ack_code: str = Field(description="AA")
    ack: str = Field(description="the HL7 ACK (ER7) the engine sends for it over MLLP")
    duplicate: bool = Field(description="a resend of a stored message: ACKed again, not delivered twice")
    findings: list[StoredFinding] = Field(description="warnings (a message with errors is rejected)")


class Rejected(ProblemDetails):
    """A rejected message is stored too (invariant 2): problem details plus the accept result with its AR/AE."""

    message_id: str | None = None
    ack_code: str | None = Field(default=None, description="AR or AE")
    ack: str | None = None
    duplicate: bool | None = None
    findings: list[StoredFinding] | None = None


_BODY = {"required": True, "content": {t: {"schema": {"type": "string"}, "example": ADT_EXAMPLE} for t in HL7_TYPES}}


@router.post("/{channel}/messages", status_code=202, response_model=Accepted,
             **guarded("sender", 404, 413, 415, body=_BODY, responses={
                 422: {"model": Rejected, "content": {PROBLEM_MEDIA_TYPE: {}},
                       "description": "rejected (stored, answered AR/AE; findings name segment and field),"
                                      " or an empty body"}}))
async def post_message(channel: str, request: Request, pool: PoolDep, config: ConfigDep, settings: SettingsDep,
                       user: CurrentUser) -> Any:
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
        return JSONResponse(payload, status_code=422, media_type=PROBLEM_MEDIA_TYPE)
    return Accepted(**payload)


def _field_name(f: dict[str, Any]) -> str:
    if not f:
        return "body"
    name = f"{f.get('segment') or 'MSH'}"
    if f.get("field"):
        name += f"-{f['field']}"
        if f.get("component"):
            name += f".{f['component']}"
    return name
