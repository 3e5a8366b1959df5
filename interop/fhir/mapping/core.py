"""The mapping core: field access that records what was consumed, dates, keys, entries and the Bundle."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from interop.errors import MappingError
from interop.fhir.datatypes import (
    JSON,
    Composite,
    DateError,
    MappingConfig,
    conditional_query,
    cwe_concept,
    parse_dtm,
    to_date,
    to_datetime,
    to_instant,
)
from interop.fhir.validation import validate_bundle
from interop.message import Message, Segment

# Fixed namespace for every uuid5 the mapper derives: changing it changes every fullUrl and key.
NAMESPACE = uuid.UUID("5b0f3c3e-8f7e-5d2a-9a43-6c1e0f4d2b71")
# System of identifiers the mapper derives when v2 carries no business identifier for a resource.
KEY_SYSTEM = "urn:lifeline:key"
MESSAGE_SYSTEM = "urn:lifeline:msg:"
# Identifier system whose values are URIs (an Organization keyed on the identifier system it assigns).
URI_SYSTEM = "urn:ietf:rfc:3986"

# Header and envelope segments: their content is about the message, not the patient record.
HEADER_SEGMENTS = frozenset({"MSH", "EVN", "SFT", "UAC"})


@dataclass(frozen=True, slots=True)
class MappingIssue:
    """Content the mapping could not carry into FHIR: where (``OBX[2]-5``) and why."""

    location: str
    reason: str
    severity: str = "warning"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass(frozen=True, slots=True)
class MappingResult:
    """A transaction Bundle (JSON-ready dict) and the issues met while building it."""

    bundle: JSON
    issues: list[MappingIssue]

    def resources(self, resource_type: str | None = None) -> list[JSON]:
        """The bundle's resources, optionally only those of one type."""
        return [
            e["resource"] for e in self.bundle.get("entry", [])
            if resource_type is None or e["resource"]["resourceType"] == resource_type
        ]


@dataclass(slots=True)
class Context:
    """Where the walk over the segments is: the current order, report, resource for NTE, ..."""

    orc: Segment | None = None
    order: JSON | None = None          # current ServiceRequest / MedicationRequest
    order_ref: JSON | None = None
    report: JSON | None = None         # current DiagnosticReport
    specimen_ref: JSON | None = None
    parent: JSON | None = None         # resource an OBX hangs off (Immunization, MedicationDispense, ...)
    parent_ref: JSON | None = None
    orc_used: bool = True              # False while an ORC waits for its OBR / RXE / RXA
    note_target: JSON | None = None    # resource the next NTE annotates
    extra: dict[str, Any] = field(default_factory=dict)


class Mapper:
    """State of one message's mapping: entries by fullUrl, issues, and which fields were consumed."""

    def __init__(self, message: Message, config: MappingConfig) -> None:
        self.msg = message
        self.cfg = config
        self.seps = message.separators
        self.issues: list[MappingIssue] = []
        self.entries: dict[str, JSON] = {}
        self.used: dict[int, set[int]] = {}
        self.labels: dict[int, str] = {}
        counts: dict[str, int] = {}
        for seg in message.segments:
            counts[seg.id] = counts.get(seg.id, 0) + 1
            n = counts[seg.id]
            self.labels[id(seg)] = seg.id if n == 1 else f"{seg.id}[{n}]"
        self.authority = message.sending_facility or message.sending_application or "unknown"
        msh_tz = None
        try:
            msh_tz = parse_dtm(message.msh.get(7)).tz if message.msh.get(7) else None
        except DateError:
            pass
        self.default_tz = msh_tz or config.default_timezone
        self.trigger = message.trigger_event
        self.patient_ref: JSON | None = None
        self.patient_key: JSON | None = None
        self.encounter_ref: JSON | None = None
        self.encounter_key: JSON | None = None
        self.ctx = Context()
        # unique_key bookkeeping: values handed out, and per base key the next suffix to try (linear).
        self.keys_seen: set[str] = set()
        self.key_next: dict[str, int] = {}

    # -- field access that records what was consumed -----------------------------------------------
    def loc(self, seg: Segment, field_: int | None = None) -> str:
        label = self.labels[id(seg)]
        return label if field_ is None else f"{label}-{field_}"

    def use(self, seg: Segment, *fields: int) -> None:
        self.used.setdefault(id(seg), set()).update(fields)

    def use_all(self, seg: Segment) -> None:
        self.use(seg, *range(1, len(seg) + 1))

    def val(self, seg: Segment, n: int) -> str:
        self.use(seg, n)
        return seg.get(n).strip()

    def comp(self, seg: Segment, n: int, rep: int = 1) -> Composite:
        self.use(seg, n)
        raws = seg.repetitions(n)
        return Composite(raws[rep - 1] if rep <= len(raws) else "", self.seps)

    def reps(self, seg: Segment, n: int) -> list[Composite]:
        self.use(seg, n)
        return [c for c in (Composite(r, self.seps) for r in seg.repetitions(n)) if c]

    def texts(self, seg: Segment, n: int) -> list[str]:
        """Every repetition of a text field, unescaped (empty ones kept)."""
        self.use(seg, n)
        return [seg.get(n, r).strip() for r in range(1, len(seg.repetitions(n)) + 1)]

    def issue(self, location: str, reason: str, severity: str = "warning") -> None:
        self.issues.append(MappingIssue(location, reason, severity))

    def skip(self, seg: Segment, n: int, reason: str, severity: str = "warning") -> None:
        """The segment cannot be mapped without field n: an issue at that field, and the segment counts as read."""
        self.issue(self.loc(seg, n), reason, severity)
        self.use_all(seg)

    def required_concept(self, seg: Segment, n: int, missing: str, table: str = "",
                         severity: str = "warning") -> JSON | None:
        """Field n as a CodeableConcept; None (the segment skipped with `missing`) when it holds no code."""
        code = cwe_concept(self.comp(seg, n), self.cfg, table)
        if code is None:
            self.skip(seg, n, missing, severity)
        return code

    # -- dates ------------------------------------------------------------------------------------
    def datetime(self, seg: Segment, n: int, value: str | None = None) -> str | None:
        text = value if value is not None else self.val(seg, n)
        if not text:
            return None
        try:
            out, complete = to_datetime(text, self.default_tz)
        except DateError as exc:
            self.issue(self.loc(seg, n), str(exc))
            return None
        if not complete:
            self.issue(self.loc(seg, n), "time without a UTC offset (none in the value or MSH-7, no "
                       "default_timezone configured): kept at date precision", "information")
        return out

    def date(self, seg: Segment, n: int, value: str | None = None) -> str | None:
        text = value if value is not None else self.val(seg, n)
        if not text:
            return None
        try:
            return to_date(text)
        except DateError as exc:
            self.issue(self.loc(seg, n), str(exc))
            return None

    def instant(self, seg: Segment, n: int, value: str | None = None) -> str | None:
        text = value if value is not None else self.val(seg, n)
        if not text:
            return None
        try:
            out = to_instant(text, self.default_tz)
        except DateError as exc:
            self.issue(self.loc(seg, n), str(exc))
            return None
        if out is None:
            self.issue(self.loc(seg, n), "not precise to the minute with a UTC offset: cannot be a FHIR instant")
        return out

    def period(self, seg: Segment, start: int, end: int) -> JSON:
        return {k: v for k, v in (("start", self.datetime(seg, start)), ("end", self.datetime(seg, end))) if v}

    # -- keys ---------------------------------------------------------------------------------------
    def derived_key(self, resource_type: str, *parts: str) -> JSON:
        """A deterministic identifier for a resource v2 gives no business identifier for."""
        value = str(uuid.uuid5(NAMESPACE, "|".join((resource_type, *parts))))
        return {"system": KEY_SYSTEM, "value": value}

    def message_key(self, resource_type: str, seg: Segment, *extra: str) -> JSON:
        """Key scoped to this message (sender + control id + segment): a re-delivery maps to the same."""
        return self.derived_key(resource_type, self.msg.sending_application, self.msg.sending_facility,
                                self.msg.control_id, self.loc(seg), *extra)

    def unique_key(self, resource_type: str, *parts: str) -> JSON:
        """Derived key, disambiguated (``…|2``, ``…|3``) when two segments of this message would share it.

        Linear in the number of segments: the next suffix to try is remembered per base key, so n
        identical segments cost n key derivations, not n²/2.
        """
        base = self.derived_key(resource_type, *parts)
        n = self.key_next.get(base["value"], 1)
        key = base if n == 1 else self.derived_key(resource_type, *parts, str(n))
        while key["value"] in self.keys_seen:
            n += 1
            key = self.derived_key(resource_type, *parts, str(n))
        self.key_next[base["value"]] = n + 1
        self.keys_seen.add(key["value"])
        return key

    def patient_parts(self) -> tuple[str, str]:
        key = self.patient_key or {"system": "", "value": ""}
        return key["system"], key["value"]

    def encounter_parts(self) -> tuple[str, str]:
        key = self.encounter_key or {"system": "", "value": ""}
        return key["system"], key["value"]

    # -- entries ----------------------------------------------------------------------------------
    def full_url(self, resource_type: str, key: JSON) -> str:
        return "urn:uuid:" + str(uuid.uuid5(NAMESPACE, f"{resource_type}|{key['system']}|{key['value']}"))

    def add(self, resource: JSON, key: JSON, *, update: bool = True) -> JSON:
        """Add a conditional entry keyed on ``key`` (deduplicated by it); returns a reference to its fullUrl."""
        rt = resource["resourceType"]
        full = self.full_url(rt, key)
        if full not in self.entries:
            idents: list[JSON] = resource.setdefault("identifier", [])
            if not any(i.get("system") == key["system"] and i.get("value") == key["value"] for i in idents):
                idents.append(dict(key))
            query = conditional_query(key)
            request: JSON = (
                {"method": "PUT", "url": f"{rt}?{query}"} if update
                else {"method": "POST", "url": rt, "ifNoneExist": query}
            )
            self.entries[full] = {"fullUrl": full, "resource": resource, "request": request}
        return {"reference": full}

    def add_tagged(self, resource: JSON, key: JSON) -> JSON:
        """Conditional create for a resource type without ``identifier`` (Provenance): keyed on a meta tag."""
        rt = resource["resourceType"]
        full = self.full_url(rt, key)
        if full not in self.entries:
            resource.setdefault("meta", {}).setdefault("tag", []).append(
                {"system": key["system"], "code": key["value"]})
            query = f"_tag={quote(key['system'], safe=':/.')}|{quote(key['value'], safe='')}"
            self.entries[full] = {"fullUrl": full, "resource": resource,
                                  "request": {"method": "POST", "url": rt, "ifNoneExist": query}}
        return {"reference": full}

    def resource(self, ref: JSON) -> JSON:
        """The resource a reference returned by ``add`` points at."""
        return self.entries[ref["reference"]]["resource"]  # type: ignore[no-any-return]

    def subject(self) -> JSON:
        if self.patient_ref is None:
            raise MappingError(f"{self.msg.message_type}: no PID segment, the resources have no subject")
        return dict(self.patient_ref)

    def with_encounter(self, res: JSON, field_: str = "encounter") -> None:
        if self.encounter_ref is not None:
            res[field_] = dict(self.encounter_ref)

    # -- the Bundle -------------------------------------------------------------------------------
    def report_unused(self) -> None:
        for seg in self.msg.segments:
            if seg.id in HEADER_SEGMENTS:
                continue
            used = self.used.get(id(seg))
            if used is None:
                self.issue(self.loc(seg), f"segment {seg.id} is not mapped for {self.msg.message_type}")
                continue
            for n in range(1, len(seg) + 1):
                if n not in used and seg.field(n).strip():
                    self.issue(self.loc(seg, n), "field not mapped")
        for n in self.msg.ignored_lines:
            self.issue(f"line {n}", "not a segment: ignored by the parser")

    def message_instant(self) -> str | None:
        if not self.msg.msh.get(7):
            return None
        try:
            return to_instant(self.msg.msh.get(7), self.default_tz)
        except DateError:
            return None

    def bundle_identifier(self) -> JSON:
        return {
            "system": MESSAGE_SYSTEM + quote(self.msg.sending_application, safe="") + ":"
            + quote(self.msg.sending_facility, safe=""),
            "value": self.msg.control_id or "unknown",
        }

    def result(self) -> MappingResult:
        self.report_unused()
        bundle: JSON = {"resourceType": "Bundle", "type": "transaction", "identifier": self.bundle_identifier()}
        if ts := self.message_instant():
            bundle["timestamp"] = ts
        bundle["entry"] = [prune(e) for e in self.entries.values()]
        validate_bundle(bundle)
        return MappingResult(bundle, self.issues)


def simple(q: JSON) -> JSON:
    """A SimpleQuantity (no comparator)."""
    return {k: v for k, v in q.items() if k != "comparator"}


def concept_text(concept: JSON) -> str:
    """The human-readable text of a CodeableConcept (text, else first display, else first code)."""
    if concept.get("text"):
        return str(concept["text"])
    first = (concept.get("coding") or [{}])[0]
    return str(first.get("display") or first.get("code") or "")


def prune(value: Any) -> Any:
    """Drop empty lists / dicts / strings so the JSON carries no hollow elements."""
    if isinstance(value, dict):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ("", None, [], {})}
    if isinstance(value, list):
        items = [prune(v) for v in value]
        return [v for v in items if v not in ("", None, [], {})]
    return value
