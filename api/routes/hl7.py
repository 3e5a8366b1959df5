"""HL7 v2 tools over REST: parse, validate (with the ACK the engine would send), generate, v2 <-> FHIR.

Stateless: nothing here touches the store or Temporal, and no message text is logged.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from api.deps import guarded
from api.models import Public
from api.problems import Problem
from interop.ack import REJECT_CONDITIONS, build_ack
from interop.errors import (
    SEGMENT_SEQUENCE_ERROR,
    GenerationError,
    HL7ParseError,
    InteropError,
    MappingError,
    MessageTooLarge,
    PathError,
)
from interop.fhir import patient_to_adt, supports, to_fhir_bundle
from interop.generate import from_dict, generate
from interop.message import (
    DEFAULT_SEPARATORS,
    NO_LIMITS,
    Batch,
    Limits,
    Message,
    Segment,
    Separators,
    check_limits,
    is_batch,
    normalize,
    parse,
    parse_batch,
    parse_path,
    separators_from_header,
    unescape,
)
from interop.validate import Finding, validate

router = APIRouter(prefix="/api/hl7", tags=["hl7"])

MAX_BODY_BYTES = 4 * 1024 * 1024  # the default MLLP max_message_bytes of a channel
LEVELS = ("tolerant", "strict")
TRIGGERS = ("A28", "A31", "A08")
ENGINE_REJECT_CODES = REJECT_CONDITIONS | {SEGMENT_SEQUENCE_ERROR}
_TEXT_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string"}, "example": "MSH|^~\\&|EHR|HOSP|||20240101||ADT^A01|1|P|2.5.1"},
        "application/json": {"schema": {"type": "object", "required": ["message"],
                                         "properties": {"message": {"type": "string"}}}},
    },
}
_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}


# -- response models ---------------------------------------------------------------------------------
class FieldPublic(Public):
    field: int = Field(description="the field number (MSH-1 is the field separator)")
    value: str = Field(description="the field unescaped, as one string")
    repetitions: list[list[str | list[str]]] = Field(
        description="per repetition, its components (a component with subcomponents is a list)")


class SegmentPublic(Public):
    id: str = Field(examples=["PID"])
    occurrence: int = Field(description="1 for the first segment with this id")
    fields: list[FieldPublic] = Field(description="the non-empty fields")


class SeparatorsPublic(Public):
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str


class Header(Public):
    type: str = Field(examples=["ADT^A01"])
    message_code: str
    trigger_event: str
    structure: str
    control_id: str
    version: str
    processing_id: str
    timestamp: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    separators: SeparatorsPublic


class ParsedMessageBody(Public):
    header: Header
    segments: list[SegmentPublic]
    ignored_lines: list[int] = Field(description="line numbers that were not segments (blank, garbage)")
    values: dict[str, str] | None = Field(default=None, description="?path=...: each path's value ('' when absent)")


class ParsedMessage(ParsedMessageBody):
    batch: Literal[False]


class ParsedBatch(Public):
    batch: Literal[True]
    envelope: list[SegmentPublic] = Field(description="FHS / BHS / BTS / FTS")
    declared_count: int | None = Field(description="the count BTS/FTS declare")
    messages: list[ParsedMessageBody]


class FindingPublic(Public):
    segment: str
    occurrence: int
    field: int | None
    repetition: int | None
    component: int | None
    code: str = Field(description="HL7 table 0357 error code")
    code_text: str
    severity: str = Field(description="error | warning | info")
    location: str = Field(examples=["PID-3"])
    text: str


class ShortHeader(Public):
    type: str
    control_id: str


class ValidationReport(Public):
    ok: bool
    level: Literal["tolerant", "strict"]
    parsed: bool = Field(description="false: not parseable at all (the findings say why)")
    header: ShortHeader | None
    findings: list[FindingPublic]
    ack: str = Field(description="the ACK (AA/AE/AR with ERR segments) the engine would answer")


class ValidatedMessage(ValidationReport):
    batch: Literal[False]


class ValidatedBatch(Public):
    batch: Literal[True]
    ok: bool
    level: Literal["tolerant", "strict"]
    messages: list[ValidationReport]


class Generated(Public):
    message: str = Field(description="ER7, segments separated by CR")
    type: str
    control_id: str


class MappingIssue(Public):
    location: str
    reason: str
    severity: str


class Transformed(Public):
    bundle: dict[str, Any] = Field(description="a FHIR R4 transaction Bundle (conditional, idempotent entries)")
    issues: list[MappingIssue]


# -- request bodies ----------------------------------------------------------------------------------
async def _raw_body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise Problem(413, f"body of {len(body)} bytes exceeds the maximum of {MAX_BODY_BYTES}", field="body")
    if not body.strip():
        raise Problem(422, "empty body: send the HL7 message as text/plain or JSON {\"message\": \"...\"}",
                      field="body")
    return body


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def _json_body(request: Request) -> Any:
    body = await _raw_body(request)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(422, f"body is not JSON: {exc}", field="body") from None


async def _message_text(request: Request) -> str:
    """The HL7 text of a request: the raw body, or the ``message`` member of a JSON body."""
    if _is_json(request):
        data = await _json_body(request)
        if not isinstance(data, dict) or not isinstance(data.get("message"), str):
            raise Problem(422, "a JSON body must be an object with a string member 'message'", field="body.message")
        text: str = data["message"]
        if not text.strip():
            raise Problem(422, "body.message is empty", field="body.message")
        return text
    return (await _raw_body(request)).decode("utf-8", errors="replace")


def _parse_error(exc: HL7ParseError) -> Problem:
    where = f"{exc.segment}-{exc.field}" if exc.field else exc.segment
    return Problem(422, exc.reason, field=where, code=exc.code)


def _limits(request: Request) -> Limits:
    limits: Limits = request.app.state.settings.message_limits()
    return limits


def _parse_one(text: str, limits: Limits = NO_LIMITS) -> Message:
    try:
        return parse(text, limits=limits)
    except HL7ParseError as exc:
        raise _parse_error(exc) from None


def _check_paths(paths: list[str]) -> None:
    for p in paths:
        try:
            parse_path(p)
        except PathError as exc:
            raise Problem(422, str(exc), field="path") from None


# -- JSON views --------------------------------------------------------------------------------------
def _component(raw: str, seps: Separators) -> str | list[str]:
    if seps.subcomponent in raw:
        return [unescape(s, seps) for s in raw.split(seps.subcomponent)]
    return unescape(raw, seps)


def segment_json(seg: Segment, occurrence: int, seps: Separators) -> dict[str, Any]:
    """A segment's non-empty fields: repetitions of components (a component with subcomponents is a list)."""
    fields: list[dict[str, Any]] = []
    for n in range(1, len(seg) + 1):
        raw = seg.field(n)
        if not raw:
            continue
        if seg.id in ("MSH", "FHS", "BHS") and n in (1, 2):
            fields.append({"field": n, "value": raw, "repetitions": [[raw]]})
            continue
        reps = [[_component(c, seps) for c in rep.split(seps.component)] for rep in raw.split(seps.repetition)]
        fields.append({"field": n, "value": unescape(raw, seps), "repetitions": reps})
    return {"id": seg.id, "occurrence": occurrence, "fields": fields}


def header_json(msg: Message) -> dict[str, Any]:
    s = msg.separators
    return {
        "type": msg.message_type, "message_code": msg.message_code, "trigger_event": msg.trigger_event,
        "structure": msg.message_structure, "control_id": msg.control_id, "version": msg.version,
        "processing_id": msg.processing_id, "timestamp": msg.msh.get(7),
        "sending_application": msg.sending_application, "sending_facility": msg.sending_facility,
        "receiving_application": msg.receiving_application, "receiving_facility": msg.receiving_facility,
        "separators": {"field": s.field, "component": s.component, "repetition": s.repetition,
                       "escape": s.escape, "subcomponent": s.subcomponent, "truncation": s.truncation},
    }


def message_json(msg: Message, paths: list[str]) -> dict[str, Any]:
    seen: dict[str, int] = {}
    segments = []
    for seg in msg.segments:
        seen[seg.id] = seen.get(seg.id, 0) + 1
        segments.append(segment_json(seg, seen[seg.id], msg.separators))
    out: dict[str, Any] = {"header": header_json(msg), "segments": segments, "ignored_lines": msg.ignored_lines}
    if paths:
        out["values"] = {p: msg.get(p) for p in paths}
    return out


def finding_json(f: Finding) -> dict[str, Any]:
    return {"segment": f.segment, "occurrence": f.occurrence, "field": f.field, "repetition": f.repetition,
            "component": f.component, "code": f.code, "code_text": f.code_text, "severity": f.severity,
            "location": f.location, "text": f.text}


def _check_limits(text: str, limits: Limits) -> None:
    """Refuse a message (or batch) over the segment limits before any per-field work."""
    try:
        check_limits(normalize(text), limits)
    except MessageTooLarge as exc:
        raise _parse_error(exc) from None


def _batch_of(text: str) -> Batch:
    try:
        return parse_batch(text)
    except HL7ParseError as exc:
        raise _parse_error(exc) from None


def _envelope(batch: Batch) -> list[dict[str, Any]]:
    """FHS / BHS / BTS / FTS segments, with the separators the first header declares."""
    segs = batch.header_segments + batch.trailer_segments
    seps = separators_from_header(batch.header_segments[0].raw) if batch.header_segments else DEFAULT_SEPARATORS
    seen: dict[str, int] = {}
    out = []
    for seg in segs:
        seen[seg.id] = seen.get(seg.id, 0) + 1
        out.append(segment_json(seg, seen[seg.id], seps))
    return out


# -- routes ------------------------------------------------------------------------------------------
# `values` only when paths were asked for.
@router.post("/parse", response_model=ParsedMessage | ParsedBatch, response_model_exclude_unset=True,
             **guarded("viewer", 413, 422))
async def parse_message(request: Request,
                        path: Annotated[list[str] | None, Query(description="PID-3[1].1, OBX[2]-5 (repeatable)")]
                        = None) -> dict[str, Any]:
    """Parse a message (or an FHS/BHS batch) into header, segments, fields, repetitions and components."""
    paths = path or []
    _check_paths(paths)
    text = await _message_text(request)
    return await asyncio.to_thread(_parse_view, text, paths, _limits(request))


def _parse_view(text: str, paths: list[str], limits: Limits) -> dict[str, Any]:
    _check_limits(text, limits)
    if is_batch(text):
        batch = _batch_of(text)
        return {"batch": True, "envelope": _envelope(batch), "declared_count": batch.declared_count,
                "messages": [message_json(m, paths) for m in batch.messages]}
    return {"batch": False, **message_json(_parse_one(text), paths)}


def _report(text: str | Message, level: str) -> dict[str, Any]:
    report = validate(text, level)  # type: ignore[arg-type]  # the caller checked level
    msg = report.message
    # The accept path's rule (activities.store): envelope errors and segment sequence errors are AR.
    errors = {f.code for f in report.findings if f.is_error}
    code = ("AR" if errors & ENGINE_REJECT_CODES else "AE") if errors else "AA"
    # build_ack on text it cannot parse answers the AR the listener sends for it.
    ack = build_ack(msg if msg is not None else text, code=code, findings=report.findings)
    header = {"type": msg.message_type, "control_id": msg.control_id} if msg is not None else None
    return {"ok": report.ok, "level": level, "parsed": msg is not None, "header": header,
            "findings": [finding_json(f) for f in report.findings], "ack": ack}


@router.post("/validate", response_model=ValidatedMessage | ValidatedBatch, **guarded("viewer", 413, 422))
async def validate_message(request: Request,
                           level: Annotated[str, Query(description="tolerant | strict")] = "tolerant"
                           ) -> dict[str, Any]:
    """Validate a message; unparseable text is a finding, answered with the AR the engine would send."""
    if level not in LEVELS:
        raise Problem(422, f"level must be one of {', '.join(LEVELS)}, not {level!r}", field="level")
    text = await _message_text(request)
    return await asyncio.to_thread(_validate_view, text, level, _limits(request))


def _validate_view(text: str, level: str, limits: Limits) -> dict[str, Any]:
    _check_limits(text, limits)
    if is_batch(text):
        batch = _batch_of(text)
        reports = [_report(m, level) for m in batch.messages]
        return {"batch": True, "ok": all(r["ok"] for r in reports), "level": level, "messages": reports}
    return {"batch": False, **_report(text, level)}


@router.post("/generate", response_model=Generated, **guarded("viewer", 413, 422))
async def generate_message(request: Request) -> dict[str, Any]:
    """Generate ADT^A01/A03/A04/A08, ORU^R01 or ORM^O01 ER7 from a JSON description (interop.generate)."""
    data = await _json_body(request)
    return await asyncio.to_thread(_generate_view, data)


def _generate_view(data: Any) -> dict[str, Any]:
    try:
        er7 = generate(from_dict(data))
    except GenerationError as exc:
        field = "body" if exc.field == "$" else f"body.{exc.field}"
        raise Problem(422, exc.reason, field=field) from None
    msg = parse(er7)
    return {"message": er7, "type": msg.message_type, "control_id": msg.control_id}


@router.post("/transform", response_model=Transformed, **guarded("viewer", 413, 422))
async def transform(request: Request) -> dict[str, Any]:
    """Map one v2 message to an idempotent FHIR R4 transaction Bundle, with the issues met on the way."""
    text = await _message_text(request)
    if is_batch(text):
        raise Problem(422, "a batch (FHS/BHS) carries several messages: transform them one at a time",
                      field="body")
    return await asyncio.to_thread(_transform_view, text, _limits(request))


def _transform_view(text: str, limits: Limits) -> dict[str, Any]:
    msg = _parse_one(text, limits)
    if not supports(msg):
        raise Problem(422, f"no FHIR mapping for message type {msg.message_type or '(none)'}", field="MSH-9")
    try:
        result = to_fhir_bundle(msg)
    except MappingError as exc:
        raise Problem(422, str(exc), field=_mapping_field(str(exc), "body")) from None
    except InteropError as exc:
        raise Problem(422, str(exc), field="body") from None
    return {"bundle": result.bundle,
            "issues": [{"location": i.location, "reason": i.reason, "severity": i.severity} for i in result.issues]}


_LOCATED = re.compile(r"^((?:Patient\.|[A-Z][A-Z0-9]{2}[-\[])[^:\s]*):")


def _mapping_field(reason: str, default: str) -> str:
    m = _LOCATED.match(reason)
    return m.group(1) if m else default


@router.post("/from-fhir", response_model=Generated, **guarded("viewer", 413, 422))
async def from_fhir(request: Request,
                    trigger: Annotated[str, Query(
                        description="A28 (add person) | A31 (update person) | A08 (update patient)")] = "A28"
                    ) -> dict[str, Any]:
    """Build an ADT^A28 / A31 / A08 from a FHIR R4 Patient resource."""
    if trigger not in TRIGGERS:
        raise Problem(422, f"trigger must be one of {', '.join(TRIGGERS)}, not {trigger!r}", field="trigger")
    patient = await _json_body(request)
    if not isinstance(patient, dict):
        raise Problem(422, "body must be a FHIR Patient resource (a JSON object)", field="body")
    if patient.get("resourceType") != "Patient":
        raise Problem(422, f"resourceType must be 'Patient', not {patient.get('resourceType')!r}",
                      field="resourceType")
    return await asyncio.to_thread(_from_fhir_view, patient, trigger)


def _from_fhir_view(patient: dict[str, Any], trigger: str) -> dict[str, Any]:
    try:
        er7 = patient_to_adt(patient, trigger=trigger)
    except MappingError as exc:
        raise Problem(422, str(exc), field=_mapping_field(str(exc), "body")) from None
    except (InteropError, AttributeError, TypeError, ValueError) as exc:
        # A resource whose members have the wrong JSON shape (a string where an object is expected).
        raise Problem(422, f"not a valid FHIR Patient: {exc}", field="body") from None
    msg = parse(er7)
    return {"message": er7, "type": f"{msg.message_type}", "control_id": msg.control_id}


for _route in router.routes:
    # Bodies are read from the request (so auth answers before any body error); document them here.
    _path = getattr(_route, "path", "")
    _extra = getattr(_route, "openapi_extra", None)
    if isinstance(_extra, dict):
        _extra["requestBody"] = _JSON_BODY if _path.endswith(("/generate", "/from-fhir")) else _TEXT_BODY
