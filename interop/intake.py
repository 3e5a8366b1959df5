"""The CPU half of accepting a message: normalise, hash, parse (within limits), validate and build the answer.

Pure and synchronous so the listener, the REST ingress and tests can run it in a worker thread
(``asyncio.to_thread``) and keep the event loop free while a large message is checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from interop.ack import build_ack, build_nak_for_unparseable
from interop.errors import HL7ParseError
from interop.message import NO_LIMITS, Limits, Message, normalize, parse
from interop.validate import Finding, Level, validate

# Table 0357 codes that make a message unacceptable as a whole (AR) rather than in its content (AE).
REJECT_CODES = frozenset({"100", "200", "201", "202", "203"})


@dataclass(slots=True)
class Inbound:
    """What the store needs to record one inbound message and what the sender is answered once it is committed."""

    body: str
    content_hash: bytes
    message: Message | None
    status: Literal["accepted", "rejected"]
    ack: str
    ack_code: str
    findings: list[dict[str, Any]] = field(default_factory=list)


def finding_dict(f: Finding) -> dict[str, Any]:
    """A finding as stored with the message and returned by the API."""
    return {"segment": f.segment, "occurrence": f.occurrence, "field": f.field, "component": f.component,
            "code": f.code, "severity": f.severity, "text": f.text}


def prepare_inbound(raw: bytes | str, level: Level = "tolerant", limits: Limits = NO_LIMITS) -> Inbound:
    """Check one inbound message; never raises on bad input (it becomes a rejected Inbound with an AR/AE)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    body = normalize(text)
    content_hash = hashlib.sha256(body.encode()).digest()
    try:
        message = parse(body, limits=limits)
    except HL7ParseError as exc:
        findings = [{"segment": exc.segment, "occurrence": exc.occurrence, "field": exc.field, "component": None,
                     "code": exc.code, "severity": "error", "text": exc.reason}]
        return Inbound(body, content_hash, None, "rejected", build_nak_for_unparseable(body, exc), "AR", findings)
    report = validate(message, level=level)
    findings = [finding_dict(f) for f in report.findings]
    errors = report.errors
    if errors:
        code = "AR" if any(f.code in REJECT_CODES for f in errors) else "AE"
        return Inbound(body, content_hash, message, "rejected", build_ack(message, code=code, findings=report.findings),
                       code, findings)
    return Inbound(body, content_hash, message, "accepted", build_ack(message, code="AA", findings=report.findings),
                   "AA", findings)
