"""Validate HL7 v2 messages: ``tolerant`` (what routing and ACKing need) or ``strict`` (structure, fields, types).

Strict validation uses Lifeline's own compact tables (``interop.structures`` and the field rules below), not
hl7apy: see docs/decisions/interop.md for why and the measurements.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from interop.errors import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    ERROR_CODE_TEXT,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION_ID,
    HL7ParseError,
    InteropError,
)
from interop.message import NO_LIMITS, Limits, Message, Segment, parse
from interop.structures import NULL, SEGMENT_SINCE, expected, required_next, step, structure, structure_for

Severity = Literal["error", "warning"]
Level = Literal["tolerant", "strict"]

_VERSION = re.compile(r"^2\.[1-8](?:\.[0-9]{1,2})?$")
_CODE = re.compile(r"^[A-Z0-9]{3}$")
_NM = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")  # no nested quantifiers: linear
_SI = re.compile(r"^[0-9]{1,4}$")
_DTM = re.compile(
    r"^(?P<y>[0-9]{4})(?:(?P<mo>[0-9]{2})(?:(?P<d>[0-9]{2})(?:(?P<h>[0-9]{2})(?:(?P<mi>[0-9]{2})"
    r"(?:(?P<s>[0-9]{2})(?:\.[0-9]{1,4})?)?)?)?)?)?(?P<tz>[+-][0-9]{4})?$"
)
_TM = re.compile(r"^[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,4})?)?)?(?:[+-][0-9]{4})?$")
PROCESSING_IDS = frozenset({"P", "T", "D"})
ACCEPT_ACK_VALUES = frozenset({"AL", "NE", "ER", "SU"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem, located the way ERR-2 locates it (segment, occurrence, field, repetition, component)."""

    code: str
    severity: Severity
    text: str
    segment: str = "MSH"
    occurrence: int = 1
    field: int | None = None
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def code_text(self) -> str:
        """The table 0357 description of the code."""
        return ERROR_CODE_TEXT.get(self.code, "Unknown error")

    @property
    def location(self) -> str:
        """Readable path such as ``PID[1]-3.1``."""
        text = f"{self.segment}[{self.occurrence}]"
        if self.field is not None:
            text += f"-{self.field}"
            if self.repetition and self.repetition != 1:
                text += f"[{self.repetition}]"
            if self.component is not None:
                text += f".{self.component}"
                if self.subcomponent is not None:
                    text += f".{self.subcomponent}"
        return text

    def __str__(self) -> str:
        return f"{self.severity} {self.code} at {self.location}: {self.text}"


@dataclass(slots=True)
class ValidationReport:
    """The findings of one validation run and the parsed message (None when it could not be parsed)."""

    level: Level
    findings: list[Finding] = field(default_factory=list)
    message: Message | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    def add(self, code: str, text: str, *, severity: Severity = "error", segment: str = "MSH",
            occurrence: int = 1, field: int | None = None, repetition: int | None = None,
            component: int | None = None) -> None:
        self.findings.append(Finding(code=code, severity=severity, text=text, segment=segment,
                                     occurrence=occurrence, field=field, repetition=repetition,
                                     component=component))


def version_tuple(version: str) -> tuple[int, ...]:
    """``2.5.1`` -> (2, 5, 1); unreadable parts become 0."""
    return tuple(int(p) if p.isdigit() and p.isascii() else 0 for p in version.split(".")[:3])


def is_supported_version(version: str) -> bool:
    """True for 2.1 .. 2.8.x."""
    return bool(_VERSION.match(version))


def validate(message: Message | str | bytes, level: Level = "tolerant", *,
             limits: Limits = NO_LIMITS) -> ValidationReport:
    """Validate a message (parsed or text); never raises on bad input, problems become findings."""
    if level not in ("tolerant", "strict"):
        raise ValueError(f"level must be 'tolerant' or 'strict', not {level!r}")
    report = ValidationReport(level)
    if not isinstance(message, Message):
        try:
            message = parse(message, limits=limits)
        except HL7ParseError as exc:
            report.add(exc.code, exc.reason, segment=exc.segment, occurrence=exc.occurrence, field=exc.field)
            return report
        except InteropError as exc:
            report.add(APPLICATION_INTERNAL_ERROR, str(exc))
            return report
    report.message = message
    _check_header(message, report)
    for lineno in message.ignored_lines:
        report.add(SEGMENT_SEQUENCE_ERROR, f"line {lineno} is not a segment and was ignored", severity="warning",
                   segment="MSH", occurrence=1)
    if level == "strict" and report.ok:
        _check_structure(message, report)
        _check_fields(message, report)
    return report


# -- tolerant: the header ------------------------------------------------------------------------
def _check_header(m: Message, report: ValidationReport) -> None:
    msh = m.msh
    version = msh.get(12, component=1)
    if not version:
        report.add(REQUIRED_FIELD_MISSING, "MSH-12 version id is missing", field=12, component=1)
    elif not _VERSION.match(version):
        report.add(UNSUPPORTED_VERSION_ID, f"version {version!r} is not supported (2.1 to 2.8.x)",
                   field=12, component=1)
    code = msh.get(9, component=1)
    trigger = msh.get(9, component=2)
    if not code:
        report.add(REQUIRED_FIELD_MISSING, "MSH-9 message type is missing", field=9, component=1)
    elif not _CODE.match(code):
        report.add(UNSUPPORTED_MESSAGE_TYPE, f"message type {code!r} is not a 3-character code",
                   field=9, component=1)
    # 2.1 carried the trigger in EVN only, and an ACK's trigger is optional.
    if not trigger:
        if code and code != "ACK" and not version.startswith("2.1"):
            report.add(REQUIRED_FIELD_MISSING, "MSH-9.2 trigger event is missing", field=9, component=2)
    elif not _CODE.match(trigger):
        report.add(UNSUPPORTED_EVENT_CODE, f"trigger event {trigger!r} is not a 3-character code",
                   field=9, component=2)
    control_id = msh.field(10)
    if not control_id:
        report.add(REQUIRED_FIELD_MISSING, "MSH-10 message control id is missing", field=10)
    elif len(control_id) > 199:
        report.add(DATA_TYPE_ERROR, "MSH-10 message control id is longer than 199 characters",
                   severity="warning", field=10)
    processing = msh.get(11, component=1)
    if not processing:
        report.add(REQUIRED_FIELD_MISSING, "MSH-11 processing id is missing", field=11, component=1)
    elif processing not in PROCESSING_IDS:
        report.add(UNSUPPORTED_PROCESSING_ID, f"processing id {processing!r} is not P, T or D",
                   field=11, component=1)
    for n in (15, 16):
        value = msh.get(n)
        if value and value not in ACCEPT_ACK_VALUES:
            report.add(TABLE_VALUE_NOT_FOUND, f"MSH-{n} {value!r} is not one of AL, NE, ER, SU",
                       severity="warning", field=n)
    if m.separators.truncation and version and version_tuple(version) < (2, 7):
        report.add(DATA_TYPE_ERROR, "MSH-2 declares a truncation character, defined only from v2.7",
                   severity="warning", field=2)


# -- strict: structure -----------------------------------------------------------------------------
def _check_structure(m: Message, report: ValidationReport) -> None:
    name = structure_for(m.message_code, m.trigger_event, m.message_structure)
    compiled = structure(name) if name else None
    if compiled is None:
        report.add(UNSUPPORTED_MESSAGE_TYPE,
                   f"no structure definition for {m.message_type or 'this message'}; structure not checked",
                   severity="warning", field=9)
        return
    state, alphabet = compiled
    version = version_tuple(m.version)
    seen: dict[str, int] = {}
    for seg in m.segments:
        occ = seen[seg.id] = seen.get(seg.id, 0) + 1
        if seg.id not in alphabet:
            if not seg.id.startswith("Z"):
                report.add(SEGMENT_SEQUENCE_ERROR, f"segment {seg.id} is not part of {name}; ignored",
                           severity="warning", segment=seg.id, occurrence=occ)
            continue
        since = SEGMENT_SINCE.get(seg.id)
        if since and version < since and occ == 1:
            report.add(SEGMENT_SEQUENCE_ERROR,
                       f"segment {seg.id} is defined from v{'.'.join(map(str, since))}, "
                       f"the message declares v{m.version}; accepted",
                       severity="warning", segment=seg.id, occurrence=occ)
        nxt = step(state, seg.id)
        if nxt is NULL:
            want = ", ".join(sorted(expected(state))) or "end of message"
            report.add(SEGMENT_SEQUENCE_ERROR,
                       f"segment {seg.id} is not expected here in {name} (expected {want})",
                       segment=seg.id, occurrence=occ)
            continue
        state = nxt
    missing = required_next(state)
    if missing:
        report.add(SEGMENT_SEQUENCE_ERROR, f"required segment {missing} is missing ({name})",
                   segment=missing.split(" ")[0], occurrence=1)


# -- strict: fields ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    """What a field must hold: presence, data type, table and the versions the rule applies to."""

    required: bool = False
    type: str = ""
    table: str = ""
    since: tuple[int, ...] = ()
    until: tuple[int, ...] = ()


R = Rule(required=True)

TABLES: dict[str, frozenset[str]] = {
    "0001": frozenset({"A", "F", "M", "N", "O", "U"}),
    "0004": frozenset({"B", "C", "E", "I", "N", "O", "P", "R", "U"}),
    "0008": frozenset({"AA", "AE", "AR", "CA", "CE", "CR"}),
    "0078": frozenset({
        "L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W", "S", "R", "I", "MS", "VS",
        "NEG", "POS", "IND", "NR", "QCF", "TOX", "LU", "HU", "RR", "CAR", "NCL", "SDD", "SYN-R", "SYN-S",
        "EX", "EXP", "AC", "HM", "MD", "NS",
    }),
    "0085": frozenset({"C", "D", "F", "I", "N", "O", "P", "R", "S", "U", "W", "X"}),
    "0119": frozenset({
        "AF", "CA", "CH", "CN", "CR", "DC", "DE", "DF", "DR", "FU", "HD", "HR", "LI", "MC", "NA", "NW", "OC",
        "OD", "OE", "OF", "OH", "OK", "OP", "OR", "PA", "PR", "PY", "RC", "RE", "RF", "RL", "RO", "RP", "RQ",
        "RR", "RU", "SC", "SN", "SR", "SS", "UA", "UC", "UD", "UF", "UH", "UM", "UN", "UR", "UX", "XO", "XR",
        "XX",
    }),
    "0123": frozenset({"O", "I", "S", "A", "P", "C", "R", "F", "X", "Y", "Z", "B", "N"}),
    "0125": frozenset({
        "AD", "CE", "CF", "CK", "CN", "CNE", "CP", "CWE", "CX", "DR", "DT", "DTM", "ED", "FT", "ID", "MA",
        "MO", "NA", "NM", "PN", "RP", "SN", "ST", "TM", "TN", "TS", "TX", "XAD", "XCN", "XON", "XPN", "XTN",
        "CM", "IS",
    }),
    "0136": frozenset({"Y", "N"}),
    "0155": ACCEPT_ACK_VALUES,
    "0271": frozenset({"AU", "DI", "DO", "IN", "IP", "LA", "PA"}),
    "0287": frozenset({"AD", "CO", "DE", "LI", "UC", "UN", "UP"}),
    "0516": frozenset({"E", "W", "I", "F"}),
}
# Local extensions of user-defined tables are common, so only these tables make an unknown value an error.
STRICT_TABLES = frozenset({"0001", "0004", "0008", "0085", "0119", "0123", "0125", "0155", "0516"})

FIELDS: dict[str, dict[int, Rule]] = {
    "MSH": {7: Rule(True, "DTM", since=(2, 5)), 13: Rule(type="NM"), 15: Rule(table="0155"),
            16: Rule(table="0155")},
    "EVN": {2: Rule(True, "DTM"), 3: Rule(type="DTM"), 6: Rule(type="DTM")},
    "PID": {1: Rule(type="SI"), 3: R, 5: R, 7: Rule(type="DTM"), 8: Rule(table="0001"), 29: Rule(type="DTM"),
            30: Rule(table="0136")},
    "PV1": {1: Rule(type="SI"), 2: Rule(True, table="0004"), 44: Rule(type="DTM"), 45: Rule(type="DTM")},
    "NK1": {1: Rule(True, "SI")},
    "AL1": {1: Rule(True, "SI"), 3: R},
    "DG1": {1: Rule(True, "SI"), 5: Rule(type="DTM")},
    "PR1": {1: Rule(True, "SI"), 3: R, 5: Rule(True, "DTM")},
    "GT1": {1: Rule(True, "SI"), 3: R},
    "IN1": {1: Rule(True, "SI"), 2: R, 3: R},
    "MRG": {1: R},
    "ORC": {1: Rule(True, table="0119"), 9: Rule(type="DTM")},
    "OBR": {1: Rule(type="SI"), 4: R, 6: Rule(type="DTM"), 7: Rule(type="DTM"), 8: Rule(type="DTM"),
            22: Rule(type="DTM"), 25: Rule(table="0123")},
    "OBX": {1: Rule(type="SI"), 2: Rule(table="0125"), 3: R, 8: Rule(table="0078"),
            11: Rule(True, table="0085"), 14: Rule(type="DTM"), 19: Rule(type="DTM")},
    "NTE": {1: Rule(type="SI")},
    "SPM": {1: Rule(type="SI"), 4: R, 17: Rule(type="DTM")},
    "TQ1": {1: Rule(type="SI"), 7: Rule(type="DTM"), 8: Rule(type="DTM")},
    "RXA": {1: Rule(True, "NM"), 2: Rule(True, "NM"), 3: Rule(True, "DTM"), 4: Rule(True, "DTM", since=(2, 5)),
            5: R, 6: Rule(True, "NM")},
    "RXR": {1: R},
    "RXE": {2: R, 3: Rule(True, "NM")},
    "RGS": {1: Rule(True, "SI")},
    "AIS": {1: Rule(True, "SI"), 3: R, 4: Rule(type="DTM")},
    "AIG": {1: Rule(True, "SI"), 3: R},
    "AIL": {1: Rule(True, "SI"), 6: Rule(type="DTM")},
    "AIP": {1: Rule(True, "SI"), 6: Rule(type="DTM")},
    "TXA": {1: Rule(True, "SI"), 2: R, 4: Rule(type="DTM"), 12: R, 17: Rule(True, table="0271")},
    "MSA": {1: Rule(True, table="0008"), 2: R},
    "ERR": {1: Rule(True, until=(2, 5)), 3: Rule(True, since=(2, 5)), 4: Rule(True, table="0516", since=(2, 5))},
    "PRT": {2: Rule(True, table="0287"), 4: R},
}


def check_type(value: str, dtype: str) -> str | None:
    """Why a value is not of a data type (None when it is); value is one unescaped repetition.

    The reason names the rule, never the value: findings are stored and shown to viewers, and values are PHI.
    """
    if dtype == "NM":
        return None if _NM.match(value) else "is not a number (NM)"
    if dtype == "SI":
        return None if _SI.match(value) else "is not a sequence id (SI)"
    if dtype in ("DTM", "TS", "DT"):
        return _check_dtm(value, date_only=dtype == "DT")
    if dtype == "TM":
        return None if _TM.match(value) else "is not a time (TM)"
    return None


def _check_dtm(value: str, *, date_only: bool) -> str | None:
    kind = "date (DT)" if date_only else "date/time (DTM)"
    m = _DTM.match(value)
    if not m or (date_only and (m.group("h") or m.group("tz"))):
        return f"is not a {kind}"
    year = int(m.group("y"))
    month = int(m.group("mo") or 1)
    day = int(m.group("d") or 1)
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return "is not a valid calendar date"
    if int(m.group("h") or 0) > 23 or int(m.group("mi") or 0) > 59 or int(m.group("s") or 0) > 59:
        return "has an invalid time of day"
    tz = m.group("tz")
    if tz and (int(tz[1:3]) > 14 or int(tz[3:]) > 59):
        return "has an invalid time zone offset"
    return None


_SN_COMPARATORS = frozenset({"", ">", "<", ">=", "<=", "=", "<>"})
_SN_SEPARATORS = frozenset({"", "-", "+", "/", ".", ":"})


def _check_sn(components: list[str]) -> str | None:
    comps = (components + ["", "", "", ""])[:4]
    comparator, num1, sep, num2 = comps
    if comparator not in _SN_COMPARATORS:
        return "SN comparator is not one of > < >= <= = <>"
    if sep not in _SN_SEPARATORS:
        return "SN separator is not one of - + / . :"
    for num in (num1, num2):
        if num and not _NM.match(num):
            return "SN number is not numeric"
    if not num1 and not num2:
        return "SN value has no number"
    return None


def _values(seg: Segment, n: int) -> Iterable[tuple[int, str, list[str]]]:
    """(repetition, raw text, unescaped components) of each valued repetition; ``""`` (null) is skipped."""
    for rep, raw in enumerate(seg.repetitions(n), start=1):
        if raw and raw != '""':
            yield rep, raw, seg.components(n, rep)


def _check_fields(m: Message, report: ValidationReport) -> None:
    version = version_tuple(m.version)
    seen: dict[str, int] = {}
    for seg in m.segments:
        occ = seen[seg.id] = seen.get(seg.id, 0) + 1
        rules = FIELDS.get(seg.id)
        if rules is None:
            continue
        for n, rule in rules.items():
            if (rule.since and version < rule.since) or (rule.until and version >= rule.until):
                continue
            if not seg.field(n):
                if rule.required:
                    report.add(REQUIRED_FIELD_MISSING, f"{seg.id}-{n} is required", segment=seg.id,
                               occurrence=occ, field=n)
                continue
            if seg.id == "MSH" and n < 3:
                continue
            for rep, raw, comps in _values(seg, n):
                first = comps[0] if comps else ""
                if rule.type:
                    # NM and SI have no components; DTM / TS carry the time in the first component.
                    value = first if rule.type in ("DTM", "TS", "DT") else raw
                    problem = check_type(value, rule.type)
                    if problem:
                        report.add(DATA_TYPE_ERROR, f"{seg.id}-{n}: {problem}", segment=seg.id,
                                   occurrence=occ, field=n, repetition=rep)
                if rule.table and first:
                    values = TABLES[rule.table]
                    if first not in values:
                        report.add(TABLE_VALUE_NOT_FOUND,
                                   f"{seg.id}-{n}: value is not in HL7 table {rule.table}",
                                   severity="error" if rule.table in STRICT_TABLES else "warning",
                                   segment=seg.id, occurrence=occ, field=n, repetition=rep, component=1)
        if seg.id == "OBX":
            _check_obx_value(seg, occ, report)


_OBX_VALUE_TYPES = {"NM": "NM", "DT": "DT", "TS": "DTM", "DTM": "DTM", "TM": "TM"}


def _check_obx_value(seg: Segment, occ: int, report: ValidationReport) -> None:
    value_type = seg.get(2, component=1)
    if not seg.field(5):
        return
    if not value_type:
        report.add(REQUIRED_FIELD_MISSING, "OBX-2 value type is required when OBX-5 is valued",
                   segment="OBX", occurrence=occ, field=2)
        return
    for rep, raw in enumerate(seg.repetitions(5), start=1):
        if not raw or raw == '""':
            continue
        comps = seg.components(5, rep)
        if value_type == "SN":
            problem = _check_sn(comps)
        elif value_type in _OBX_VALUE_TYPES:
            dtype = _OBX_VALUE_TYPES[value_type]
            problem = check_type(raw if dtype == "NM" else comps[0], dtype)
        else:
            problem = None
        if problem:
            report.add(DATA_TYPE_ERROR, f"OBX-5 ({value_type}): {problem}", segment="OBX", occurrence=occ,
                       field=5, repetition=rep)
