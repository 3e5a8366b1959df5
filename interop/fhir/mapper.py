"""HL7 v2 → FHIR R4 transaction Bundle, following the HL7 V2-to-FHIR IG segment maps where it has them."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from interop.errors import MappingError
from interop.fhir import codes
from interop.fhir.datatypes import (
    JSON,
    Composite,
    DateError,
    MappingConfig,
    conditional_query,
    cwe_concept,
    cx_identifier,
    display_name,
    ei_identifier,
    identifier_system,
    number,
    parse_dtm,
    table_concept,
    to_date,
    to_datetime,
    to_instant,
    xad_address,
    xcn_name,
    xpn_name,
    xtn_contact,
)
from interop.fhir.validation import validate_bundle
from interop.message import Message, Segment

# Fixed namespace for every uuid5 the mapper derives: changing it changes every fullUrl and key.
NAMESPACE = uuid.UUID("5b0f3c3e-8f7e-5d2a-9a43-6c1e0f4d2b71")
# System of identifiers the mapper derives when v2 carries no business identifier for a resource.
KEY_SYSTEM = "urn:lifeline:key"
MESSAGE_SYSTEM = "urn:lifeline:msg:"

# Header and envelope segments: their content is about the message, not the patient record.
_HEADER_SEGMENTS = frozenset({"MSH", "EVN", "SFT", "UAC"})

SUPPORTED_TYPES: dict[str, frozenset[str] | None] = {
    "ADT": frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A14",
                      "A21", "A22", "A27", "A28", "A31", "A38", "A40"}),
    "ORU": frozenset({"R01"}),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "VXU": frozenset({"V04"}),
    "RDE": frozenset({"O11"}),
    "SIU": frozenset({"S12", "S13", "S14", "S15", "S17", "S26"}),
    "MDM": frozenset({"T01", "T02", "T03", "T04", "T05", "T06", "T07", "T08", "T09", "T10", "T11"}),
}


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


def supports(message: Message) -> bool:
    """True when the message's type and trigger have a FHIR mapping."""
    triggers = SUPPORTED_TYPES.get(message.message_code)
    return triggers is not None and message.trigger_event in triggers


def to_fhir_bundle(message: Message, *, base_ids: Mapping[str, str] | None = None,
                   config: MappingConfig | None = None) -> MappingResult:
    """Map a v2 message to an idempotent FHIR R4 transaction Bundle; raise MappingError when it cannot."""
    cfg = config or MappingConfig()
    if base_ids:
        cfg = replace(cfg, systems={**cfg.systems, **base_ids})
    if not supports(message):
        raise MappingError(f"no FHIR mapping for message type {message.message_type or '(none)'}")
    mapper = _Mapper(message, cfg)
    handler: Callable[[], None] = {
        "ADT": mapper.adt, "ORU": mapper.oru, "ORM": mapper.orders, "OML": mapper.orders,
        "VXU": mapper.vxu, "RDE": mapper.rde, "SIU": mapper.siu, "MDM": mapper.mdm,
    }[message.message_code]
    handler()
    return mapper.result()


class _Mapper:
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
        self.keys_seen: set[str] = set()

    # -- field access that records what was consumed -----------------------------------------------
    def loc(self, seg: Segment, field: int | None = None) -> str:
        label = self.labels[id(seg)]
        return label if field is None else f"{label}-{field}"

    def use(self, seg: Segment, *fields: int) -> None:
        self.used.setdefault(id(seg), set()).update(fields)

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

    def issue(self, location: str, reason: str, severity: str = "warning") -> None:
        self.issues.append(MappingIssue(location, reason, severity))

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

    # -- entries ----------------------------------------------------------------------------------
    def derived_key(self, resource_type: str, *parts: str) -> JSON:
        """A deterministic identifier for a resource v2 gives no business identifier for."""
        value = str(uuid.uuid5(NAMESPACE, "|".join((resource_type, *parts))))
        return {"system": KEY_SYSTEM, "value": value}

    def message_key(self, resource_type: str, seg: Segment) -> JSON:
        """Key scoped to this message (sender + control id + segment): a re-delivery maps to the same."""
        return self.derived_key(resource_type, self.msg.sending_application, self.msg.sending_facility,
                                self.msg.control_id, self.loc(seg))

    def unique_key(self, resource_type: str, *parts: str) -> JSON:
        """Derived key, disambiguated when two segments of this message would share it."""
        key = self.derived_key(resource_type, *parts)
        n = 1
        while key["value"] in self.keys_seen:
            n += 1
            key = self.derived_key(resource_type, *parts, str(n))
        self.keys_seen.add(key["value"])
        return key

    def add(self, resource: JSON, key: JSON, *, update: bool = True) -> JSON:
        """Add a conditional entry keyed on ``key``; returns a reference to its fullUrl."""
        rt = resource["resourceType"]
        idents: list[JSON] = resource.setdefault("identifier", [])
        if not any(i.get("system") == key["system"] and i.get("value") == key["value"] for i in idents):
            idents.append(dict(key))
        full = "urn:uuid:" + str(uuid.uuid5(NAMESPACE, f"{rt}|{key['system']}|{key['value']}"))
        if full not in self.entries:
            query = conditional_query(key)
            request: JSON = (
                {"method": "PUT", "url": f"{rt}?{query}"} if update
                else {"method": "POST", "url": rt, "ifNoneExist": query}
            )
            self.entries[full] = {"fullUrl": full, "resource": resource, "request": request}
        ref: JSON = {"reference": full}
        return ref

    def practitioner(self, xcn: Composite) -> JSON | None:
        """XCN → reference to a Practitioner entry (created only if absent), or a display-only reference."""
        if not xcn:
            return None
        name = xcn_name(xcn)
        display = display_name(name) if name else ""
        if not xcn(1):
            return {"display": display} if display else None
        system = identifier_system(xcn(9, 1), xcn(9, 2), xcn(9, 3), self.cfg, self.authority)
        ident: JSON = {"system": system, "value": xcn(1)}
        res: JSON = {"resourceType": "Practitioner", "identifier": [ident]}
        if name:
            res["name"] = [name]
        ref = self.add(res, ident, update=False)
        if display:
            ref["display"] = display
        return ref

    def result(self) -> MappingResult:
        for seg in self.msg.segments:
            if seg.id in _HEADER_SEGMENTS:
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
        bundle: JSON = {"resourceType": "Bundle", "type": "transaction"}
        bundle["identifier"] = {
            "system": MESSAGE_SYSTEM + quote(self.msg.sending_application, safe="") + ":"
            + quote(self.msg.sending_facility, safe=""),
            "value": self.msg.control_id or "unknown",
        }
        if self.msg.msh.get(7):
            try:
                ts = to_instant(self.msg.msh.get(7), self.default_tz)
            except DateError:
                ts = None
            if ts:
                bundle["timestamp"] = ts
        bundle["entry"] = [_prune(e) for e in self.entries.values()]
        validate_bundle(bundle)
        return MappingResult(bundle, self.issues)

    # -- Patient ----------------------------------------------------------------------------------
    def patient(self, pid: Segment, *, authoritative: bool) -> JSON:
        """PID → Patient; ADT owns demographics (PUT), other messages only make sure it exists (POST)."""
        self.use(pid, 1, 33, 34)
        idents: list[JSON] = []
        key: JSON | None = None
        for cx in self.reps(pid, 3):
            ident = cx_identifier(cx, self.cfg, self.authority)
            if ident:
                idents.append(ident)
                if key is None and cx(5) == "MR":
                    key = ident
        for n in (2, 4):
            for cx in self.reps(pid, n):
                ident = cx_identifier(cx, self.cfg, self.authority)
                if ident and ident not in idents:
                    idents.append(ident)
        if not idents:
            raise MappingError(f"{self.loc(pid, 3)}: no patient identifier, a Patient cannot be keyed")
        key = key or idents[0]
        if ssn := self.val(pid, 19):
            idents.append({"system": codes.SSN, "value": ssn,
                           "type": {"coding": [{"system": codes.v2_table("0203"), "code": "SS"}]}})
        res: JSON = {"resourceType": "Patient", "identifier": idents, "active": True}
        names = [n for n in (xpn_name(x) for x in self.reps(pid, 5)) if n]
        names += [{**n, "use": "usual"} for n in (xpn_name(x) for x in self.reps(pid, 9)) if n]
        if names:
            res["name"] = names
        mmn = self.comp(pid, 6)
        if mmn(1):
            res["extension"] = [{"url": codes.MOTHERS_MAIDEN_NAME, "valueString": mmn(1)}]
        telecom = [c for c in (xtn_contact(x, "home") for x in self.reps(pid, 13)) if c]
        telecom += [c for c in (xtn_contact(x, "work") for x in self.reps(pid, 14)) if c]
        if telecom:
            res["telecom"] = telecom
        sex = self.val(pid, 8)
        if sex:
            if sex.upper() in codes.GENDER:
                res["gender"] = codes.GENDER[sex.upper()]
            else:
                self.issue(self.loc(pid, 8), f"sex {sex!r} is not in table 0001")
        if birth := self.date(pid, 7):
            res["birthDate"] = birth
        death_dt = self.datetime(pid, 29)
        death = self.val(pid, 30).upper()
        if death_dt:
            res["deceasedDateTime"] = death_dt
        elif death in ("Y", "N"):
            res["deceasedBoolean"] = death == "Y"
        addresses = [a for a in (xad_address(x) for x in self.reps(pid, 11)) if a]
        if addresses:
            res["address"] = addresses
        marital = self.comp(pid, 16)
        if marital(1):
            code = marital(1).upper()
            if code in codes.MARITAL:
                res["maritalStatus"] = {"coding": [{"system": codes.V3_MARITAL, "code": codes.MARITAL[code]}]}
            elif code == "U":
                res["maritalStatus"] = {"coding": [{"system": codes.V3_NULL_FLAVOR, "code": "UNK"}]}
            else:
                res["maritalStatus"] = cwe_concept(marital, self.cfg, "0002")
        multiple = self.val(pid, 24).upper()
        order = number(self.val(pid, 25))
        if isinstance(order, int):
            res["multipleBirthInteger"] = order
        elif multiple in ("Y", "N"):
            res["multipleBirthBoolean"] = multiple == "Y"
        languages = [c for c in (cwe_concept(x, self.cfg, "0296") for x in self.reps(pid, 15)) if c]
        if languages:
            res["communication"] = [{"language": lang} for lang in languages]
        self.patient_key = key
        self.patient_ref = self.add(res, key, update=authoritative)
        return self.patient_ref

    def patient_parts(self) -> tuple[str, str]:
        key = self.patient_key or {"system": "", "value": ""}
        return key["system"], key["value"]

    def subject(self) -> JSON:
        if self.patient_ref is None:
            raise MappingError(f"{self.msg.message_type}: no PID segment, the resources have no subject")
        return dict(self.patient_ref)

    def first_patient(self, *, authoritative: bool) -> None:
        pid = self.msg.segment("PID")
        if pid is None:
            raise MappingError(f"{self.msg.message_type}: PID segment missing")
        self.patient(pid, authoritative=authoritative)

    # -- Encounter --------------------------------------------------------------------------------
    def encounter(self, pv1: Segment, *, authoritative: bool) -> JSON | None:
        """PV1 → Encounter keyed on the visit number (PV1-19)."""
        self.use(pv1, 1)
        pclass = self.val(pv1, 2).upper()
        visit = cx_identifier(self.comp(pv1, 19), self.cfg, self.authority)
        if visit is None and (pclass == "N" or not authoritative or self.trigger in ("A28", "A31")):
            # No visit to speak of (a registration-only PV1, or a non-ADT message without a visit number).
            used = self.used[id(pv1)]
            extra = [n for n in range(3, len(pv1) + 1) if n not in used and pv1.field(n).strip()]
            if extra:
                self.issue(self.loc(pv1), "no visit number (PV1-19): no Encounter created")
            self.use(pv1, *range(1, len(pv1) + 1))
            return None
        if visit is not None and "type" not in visit:
            visit["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": "VN"}]}
        key = visit or self.message_key("Encounter", pv1)
        if visit is None:
            self.issue(self.loc(pv1, 19), "no visit number: Encounter keyed on this message only",
                       "information")
        res: JSON = {"resourceType": "Encounter", "identifier": [visit] if visit else []}
        if alt := cx_identifier(self.comp(pv1, 50), self.cfg, self.authority):
            res["identifier"].append(alt)
        status = codes.ENCOUNTER_STATUS.get(self.trigger) if self.msg.message_code == "ADT" else None
        discharged = self.datetime(pv1, 45)
        res["status"] = status or ("finished" if discharged else "in-progress")
        if pclass in codes.PATIENT_CLASS:
            code, display = codes.PATIENT_CLASS[pclass]
            res["class"] = {"system": codes.V3_ACT_CODE, "code": code, "display": display}
        else:
            if pclass:
                self.issue(self.loc(pv1, 2), f"patient class {pclass!r} has no v3-ActCode equivalent")
            res["class"] = {"system": codes.v2_table("0004"), "code": pclass} if pclass else {
                "system": codes.V3_NULL_FLAVOR, "code": "UNK"}
        types = [c for c in (cwe_concept(self.comp(pv1, 4), self.cfg, "0007"),
                             cwe_concept(self.comp(pv1, 18), self.cfg, "0018")) if c]
        if types:
            res["type"] = types
        if service := cwe_concept(self.comp(pv1, 10), self.cfg, "0069"):
            res["serviceType"] = service
        res["subject"] = self.subject()
        participants: list[JSON] = []
        for field, role, display in ((7, "ATND", "attender"), (8, "REF", "referrer"),
                                     (9, "CON", "consultant"), (17, "ADM", "admitter")):
            for xcn in self.reps(pv1, field):
                ref = self.practitioner(xcn)
                if ref:
                    participants.append({
                        "type": [{"coding": [{"system": codes.V3_PARTICIPATION, "code": role,
                                              "display": display}]}],
                        "individual": ref,
                    })
        if participants:
            res["participant"] = participants
        period = {k: v for k, v in (("start", self.datetime(pv1, 44)), ("end", discharged)) if v}
        if period:
            res["period"] = period
        hosp: JSON = {}
        if src := cwe_concept(self.comp(pv1, 14), self.cfg, "0023"):
            hosp["admitSource"] = src
        if disp := cwe_concept(self.comp(pv1, 36), self.cfg, "0112"):
            hosp["dischargeDisposition"] = disp
        if readmit := self.val(pv1, 13):
            hosp["reAdmission"] = table_concept(readmit, "0092")
        if hosp:
            res["hospitalization"] = hosp
        locations: list[JSON] = []
        for field, status_ in ((3, "active"), (6, "completed"), (11, "planned")):
            pl = self.comp(pv1, field)
            text = _location_display(pl)
            if text:
                locations.append({"location": {"display": text},
                                  "status": "reserved" if field == 11 else status_})
        if locations:
            res["location"] = locations
        if fac := self.comp(pv1, 39)(1):
            res["serviceProvider"] = {"display": fac}
        self.encounter_key = key
        self.encounter_ref = self.add(res, key, update=authoritative)
        return self.encounter_ref

    def encounter_parts(self) -> tuple[str, str]:
        key = self.encounter_key or {"system": "", "value": ""}
        return key["system"], key["value"]

    def with_encounter(self, res: JSON, field: str = "encounter") -> None:
        if self.encounter_ref is not None:
            res[field] = dict(self.encounter_ref)

    # -- ADT --------------------------------------------------------------------------------------
    def adt(self) -> None:
        if self.trigger == "A40":
            self.merge()
            return
        self.first_patient(authoritative=True)
        pv1 = self.msg.segment("PV1")
        if pv1 is not None:
            self.encounter(pv1, authoritative=True)
        for seg in self.msg.all("NK1"):
            self.related_person(seg)
        for seg in self.msg.all("AL1"):
            self.allergy(seg)
        for seg in self.msg.all("DG1"):
            self.condition(seg)
        for seg in self.msg.all("IN1"):
            self.coverage(seg)
        for pid in self.msg.all("PID")[1:]:
            self.issue(self.loc(pid), "more than one PID in a non-merge ADT: only the first is mapped")

    def merge(self) -> None:
        """A40: each PID (survivor) / MRG (retired) pair → survivor ``replaces`` retired, retired inactive."""
        pids, mrgs = self.msg.all("PID"), self.msg.all("MRG")
        if not mrgs:
            raise MappingError("ADT^A40: MRG segment missing, nothing says which patient is merged")
        for pid, mrg in zip(pids, mrgs, strict=False):
            survivor = self.patient(pid, authoritative=True)
            self.use(mrg, 1, 4, 7)
            idents = [i for i in (cx_identifier(c, self.cfg, self.authority)
                                  for c in [*self.reps(mrg, 1), *self.reps(mrg, 4)]) if i]
            if not idents:
                raise MappingError(f"{self.loc(mrg, 1)}: no prior patient identifier to merge")
            retired: JSON = {"resourceType": "Patient", "identifier": idents, "active": False,
                             "link": [{"other": dict(survivor), "type": "replaced-by"}]}
            names = [n for n in (xpn_name(x) for x in self.reps(mrg, 7)) if n]
            if names:
                retired["name"] = names
            retired_ref = self.add(retired, idents[0], update=True)
            entry = self.entries[survivor["reference"]]["resource"]
            entry.setdefault("link", []).append({"other": retired_ref, "type": "replaces"})
        if len(pids) != len(mrgs):
            self.issue("MRG", f"{len(pids)} PID and {len(mrgs)} MRG segments: only complete pairs merged")

    def related_person(self, nk1: Segment) -> None:
        """NK1 → RelatedPerson."""
        self.use(nk1, 1)
        pat_sys, pat_val = self.patient_parts()
        names = [n for n in (xpn_name(x) for x in self.reps(nk1, 2)) if n]
        rel = self.comp(nk1, 3)
        relationship: list[JSON] = []
        if rel(1):
            code = rel(1).upper()
            if code in codes.RELATIONSHIP:
                relationship.append({"coding": [{"system": codes.V3_ROLE_CODE,
                                                 "code": codes.RELATIONSHIP[code]}], "text": rel(2) or code})
            else:
                concept = cwe_concept(rel, self.cfg, "0063")
                if concept:
                    relationship.append(concept)
        if role := cwe_concept(self.comp(nk1, 7), self.cfg, "0131"):
            relationship.append(role)
        idents = [i for i in (cx_identifier(c, self.cfg, self.authority) for c in self.reps(nk1, 33)) if i]
        name_text = display_name(names[0]) if names else self.val(nk1, 1)
        key = idents[0] if idents else self.unique_key("RelatedPerson", pat_sys, pat_val, rel(1), name_text)
        res: JSON = {"resourceType": "RelatedPerson", "identifier": idents, "patient": self.subject()}
        if relationship:
            res["relationship"] = relationship
        if names:
            res["name"] = names
        telecom = [c for c in (xtn_contact(x, "home") for x in self.reps(nk1, 5)) if c]
        telecom += [c for c in (xtn_contact(x, "work") for x in self.reps(nk1, 6)) if c]
        if telecom:
            res["telecom"] = telecom
        addresses = [a for a in (xad_address(x) for x in self.reps(nk1, 4)) if a]
        if addresses:
            res["address"] = addresses
        sex = self.val(nk1, 15).upper()
        if sex in codes.GENDER:
            res["gender"] = codes.GENDER[sex]
        if birth := self.date(nk1, 16):
            res["birthDate"] = birth
        period = {k: v for k, v in (("start", self.date(nk1, 8)), ("end", self.date(nk1, 9))) if v}
        if period:
            res["period"] = period
        self.add(res, key)

    def allergy(self, al1: Segment) -> None:
        """AL1 → AllergyIntolerance keyed on patient + allergen."""
        self.use(al1, 1)
        allergen = self.comp(al1, 3)
        code = cwe_concept(allergen, self.cfg)
        if code is None:
            self.issue(self.loc(al1, 3), "allergen missing: AllergyIntolerance not created")
            self.use(al1, *range(1, len(al1) + 1))
            return
        pat_sys, pat_val = self.patient_parts()
        key = self.unique_key("AllergyIntolerance", pat_sys, pat_val, allergen(3), allergen(1) or allergen(2))
        res: JSON = {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": codes.ALLERGY_CLINICAL, "code": "active"}]},
            "type": "allergy",
            "code": code,
            "patient": self.subject(),
        }
        kind = self.comp(al1, 2)(1).upper()
        if kind:
            category = codes.ALLERGY_CATEGORY.get(kind, "")
            if category:
                res["category"] = [category]
            elif kind not in codes.ALLERGY_CATEGORY:
                self.issue(self.loc(al1, 2), f"allergen type {kind!r} is not in table 0127")
            if kind in ("DI", "FI", "MI", "EI"):  # the table's "intolerance" variants
                res["type"] = "intolerance"
        severity = self.comp(al1, 4)(1).upper()
        if severity in codes.ALLERGY_CRITICALITY:
            res["criticality"] = codes.ALLERGY_CRITICALITY[severity]
        elif severity:
            self.issue(self.loc(al1, 4), f"allergy severity {severity!r} is not in table 0128")
        self.use(al1, 5)
        reactions = [r for r in (unescaped.strip() for unescaped in _rep_texts(al1, 5, self)) if r]
        if reactions:
            reaction: JSON = {"manifestation": [{"text": r} for r in reactions]}
            if severity in codes.ALLERGY_SEVERITY:
                reaction["severity"] = codes.ALLERGY_SEVERITY[severity]
            res["reaction"] = [reaction]
        if onset := self.datetime(al1, 6):
            res["onsetDateTime"] = onset
        self.add(res, key)

    def condition(self, dg1: Segment) -> None:
        """DG1 → Condition (encounter-diagnosis), linked from Encounter.diagnosis."""
        self.use(dg1, 1, 2)
        code = cwe_concept(self.comp(dg1, 3), self.cfg)
        desc = self.val(dg1, 4)
        if code is None and desc:
            code = {"text": desc}
        elif code is not None and desc and "text" not in code:
            code["text"] = desc
        if code is None:
            self.issue(self.loc(dg1, 3), "diagnosis code missing: Condition not created")
            self.use(dg1, *range(1, len(dg1) + 1))
            return
        ident = ei_identifier(self.comp(dg1, 20), self.cfg, self.authority)
        pat_sys, pat_val = self.patient_parts()
        enc_sys, enc_val = self.encounter_parts()
        key = ident or self.unique_key("Condition", pat_sys, pat_val, enc_sys, enc_val,
                                       self.comp(dg1, 3)(1) or desc, self.val(dg1, 6))
        res: JSON = {
            "resourceType": "Condition",
            "identifier": [ident] if ident else [],
            "category": [{"coding": [{"system": codes.CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
            "code": code,
            "subject": self.subject(),
        }
        kind = self.val(dg1, 6).upper()
        if kind in codes.DIAGNOSIS_VERIFICATION:
            res["verificationStatus"] = {"coding": [{"system": codes.CONDITION_VER_STATUS,
                                                     "code": codes.DIAGNOSIS_VERIFICATION[kind]}]}
        self.with_encounter(res)
        if onset := self.datetime(dg1, 5):
            res["onsetDateTime"] = onset
        if who := self.practitioner(self.comp(dg1, 16)):
            res["asserter"] = who
        ref = self.add(res, key)
        if self.encounter_ref is not None:
            enc = self.entries[self.encounter_ref["reference"]]["resource"]
            diag: JSON = {"condition": ref}
            if kind:
                diag["use"] = table_concept(kind, "0052")
            rank = number(self.val(dg1, 15))
            if isinstance(rank, int) and rank > 0:
                diag["rank"] = rank
            enc.setdefault("diagnosis", []).append(diag)
        else:
            self.use(dg1, 15)

    def coverage(self, in1: Segment) -> None:
        """IN1 → Coverage keyed on the policy number (IN1-36) under the insurer's authority."""
        self.use(in1, 1)
        insurer = self.comp(in1, 3)
        insurer_name = self.comp(in1, 4)(1)
        policy = self.val(in1, 36)
        pat_sys, pat_val = self.patient_parts()
        ident: JSON | None = None
        if policy:
            authority = insurer(1) or insurer_name or self.authority
            ident = {"system": identifier_system(insurer(4, 1), insurer(4, 2), insurer(4, 3), self.cfg,
                                                 authority) if insurer(4) else
                     self.cfg.id_prefix + quote(authority, safe=""), "value": policy}
        plan = self.comp(in1, 2)
        key = ident or self.unique_key("Coverage", pat_sys, pat_val, insurer(1) or insurer_name, plan(1))
        payor: JSON = {"display": insurer_name or insurer(1) or "unknown payor"}
        if insurer(1):
            payor["identifier"] = {"system": identifier_system(insurer(4, 1), insurer(4, 2), insurer(4, 3),
                                                               self.cfg, self.authority),
                                   "value": insurer(1)}
        res: JSON = {"resourceType": "Coverage", "identifier": [ident] if ident else [], "status": "active",
                     "beneficiary": self.subject(), "payor": [payor]}
        if plan_type := cwe_concept(self.comp(in1, 15), self.cfg, "0086"):
            res["type"] = plan_type
        classes: list[JSON] = []
        if plan(1):
            classes.append({"type": {"coding": [{"system": codes.COVERAGE_CLASS, "code": "plan"}]},
                            "value": plan(1), **({"name": plan(2)} if plan(2) else {})})
        group, group_name = self.val(in1, 8), self.val(in1, 9)
        if group:
            classes.append({"type": {"coding": [{"system": codes.COVERAGE_CLASS, "code": "group"}]},
                            "value": group, **({"name": group_name} if group_name else {})})
        elif group_name:
            self.issue(self.loc(in1, 9), "group name without group number (IN1-8): not mapped")
        if classes:
            res["class"] = classes
        period = {k: v for k, v in (("start", self.date(in1, 12)), ("end", self.date(in1, 13))) if v}
        if period:
            res["period"] = period
        rel = self.comp(in1, 17)(1).upper()
        if rel in codes.SUBSCRIBER:
            res["relationship"] = {"coding": [{"system": codes.SUBSCRIBER_RELATIONSHIP,
                                               "code": codes.SUBSCRIBER[rel]}]}
            if rel == "SEL":
                res["subscriber"] = self.subject()
                self.use(in1, 16, 18, 19)
        elif rel:
            self.issue(self.loc(in1, 17), f"relationship {rel!r} has no subscriber-relationship equivalent")
        if sub_id := self.comp(in1, 49)(1):
            res["subscriberId"] = sub_id
        order = number(self.val(in1, 22))
        if isinstance(order, int) and order > 0:
            res["order"] = order
        self.add(res, key)

    # -- ORU --------------------------------------------------------------------------------------
    def oru(self) -> None:
        self.first_patient(authoritative=False)
        if (pv1 := self.msg.segment("PV1")) is not None:
            self.encounter(pv1, authoritative=False)
        orc: Segment | None = None
        report: JSON | None = None
        obr: Segment | None = None
        note_target: JSON | None = None
        for seg in self.msg.segments:
            if seg.id == "ORC":
                orc = seg
                self.use(orc, *range(1, len(orc) + 1))  # the OBR carries what the report needs
            elif seg.id == "OBR":
                obr, report = seg, self.diagnostic_report(seg, orc)
                orc, note_target = None, None
            elif seg.id == "OBX":
                if report is None or obr is None:
                    self.issue(self.loc(seg), "OBX before any OBR: not mapped")
                    continue
                note_target = self.observation(seg, obr, report)
            elif seg.id == "NTE" and note_target is not None:
                self.note(seg, note_target)
        for entry in self.entries.values():
            res = entry["resource"]
            if res["resourceType"] == "DiagnosticReport" and res["status"] == "unknown":
                statuses = {self.entries[r["reference"]]["resource"]["status"] for r in res["result"]}
                if len(statuses) == 1 and "unknown" not in statuses:
                    res["status"] = statuses.pop()

    def diagnostic_report(self, obr: Segment, orc: Segment | None) -> JSON:
        """OBR → DiagnosticReport keyed on the filler order number."""
        self.use(obr, 1)
        ident = None
        for seg, n, kind in ((obr, 3, "FILL"), (orc, 3, "FILL"), (obr, 2, "PLAC"), (orc, 2, "PLAC")):
            if seg is not None and ident is None:
                ident = ei_identifier(self.comp(seg, n), self.cfg, self.authority, kind)
        self.use(obr, 2, 3)
        key = ident or self.message_key("DiagnosticReport", obr)
        code = cwe_concept(self.comp(obr, 4), self.cfg)
        if code is None:
            self.issue(self.loc(obr, 4), "universal service identifier missing")
            code = {"text": "unknown"}
        status_code = self.val(obr, 25).upper()
        status = codes.REPORT_STATUS.get(status_code, "unknown")
        if status == "unknown":
            self.issue(self.loc(obr, 25), f"result status {status_code!r} unknown: taken from the OBX-11 "
                       "statuses when they agree, else 'unknown'")
        res: JSON = {"resourceType": "DiagnosticReport", "identifier": [ident] if ident else [],
                     "status": status, "code": code, "subject": self.subject()}
        if section := cwe_concept(self.comp(obr, 24), self.cfg, "0074"):
            res["category"] = [section]
        self.with_encounter(res)
        if effective := self.datetime(obr, 7):
            res["effectiveDateTime"] = effective
        if issued := self.instant(obr, 22):
            res["issued"] = issued
        performers = [p for p in (self.practitioner(x) for x in self.reps(obr, 32)) if p]
        if performers:
            res["resultsInterpreter"] = performers
        placer = ei_identifier(self.comp(obr, 2), self.cfg, self.authority, "PLAC")
        if placer:
            res["basedOn"] = [{"type": "ServiceRequest", "identifier": placer}]
        res["result"] = []
        self.add(res, key)
        return res

    def observation(self, obx: Segment, obr: Segment, report: JSON) -> JSON:
        """OBX → Observation, value typed by OBX-2."""
        self.use(obx, 1, 4)
        code = cwe_concept(self.comp(obx, 3), self.cfg)
        if code is None:
            self.issue(self.loc(obx, 3), "observation identifier missing")
            code = {"text": "unknown"}
        report_key = report["identifier"][-1]
        ident = ei_identifier(self.comp(obx, 21), self.cfg, self.authority)
        code_id = self.comp(obx, 3)
        key = ident or self.unique_key("Observation", report_key["system"], report_key["value"],
                                       code_id(3), code_id(1) or code_id(2), self.val(obx, 4))
        status_code = self.val(obx, 11).upper()
        status = codes.OBSERVATION_STATUS.get(status_code, "unknown")
        if status == "unknown":
            self.issue(self.loc(obx, 11), f"result status {status_code!r} unknown: status 'unknown'")
        res: JSON = {"resourceType": "Observation", "identifier": [ident] if ident else [], "status": status,
                     "code": code, "subject": self.subject()}
        if "category" in report:
            res["category"] = report["category"]
        self.with_encounter(res)
        effective = self.datetime(obx, 14) or report.get("effectiveDateTime")
        if effective:
            res["effectiveDateTime"] = effective
        self.observation_value(obx, res)
        unit = self.comp(obx, 6)
        ranges = self.reference_range(obx, unit)
        if ranges:
            res["referenceRange"] = [ranges]
        interpretations = [self.interpretation(c) for c in self.reps(obx, 8)]
        if interpretations:
            res["interpretation"] = interpretations
        if method := cwe_concept(self.comp(obx, 17), self.cfg):
            res["method"] = method
        performers = [p for p in (self.practitioner(x) for x in self.reps(obx, 16)) if p]
        if performers:
            res["performer"] = performers
        ref = self.add(res, key)
        report["result"].append(ref)
        return res

    def quantity(self, value: int | float, unit: Composite) -> JSON:
        q: JSON = {"value": value}
        code, text, system = unit(1), unit(2), unit(3).upper()
        if code:
            q["unit"] = text or code
            if system in ("UCUM", "ISO+") or (not system and code in codes.UCUM_UNITS):
                q["system"] = codes.UCUM
                q["code"] = code
            elif system:
                q["system"] = codes.coding_system(unit(3), self.cfg.code_prefix)
                q["code"] = code
        return q

    def observation_value(self, obx: Segment, res: JSON) -> None:
        vtype = self.val(obx, 2).upper()
        values = self.reps(obx, 5)
        unit = self.comp(obx, 6)
        where = self.loc(obx, 5)
        if not values:
            return
        if not vtype:
            self.issue(self.loc(obx, 2), "value type missing: value mapped as a string")
            vtype = "ST"
        first = values[0]
        raw_text = obx.get(5)
        if vtype == "NM":
            num = number(first(1))
            if num is not None:
                res["valueQuantity"] = self.quantity(num, unit)
            elif m := re.fullmatch(r"\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*", first(1)):
                num = number(m.group(2))
                assert num is not None
                res["valueQuantity"] = {**self.quantity(num, unit), "comparator": m.group(1)}
            else:
                self.issue(where, f"NM value {first(1)!r} is not a number: mapped as a string")
                res["valueString"] = raw_text
        elif vtype in ("ST", "TX", "FT"):
            res["valueString"] = "\n".join(obx.get(5, r) for r in range(1, len(obx.repetitions(5)) + 1))
        elif vtype in ("CE", "CWE", "CNE", "CF"):
            if concept := cwe_concept(first, self.cfg):
                res["valueCodeableConcept"] = concept
            if len(values) > 1:
                self.issue(where, f"{len(values) - 1} further coded value(s): an Observation holds one")
        elif vtype == "SN":
            self.structured_numeric(first, unit, res, where)
        elif vtype in ("DT", "TS", "DTM"):
            if value := self.datetime(obx, 5, first(1)):
                res["valueDateTime"] = value
        elif vtype == "TM":
            m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", first(1))
            if m:
                res["valueTime"] = f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}{m.group(4) or ''}"
            else:
                self.issue(where, f"TM value {first(1)!r} is not a time")
        else:
            self.issue(where, f"value type {vtype} has no Observation.value[x] mapping")

    def structured_numeric(self, sn: Composite, unit: Composite, res: JSON, where: str) -> None:
        """SN (comparator ^ num1 ^ separator/suffix ^ num2) → Quantity, Range or Ratio."""
        comparator, sep = sn(1), sn(3)
        n1, n2 = number(sn(2)), number(sn(4))
        if sep in ("-",) and n1 is not None and n2 is not None:
            res["valueRange"] = {"low": self.quantity(n1, unit), "high": self.quantity(n2, unit)}
        elif sep in (":", "/") and n1 is not None and n2 is not None:
            res["valueRatio"] = {"numerator": {"value": n1}, "denominator": {"value": n2}}
        elif n1 is not None and not sep and n2 is None:
            q = self.quantity(n1, unit)
            if comparator in ("<", ">", "<=", ">="):
                q["comparator"] = comparator
            elif comparator not in ("", "="):
                self.issue(where, f"SN comparator {comparator!r} has no FHIR equivalent: dropped")
            res["valueQuantity"] = q
        elif n1 is not None and sep == "+" and n2 is None:
            res["valueQuantity"] = {**self.quantity(n1, unit), "comparator": ">="}
        else:
            self.issue(where, "structured numeric not understood: mapped as a string")
            res["valueString"] = "".join((comparator, sn(2), sep, sn(4)))

    def reference_range(self, obx: Segment, unit: Composite) -> JSON | None:
        """OBX-7 ("70-110", "<5", ">10", "3.5 - 5.0") → referenceRange with low/high and the text."""
        text = self.val(obx, 7)
        if not text:
            return None
        rng: JSON = {}
        num = r"([+-]?\d+(?:\.\d+)?)"
        if m := re.fullmatch(rf"\s*{num}\s*-\s*{num}\s*", text):
            low, high = number(m.group(1)), number(m.group(2))
            if low is not None and high is not None:
                rng = {"low": _simple(self.quantity(low, unit)), "high": _simple(self.quantity(high, unit))}
        elif m := re.fullmatch(rf"\s*(<=?|>=?)\s*{num}\s*", text):
            bound = number(m.group(2))
            if bound is not None:
                rng = {("high" if m.group(1).startswith("<") else "low"): _simple(self.quantity(bound, unit))}
        rng["text"] = text
        return rng

    def interpretation(self, flag: Composite) -> JSON:
        code = flag(1)
        if code in codes.INTERPRETATION_V3:
            return {"coding": [{"system": codes.V3_INTERPRETATION, "code": code}]}
        return cwe_concept(flag, self.cfg, "0078") or {"text": code}

    def note(self, nte: Segment, target: JSON) -> None:
        self.use(nte, 1, 2, 4)
        text = "\n".join(r for r in _rep_texts(nte, 3, self) if r)
        if text:
            target.setdefault("note", []).append({"text": text})

    # -- orders -----------------------------------------------------------------------------------
    def orders(self) -> None:
        """ORM^O01 / OML^O21: each ORC (+ OBR / TQ1 / NTE) → ServiceRequest."""
        self.first_patient(authoritative=False)
        if (pv1 := self.msg.segment("PV1")) is not None:
            self.encounter(pv1, authoritative=False)
        current: JSON | None = None
        orc: Segment | None = None
        pending: list[Segment] = []
        for seg in self.msg.segments:
            if seg.id == "ORC":
                orc = seg
                current, pending = None, []
            elif seg.id == "OBR":
                current = self.service_request(orc, seg)
                for tq1 in pending:
                    self.timing(tq1, current, "occurrenceDateTime")
                orc, pending = None, []
            elif seg.id == "TQ1" and current is None and orc is not None:
                pending.append(seg)  # OML puts the order's timing between ORC and OBR
            elif seg.id == "TQ1" and current is not None:
                self.timing(seg, current, "occurrenceDateTime")
            elif seg.id == "NTE" and current is not None:
                self.note(seg, current)

    def order_identifiers(self, orc: Segment | None, req: Segment | None) -> list[JSON]:
        idents: list[JSON] = []
        for n, kind in ((2, "PLAC"), (3, "FILL")):
            for seg in (orc, req):
                if seg is None:
                    continue
                ident = ei_identifier(self.comp(seg, n), self.cfg, self.authority, kind)
                if ident and not any(i["value"] == ident["value"] and i["system"] == ident["system"]
                                     for i in idents):
                    idents.append(ident)
        return idents

    def order_status(self, orc: Segment | None, vocabulary: Mapping[str, str] | None = None) -> str:
        if orc is None:
            return "active"
        self.use(orc, 1, 5)
        status = codes.ORDER_STATUS.get(self.val(orc, 5).upper()) or codes.ORDER_CONTROL_STATUS.get(
            self.val(orc, 1).upper())
        if status is None:
            self.issue(self.loc(orc, 1), f"order control {self.val(orc, 1)!r} unknown: status 'unknown'")
            status = "unknown"
        return vocabulary.get(status, status) if vocabulary else status

    def service_request(self, orc: Segment | None, obr: Segment) -> JSON:
        self.use(obr, 1)
        idents = self.order_identifiers(orc, obr)
        key = idents[0] if idents else self.message_key("ServiceRequest", obr)
        code = cwe_concept(self.comp(obr, 4), self.cfg)
        if code is None:
            self.issue(self.loc(obr, 4), "universal service identifier missing")
        res: JSON = {"resourceType": "ServiceRequest", "identifier": idents,
                     "status": self.order_status(orc), "intent": "order", "subject": self.subject()}
        if code:
            res["code"] = code
        self.with_encounter(res)
        if orc is not None:
            if authored := self.datetime(orc, 9):
                res["authoredOn"] = authored
            if who := self.practitioner(self.comp(orc, 12)):
                res["requester"] = who
            tq = self.comp(orc, 7)
            self.tq_priority(tq, res, self.loc(orc, 7))
            if tq(4) and (start := self.datetime(orc, 7, tq(4))):
                res["occurrenceDateTime"] = start
        if "requester" not in res and (who := self.practitioner(self.comp(obr, 16))):
            res["requester"] = who
        if "priority" not in res:
            self.tq_priority(self.comp(obr, 27), res, self.loc(obr, 27))
        if "occurrenceDateTime" not in res and (when := self.datetime(obr, 7)):
            res["occurrenceDateTime"] = when
        reasons = [c for c in (cwe_concept(x, self.cfg) for x in self.reps(obr, 31)) if c]
        if reasons:
            res["reasonCode"] = reasons
        if info := self.val(obr, 13):
            res.setdefault("note", []).append({"text": info})
        self.add(res, key)
        return res

    def tq_priority(self, tq: Composite, res: JSON, where: str) -> None:
        prio = tq(6).upper()
        if prio in codes.PRIORITY:
            res["priority"] = codes.PRIORITY[prio]
        elif prio:
            self.issue(where, f"priority {prio!r} unknown")

    def timing(self, tq1: Segment, res: JSON, field: str) -> None:
        """TQ1 start (7) and priority (9) onto a request."""
        self.use(tq1, 1)
        if start := self.datetime(tq1, 7):
            res[field] = start
        prio = self.comp(tq1, 9)(1).upper()
        if prio in codes.PRIORITY:
            res["priority"] = codes.PRIORITY[prio]
        elif prio:
            self.issue(self.loc(tq1, 9), f"priority {prio!r} unknown")

    # -- VXU --------------------------------------------------------------------------------------
    def vxu(self) -> None:
        self.first_patient(authoritative=False)
        if (pv1 := self.msg.segment("PV1")) is not None:
            self.encounter(pv1, authoritative=False)
        orc: Segment | None = None
        current: JSON | None = None
        for seg in self.msg.segments:
            if seg.id == "ORC":
                orc = seg
            elif seg.id == "RXA":
                current = self.immunization(orc, seg)
                orc = None
            elif seg.id == "NK1":
                self.related_person(seg)
            elif seg.id == "RXR" and current is not None:
                self.route(seg, current, current)
            elif seg.id == "NTE" and current is not None:
                self.note(seg, current)

    def immunization(self, orc: Segment | None, rxa: Segment) -> JSON:
        """RXA → Immunization keyed on the filler order number (ORC-3)."""
        self.use(rxa, 1, 2)
        idents = self.order_identifiers(orc, None)
        if orc is not None:
            self.use(orc, *range(1, len(orc) + 1))
        vaccine = cwe_concept(self.comp(rxa, 5), self.cfg, "0292")
        if vaccine is None:
            raise MappingError(f"{self.loc(rxa, 5)}: administered code missing, Immunization needs one")
        occurrence = self.datetime(rxa, 3)
        if occurrence is None:
            raise MappingError(f"{self.loc(rxa, 3)}: administration date missing or invalid")
        filler = next((i for i in idents if i["type"]["coding"][0]["code"] == "FILL"), None)
        pat_sys, pat_val = self.patient_parts()
        key = filler or (idents[0] if idents else self.unique_key(
            "Immunization", pat_sys, pat_val, self.comp(rxa, 5)(1), occurrence))
        completion = self.val(rxa, 20).upper()
        status = codes.IMMUNIZATION_STATUS.get(completion, "completed")
        if completion and completion not in codes.IMMUNIZATION_STATUS:
            self.issue(self.loc(rxa, 20), f"completion status {completion!r} unknown: 'completed' assumed")
        res: JSON = {"resourceType": "Immunization", "identifier": idents, "status": status,
                     "vaccineCode": vaccine, "patient": self.subject(), "occurrenceDateTime": occurrence}
        self.with_encounter(res)
        if completion == "PA":
            res["isSubpotent"] = True
        if reason := cwe_concept(self.comp(rxa, 18), self.cfg):
            res["statusReason"] = reason
        dose = number(self.val(rxa, 6))
        if dose is not None and dose != 999:  # 999 is the CDC "amount unknown" convention
            res["doseQuantity"] = self.quantity(dose, self.comp(rxa, 7))
        else:
            self.use(rxa, 7)
        source = self.comp(rxa, 9)
        if source(1):
            res["primarySource"] = source(1) == "00"
            if source(1) != "00" and (origin := cwe_concept(source, self.cfg)):
                res["reportOrigin"] = origin
        performers: list[JSON] = []
        for n, role in ((10, "AP"), ):
            for xcn in self.reps(rxa, n):
                if ref := self.practitioner(xcn):
                    performers.append({"function": table_concept(role, "0443"), "actor": ref})
        if performers:
            res["performer"] = performers
        lots = [lot for lot in (c(1) for c in self.reps(rxa, 15)) if lot]
        if lots:
            res["lotNumber"] = lots[0]
            if len(lots) > 1:
                self.issue(self.loc(rxa, 15), "more than one lot number: only the first is kept")
        if expiry := self.date(rxa, 16, self.comp(rxa, 16)(1) or ""):
            res["expirationDate"] = expiry
        mvx = self.comp(rxa, 17)
        if mvx(1) or mvx(2):
            manufacturer: JSON = {"display": mvx(2) or mvx(1)}
            if mvx(1):
                manufacturer["identifier"] = {
                    "system": codes.coding_system(mvx(3) or "MVX", self.cfg.code_prefix), "value": mvx(1)}
            res["manufacturer"] = manufacturer
        self.add(res, key)
        return res

    def route(self, rxr: Segment, res: JSON, target: JSON) -> None:
        """RXR route (1) and site (2)."""
        if route := cwe_concept(self.comp(rxr, 1), self.cfg, "0162"):
            target["route"] = route
        if site := cwe_concept(self.comp(rxr, 2), self.cfg, "0163"):
            target["site"] = site

    # -- RDE --------------------------------------------------------------------------------------
    def rde(self) -> None:
        self.first_patient(authoritative=False)
        if (pv1 := self.msg.segment("PV1")) is not None:
            self.encounter(pv1, authoritative=False)
        orc: Segment | None = None
        current: JSON | None = None
        for seg in self.msg.segments:
            if seg.id == "ORC":
                orc = seg
            elif seg.id == "RXE":
                current = self.medication_request(orc, seg)
                orc = None
            elif seg.id == "RXR" and current is not None:
                self.route(seg, current, current["dosageInstruction"][0])
            elif seg.id == "TQ1" and current is not None:
                self.use(seg, 1)
                dosage = current["dosageInstruction"][0]
                if start := self.datetime(seg, 7):
                    dosage.setdefault("timing", {}).setdefault("repeat", {})["boundsPeriod"] = {"start": start}
                if pattern := self.comp(seg, 3)(1):
                    dosage.setdefault("timing", {})["code"] = {"text": pattern}
                prio = self.comp(seg, 9)(1).upper()
                if prio in codes.PRIORITY:
                    current["priority"] = codes.PRIORITY[prio]
            elif seg.id == "NTE" and current is not None:
                self.note(seg, current)

    def medication_request(self, orc: Segment | None, rxe: Segment) -> JSON:
        """ORC + RXE → MedicationRequest keyed on the placer order number."""
        idents = self.order_identifiers(orc, None)
        key = idents[0] if idents else self.message_key("MedicationRequest", rxe)
        med = cwe_concept(self.comp(rxe, 2), self.cfg)
        if med is None:
            raise MappingError(f"{self.loc(rxe, 2)}: give code missing, MedicationRequest needs a medication")
        res: JSON = {"resourceType": "MedicationRequest", "identifier": idents,
                     "status": self.order_status(orc, codes.MEDREQ_STATUS), "intent": "order",
                     "medicationCodeableConcept": med, "subject": self.subject()}
        self.with_encounter(res)
        if orc is not None:
            if authored := self.datetime(orc, 9):
                res["authoredOn"] = authored
            if who := self.practitioner(self.comp(orc, 12)):
                res["requester"] = who
            self.tq_priority(self.comp(orc, 7), res, self.loc(orc, 7))
        dosage: JSON = {}
        tq = self.comp(rxe, 1)
        if tq(2):
            dosage["timing"] = {"code": {"text": tq(2)}}
        if tq(4) and (start := self.datetime(rxe, 1, tq(4))):
            dosage.setdefault("timing", {})["repeat"] = {"boundsPeriod": {"start": start}}
        if "priority" not in res:
            self.tq_priority(tq, res, self.loc(rxe, 1))
        dose = number(self.val(rxe, 3))
        if dose is not None:
            dosage["doseAndRate"] = [{"doseQuantity": self.quantity(dose, self.comp(rxe, 5))}]
        else:
            self.use(rxe, 5)
        self.use(rxe, 4)
        if (high := number(self.val(rxe, 4))) is not None and dose is not None and high != dose:
            dosage["doseAndRate"] = [{"doseRange": {"low": _simple(self.quantity(dose, self.comp(rxe, 5))),
                                                    "high": _simple(self.quantity(high, self.comp(rxe, 5)))}}]
        instructions = [c.get("text") or (c.get("coding") or [{}])[0].get("display", "")
                        for c in (cwe_concept(x, self.cfg) for x in self.reps(rxe, 7)) if c]
        instructions += [t for t in _rep_texts(rxe, 21, self) if t]
        if any(instructions):
            dosage["text"] = "; ".join(t for t in instructions if t)
        res["dosageInstruction"] = [dosage]
        dispense: JSON = {}
        if (qty := number(self.val(rxe, 10))) is not None:
            dispense["quantity"] = _simple(self.quantity(qty, self.comp(rxe, 11)))
        else:
            self.use(rxe, 11)
        if isinstance(refills := number(self.val(rxe, 12)), int):
            dispense["numberOfRepeatsAllowed"] = refills
        if dispense:
            res["dispenseRequest"] = dispense
        self.add(res, key)
        return res

    # -- SIU --------------------------------------------------------------------------------------
    def siu(self) -> None:
        sch = self.msg.segment("SCH")
        if sch is None:
            raise MappingError(f"{self.msg.message_type}: SCH segment missing")
        self.first_patient(authoritative=False)
        if (pv1 := self.msg.segment("PV1")) is not None:
            self.encounter(pv1, authoritative=False)
        for seg in self.msg.all("RGS"):
            self.use(seg, *range(1, len(seg) + 1))  # resource-group headers carry no data of their own
        self.appointment(sch)

    def appointment(self, sch: Segment) -> None:
        """SCH + AIS/AIG/AIL/AIP → Appointment keyed on the filler appointment id (SCH-2)."""
        filler = ei_identifier(self.comp(sch, 2), self.cfg, self.authority, "FILL")
        placer = ei_identifier(self.comp(sch, 1), self.cfg, self.authority, "PLAC")
        idents = [i for i in (filler, placer) if i]
        key = idents[0] if idents else self.message_key("Appointment", sch)
        filler_status = self.comp(sch, 25)(1).upper()
        status = codes.APPOINTMENT_TRIGGER_STATUS.get(self.trigger, "booked")
        if self.trigger in ("S12", "S13", "S14") and filler_status:
            if filler_status in codes.APPOINTMENT_STATUS:
                status = codes.APPOINTMENT_STATUS[filler_status]
            else:
                self.issue(self.loc(sch, 25), f"filler status {filler_status!r} unknown")
        res: JSON = {"resourceType": "Appointment", "identifier": idents, "status": status}
        if reason := cwe_concept(self.comp(sch, 7), self.cfg):
            res["reasonCode"] = [reason]
        if kind := cwe_concept(self.comp(sch, 8), self.cfg, "0277"):
            res["appointmentType"] = kind
        if event_reason := cwe_concept(self.comp(sch, 6), self.cfg):
            res["description"] = event_reason.get("text") or event_reason["coding"][0].get(
                "display", event_reason["coding"][0].get("code", ""))
        duration = number(self.val(sch, 9))
        unit = self.comp(sch, 10)(1).upper()
        minutes: int | None = None
        if isinstance(duration, int | float):
            factor = {"": 1, "MIN": 1, "M": 1, "H": 60, "HR": 60, "HOUR": 60, "S": 1 / 60, "D": 1440}.get(unit)
            if factor is None:
                self.issue(self.loc(sch, 10), f"duration unit {unit!r} unknown")
            else:
                minutes = round(duration * factor)
        tq = self.comp(sch, 11)
        start = self.instant(sch, 11, tq(4)) if tq(4) else None
        end = self.instant(sch, 11, tq(5)) if tq(5) else None
        participants: list[JSON] = [{"actor": self.subject(), "status": "accepted"}]
        service: list[JSON] = []
        for seg in self.msg.segments:
            if seg.id not in ("AIS", "AIG", "AIL", "AIP"):
                continue
            self.use(seg, 1, 2)
            if start is None and (s := self.instant(seg, 4 if seg.id == "AIS" else 6)):
                start = s
            if isinstance(d := number(self.val(seg, 7 if seg.id == "AIS" else 9)), int) and minutes is None:
                minutes = d
            self.use(seg, 4, 5, 6, 8, 10, 11)  # offsets and their units: superseded by the start time
            if seg.id == "AIS":
                if svc := cwe_concept(self.comp(seg, 3), self.cfg):
                    service.append(svc)
            elif seg.id == "AIP":
                if ref := self.practitioner(self.comp(seg, 3)):
                    p: JSON = {"actor": ref, "status": "accepted"}
                    if role := cwe_concept(self.comp(seg, 4), self.cfg):
                        p["type"] = [role]
                    participants.append(p)
            elif seg.id == "AIL":
                if text := _location_display(self.comp(seg, 3)):
                    participants.append({"actor": {"display": text}, "status": "accepted"})
            elif (gen := cwe_concept(self.comp(seg, 3), self.cfg)) is not None:
                participants.append({"actor": {"display": gen.get("text") or gen["coding"][0].get(
                    "display", gen["coding"][0]["code"])}, "status": "accepted"})
        if start:
            res["start"] = start
            if end is None and minutes is not None and "T" in start:
                end = (datetime.fromisoformat(start) + timedelta(minutes=minutes)).isoformat()
                end = end.replace("+00:00", "Z") if start.endswith("Z") else end
        if end:
            res["end"] = end
        if minutes is not None and minutes > 0:
            res["minutesDuration"] = minutes
        if start is None and status not in ("proposed", "cancelled", "waitlist"):
            self.issue(self.loc(sch, 11), "no start time (SCH-11.4 / AIS-4 / AIx-6) for a booked appointment")
        if service:
            res["serviceType"] = service
        res["participant"] = participants
        for nte in self.msg.all("NTE"):
            self.use(nte, 1, 2, 3, 4)
            text = "\n".join(t for t in _rep_texts(nte, 3, self) if t)
            if text:
                res["comment"] = "\n".join(filter(None, (res.get("comment"), text)))
        self.add(res, key)

    # -- MDM --------------------------------------------------------------------------------------
    def mdm(self) -> None:
        txa = self.msg.segment("TXA")
        if txa is None:
            raise MappingError(f"{self.msg.message_type}: TXA segment missing")
        self.first_patient(authoritative=False)
        if (pv1 := self.msg.segment("PV1")) is not None:
            self.encounter(pv1, authoritative=False)
        self.document(txa)

    def document(self, txa: Segment) -> None:
        """TXA + OBX → DocumentReference; the text travels base64 in content.attachment.data."""
        self.use(txa, 1, 3)
        unique = ei_identifier(self.comp(txa, 12), self.cfg, self.authority)
        idents = [unique] if unique else []
        key = unique or self.message_key("DocumentReference", txa)
        availability = self.val(txa, 19).upper()
        status = "entered-in-error" if self.trigger == "T11" else codes.DOC_AVAILABILITY.get(availability,
                                                                                              "current")
        res: JSON = {"resourceType": "DocumentReference", "identifier": idents, "status": status,
                     "subject": self.subject()}
        if unique:
            res["masterIdentifier"] = dict(unique)
        completion = self.val(txa, 17).upper()
        if completion in codes.DOC_STATUS:
            res["docStatus"] = codes.DOC_STATUS[completion]
        elif completion:
            self.issue(self.loc(txa, 17), f"completion status {completion!r} not in table 0271")
        if doc_type := cwe_concept(self.comp(txa, 2), self.cfg, "0270"):
            res["type"] = doc_type
        if created := self.instant(txa, 6):
            res["date"] = created
        authors = [r for r in (self.practitioner(x) for n in (5, 9) for x in self.reps(txa, n)) if r]
        if authors:
            res["author"] = authors
        authenticators = [r for r in (self.practitioner(x) for n in (10, 22) for x in self.reps(txa, n)) if r]
        if authenticators:
            res["authenticator"] = authenticators[0]
        parent = ei_identifier(self.comp(txa, 13), self.cfg, self.authority)
        if parent:
            res["relatesTo"] = [{"code": "replaces", "target": {"identifier": parent}}]
        context: JSON = {}
        if self.encounter_ref is not None:
            context["encounter"] = [dict(self.encounter_ref)]
        if activity := self.datetime(txa, 4):
            context["period"] = {"start": activity}
        if context:
            res["context"] = context
        title = self.val(txa, 16)
        content: list[JSON] = []
        text_parts: list[str] = []
        for obx in self.msg.all("OBX"):
            self.use(obx, 1, 2, 3, 4, 11)
            vtype = obx.get(2).upper()
            if vtype in ("TX", "FT", "ST", ""):
                self.use(obx, 5)
                text_parts.extend(obx.get(5, r) for r in range(1, len(obx.repetitions(5)) + 1))
            elif vtype == "ED":
                if encapsulated := self.encapsulated(obx):
                    content.append({"attachment": encapsulated})
            else:
                self.issue(self.loc(obx, 2), f"value type {vtype} cannot become document content")
        if text_parts:
            att: JSON = {"contentType": "text/plain; charset=utf-8",
                         "data": base64.b64encode("\n".join(text_parts).encode()).decode("ascii")}
            content.insert(0, {"attachment": att})
        if not content:
            self.issue(self.loc(txa), "no document content (no TX/FT/ED OBX): attachment has a title only")
            content.append({"attachment": {"title": title or "untitled document"}})
        for item in content:
            if title and "title" not in item["attachment"]:
                item["attachment"]["title"] = title
            if "date" in res:
                item["attachment"]["creation"] = res["date"]
        res["content"] = content
        self.add(res, key)

    def encapsulated(self, obx: Segment) -> JSON | None:
        """An ED OBX-5 (source ^ type ^ subtype ^ encoding ^ data) → Attachment."""
        self.use(obx, 5)
        ed = Composite(obx.field(5), self.seps)
        kind, subtype, encoding, data = ed(2).lower(), ed(3).lower(), ed(4).upper(), ed(5)
        where = self.loc(obx, 5)
        try:
            if encoding in ("BASE64", "B64"):
                payload = base64.b64decode("".join(data.split()), validate=True)
            elif encoding == "HEX":
                payload = binascii.unhexlify("".join(data.split()))
            elif encoding in ("A", ""):
                payload = data.encode()
            else:
                self.issue(where, f"ED encoding {encoding!r} unknown: content not mapped")
                return None
        except (ValueError, binascii.Error):
            self.issue(where, f"ED data is not valid {encoding}: content not mapped")
            return None
        mime = f"{kind or 'application'}/{subtype or 'octet-stream'}"
        if subtype in ("pdf", "rtf", "xml", "json", "msword") and kind in ("", "text", "ap", "application"):
            mime = f"application/{subtype}"
        elif kind in ("image", "img", "im"):
            mime = f"image/{subtype or 'octet-stream'}"
        return {"contentType": mime, "data": base64.b64encode(payload).decode("ascii")}


def _location_display(pl: Composite) -> str:
    """PL (point of care ^ room ^ bed ^ facility ...) as one readable string."""
    parts = [pl(1), pl(2), pl(3)]
    text = " ".join(p for p in parts if p)
    if pl(4, 1):
        text = f"{text} ({pl(4, 1)})" if text else pl(4, 1)
    return text


def _rep_texts(seg: Segment, n: int, mapper: _Mapper) -> list[str]:
    mapper.use(seg, n)
    return [seg.get(n, r).strip() for r in range(1, len(seg.repetitions(n)) + 1)]


def _simple(q: JSON) -> JSON:
    """A SimpleQuantity (no comparator)."""
    return {k: v for k, v in q.items() if k != "comparator"}


def _prune(value: Any) -> Any:
    """Drop empty lists / dicts / strings so the JSON carries no hollow elements."""
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ("", None, [], {})}
    if isinstance(value, list):
        items = [_prune(v) for v in value]
        return [v for v in items if v not in ("", None, [], {})]
    return value
