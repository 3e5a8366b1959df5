"""Build ACK / NAK messages for inbound HL7 v2 messages, and read the ACKs peers send back.

Original mode (AA/AE/AR) or enhanced mode (CA/CE/CR) follows the inbound MSH-15: when the sender asks for
accept acknowledgments it is in enhanced mode and gets a commit ACK. Errors go in ERR segments: ERR-2
location, ERR-3 code (table 0357), ERR-4 severity from v2.5; ERR-1 (ELD) before v2.5, as each version wants.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from interop.errors import (
    APPLICATION_INTERNAL_ERROR,
    ERROR_CODE_TEXT,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION_ID,
    HL7ParseError,
    InteropError,
)
from interop.message import (
    DEFAULT_SEPARATORS,
    Message,
    Separators,
    escape,
    normalize,
    parse,
    separators_from_header,
    unescape,
)
from interop.validate import PROCESSING_IDS, Finding, is_supported_version, version_tuple

DEFAULT_VERSION = "2.5.1"
POSITIVE = frozenset({"AA", "CA"})
ERROR = frozenset({"AE", "CE"})
REJECT = frozenset({"AR", "CR"})
ACK_CODES = POSITIVE | ERROR | REJECT
# Conditions about the envelope rather than the content: the receiver will not take the message at all.
REJECT_CONDITIONS = frozenset(
    {UNSUPPORTED_MESSAGE_TYPE, UNSUPPORTED_EVENT_CODE, UNSUPPORTED_PROCESSING_ID, UNSUPPORTED_VERSION_ID}
)
_CODE = re.compile(r"^[A-Z0-9]{3}$")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
# Framing bytes and other control characters must never leak into an ACK (they would break MLLP).
_CONTROL = dict.fromkeys(range(32))
_MAX_ERRORS = 50


@dataclass(frozen=True, slots=True)
class _Header:
    """What an ACK needs from the inbound header, already escaped for ``seps``."""

    seps: Separators
    sending: tuple[str, str]
    receiving: tuple[str, str]
    control_id: str
    trigger: str
    processing_id: str
    version: str
    enhanced: bool
    charset: str = ""


def _clean(raw: str) -> str:
    return raw.translate(_CONTROL)


def _header_from_message(m: Message) -> _Header:
    msh = m.msh
    version = msh.get(12, component=1)
    trigger = msh.get(9, component=2)
    processing = msh.get(11, component=1)
    return _Header(
        seps=m.separators,
        # Raw copies keep components such as OIDs; the ACK uses the same separators, so they stay valid.
        sending=(_clean(msh.field(3)), _clean(msh.field(4))),
        receiving=(_clean(msh.field(5)), _clean(msh.field(6))),
        control_id=_clean(msh.field(10)),
        trigger=trigger if _CODE.match(trigger) else "",
        processing_id=processing if processing in PROCESSING_IDS else "P",
        version=version if is_supported_version(version) else DEFAULT_VERSION,
        enhanced=bool(msh.get(15)),
        charset=_clean(msh.field(18)),
    )


def resolve_code(code: str | None, findings: Iterable[Finding], *, enhanced: bool) -> str:
    """The acknowledgment code for an outcome, in the mode the sender asked for."""
    if code is None:
        errors = [f for f in findings if f.severity == "error"]
        if any(f.code in REJECT_CONDITIONS for f in errors):
            code = "AR"
        elif errors:
            code = "AE"
        else:
            code = "AA"
    code = code.upper()
    if code not in ACK_CODES:
        raise ValueError(f"acknowledgment code {code!r} is not one of {sorted(ACK_CODES)}")
    return ("C" if enhanced else "A") + code[1]


def should_send_ack(message: Message, code: str) -> bool:
    """Whether MSH-15 (accept ack type) asks for an ACK with this code; original mode always does."""
    wanted = message.msh.get(15)
    positive = code in POSITIVE
    if wanted == "NE":
        return False
    if wanted == "ER":
        return not positive
    if wanted == "SU":
        return positive
    return True


def build_ack(
    message: Message | str | bytes,
    *,
    code: str | None = None,
    findings: Iterable[Finding] = (),
    text: str | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """ACK for a message; the code comes from ``findings`` unless given (AA/AE/AR, CA/CE/CR in enhanced mode)."""
    if not isinstance(message, Message):
        raw = message
        try:
            message = parse(raw)
        except InteropError as exc:
            return build_nak_for_unparseable(raw, exc, control_id=control_id, now=now)
    return _render(_header_from_message(message), code, list(findings), text, control_id, now)


def build_nak_for_unparseable(
    raw_text: str | bytes,
    error: BaseException | str,
    *,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """AR (CR in enhanced mode) for input that cannot be parsed, echoing what of its header can be read."""
    if isinstance(raw_text, bytes):
        raw_text = raw_text.decode("utf-8", errors="replace")
    header = _best_effort_header(raw_text)
    if isinstance(error, HL7ParseError):
        segment = error.segment if _SEGMENT_ID.match(error.segment or "") else "MSH"
        finding = Finding(code=error.code, severity="error", text=error.reason, segment=segment,
                          occurrence=max(1, error.occurrence), field=error.field)
    elif isinstance(error, str):
        finding = Finding(code=SEGMENT_SEQUENCE_ERROR, severity="error", text=error)
    else:
        finding = Finding(code=APPLICATION_INTERNAL_ERROR, severity="error",
                          text=str(error) or type(error).__name__)
    return _render(header, "AR", [finding], None, control_id, now)


def _best_effort_header(raw: str) -> _Header:
    text = normalize(raw)
    start = text.find("MSH")
    line = text[start:].split("\r", 1)[0] if start != -1 else ""
    try:
        seps = separators_from_header(line)
        usable = True
    except HL7ParseError:
        seps, usable = DEFAULT_SEPARATORS, False
    fs = line[3] if len(line) > 3 and not line[3].isalnum() else "|"
    parts = line.split(fs)
    parts.insert(1, fs)  # MSH-1 is the separator itself

    def value(n: int, comp: int = 1) -> str:
        # Plain text of one component, escaped again for the ACK's own separators.
        raw_field = parts[n] if 3 <= n < len(parts) else ""
        if usable:
            comps = raw_field.split(seps.repetition)[0].split(seps.component)
            plain = unescape(comps[comp - 1], seps) if len(comps) >= comp else ""
        else:
            comps = raw_field.split("^")
            plain = comps[comp - 1] if len(comps) >= comp else ""
        return escape(_clean(plain)[:199], seps)

    version = value(12)
    trigger = value(9, 2)
    processing = value(11)
    return _Header(
        seps=seps,
        sending=(value(3), value(4)),
        receiving=(value(5), value(6)),
        control_id=value(10),
        trigger=trigger if _CODE.match(trigger) else "",
        processing_id=processing if processing in PROCESSING_IDS else "P",
        version=version if is_supported_version(version) else DEFAULT_VERSION,
        enhanced=bool(value(15)),
    )


def _timestamp(now: datetime | None) -> str:
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%d%H%M%S")
    return stamp + now.strftime("%z") if now.tzinfo else stamp


def _render(h: _Header, code: str | None, findings: list[Finding], text: str | None,
            control_id: str | None, now: datetime | None) -> str:
    s = h.seps
    fs, cs, ss = s.field, s.component, s.subcomponent
    ack_code = resolve_code(code, findings, enhanced=h.enhanced)
    version = version_tuple(h.version)
    reported = [f for f in findings if f.severity == "error" or version >= (2, 5)][:_MAX_ERRORS]
    if ack_code not in POSITIVE and not any(f.severity == "error" for f in reported):
        # A negative ACK always says why (invariant: AR/AE carry an ERR).
        reported.insert(0, Finding(code=APPLICATION_INTERNAL_ERROR, severity="error",
                                   text=text or ERROR_CODE_TEXT[APPLICATION_INTERNAL_ERROR]))
    own_id = escape(_clean(control_id), s) if control_id else uuid.uuid4().hex[:20].upper()
    if version >= (2, 3, 1):
        msg_type = cs.join(("ACK", h.trigger, "ACK"))
    else:
        msg_type = cs.join(("ACK", h.trigger)) if h.trigger else "ACK"
    msh = [
        "MSH", s.encoding_characters, h.receiving[0], h.receiving[1], h.sending[0], h.sending[1],
        _timestamp(now), "", msg_type, own_id, h.processing_id, h.version,
    ]
    if h.charset:
        msh += ["", "", "", "", "", h.charset]
    segments = [fs.join(msh)]
    msa = ["MSA", ack_code, h.control_id]
    msa_text = text if text is not None else (reported[0].text if reported and ack_code not in POSITIVE else "")
    if msa_text and version < (2, 7):
        msa.append(escape(_clean(msa_text)[:80], s))  # MSA-3 is 80 characters in every version having it
    segments.append(fs.join(msa))
    if version >= (2, 5):
        for f in reported:
            location = cs.join(_location(f)).rstrip(cs)
            condition = cs.join((f.code, escape(f.code_text, s), "HL70357"))
            severity = "E" if f.severity == "error" else "W"
            segments.append(fs.join(("ERR", "", location, condition, severity, "", "", "",
                                     escape(_clean(f.text), s))))
    elif reported:
        eld = []
        for f in reported:
            parts = [f.segment, str(f.occurrence), str(f.field) if f.field is not None else "",
                     ss.join((f.code, escape(_clean(f.text) or f.code_text, s), "HL70357"))]
            eld.append(cs.join(parts))
        segments.append(fs.join(("ERR", s.repetition.join(eld))))
    return "\r".join(segments) + "\r"


def _location(f: Finding) -> list[str]:
    parts = [f.segment, str(f.occurrence)]
    if f.field is not None:
        parts += [str(f.field), str(f.repetition or 1)]
        if f.component is not None:
            parts.append(str(f.component))
            if f.subcomponent is not None:
                parts.append(str(f.subcomponent))
    return parts


@dataclass(frozen=True, slots=True)
class AckError:
    """One error reported in a peer's ACK (ERR segment, ERR-1 repetition or MSA-6)."""

    code: str
    text: str
    severity: str = "E"
    location: str = ""


@dataclass(frozen=True, slots=True)
class AckInfo:
    """What a peer's ACK says: the code, the control id it acknowledges and the errors it reports."""

    code: str
    control_id: str
    text: str = ""
    errors: tuple[AckError, ...] = ()
    ack_control_id: str = ""
    version: str = ""
    sending_application: str = ""

    @property
    def is_positive(self) -> bool:
        return self.code in POSITIVE

    @property
    def is_error(self) -> bool:
        return self.code in ERROR

    @property
    def is_reject(self) -> bool:
        return self.code in REJECT

    @property
    def is_enhanced(self) -> bool:
        """True for a commit (accept) ACK: CA / CE / CR."""
        return self.code.startswith("C")

    @property
    def error_codes(self) -> list[str]:
        return [e.code for e in self.errors if e.code]

    @property
    def error_texts(self) -> list[str]:
        texts = [e.text for e in self.errors if e.text]
        return [self.text, *texts] if self.text and self.text not in texts else texts


def parse_ack(text: str | bytes | Message) -> AckInfo:
    """Read an ACK received from a peer; raise :class:`HL7ParseError` when it carries no usable MSA."""
    m = text if isinstance(text, Message) else parse(text)
    msa = m.segment("MSA")
    if msa is None:
        raise HL7ParseError("the reply has no MSA segment: not an acknowledgment",
                            code=REQUIRED_FIELD_MISSING, segment="MSA")
    code = msa.get(1).strip().upper()
    if code not in ACK_CODES:
        raise HL7ParseError(f"MSA-1 acknowledgment code {code!r} is not one of AA AE AR CA CE CR",
                            code=REQUIRED_FIELD_MISSING if not code else "103", segment="MSA", field=1)
    errors: list[AckError] = []
    for err in m.all("ERR"):
        if err.field(3) or err.field(2):
            detail = err.get(8) or err.get(7) or err.get(3, component=2)
            location = "-".join(p for p in err.components(2)[:3] if p)
            errors.append(AckError(err.get(3, component=1), detail, err.get(4) or "E", location))
        for rep in range(1, len(err.repetitions(1)) + 1):
            seg_id, seq, fld = (err.get(1, rep, n) for n in (1, 2, 3))
            condition = err.get(1, rep, 4, 1)
            detail = err.get(1, rep, 4, 2)
            if seg_id or condition:
                errors.append(AckError(condition, detail, "E", "-".join(p for p in (seg_id, seq, fld) if p)))
    if msa.field(6):  # v2.2-2.4 error condition
        errors.append(AckError(msa.get(6, component=1), msa.get(6, component=2), "E"))
    return AckInfo(
        code=code,
        control_id=msa.get(2),
        text=msa.get(3),
        errors=tuple(errors),
        ack_control_id=m.control_id,
        version=m.version,
        sending_application=m.sending_application,
    )
