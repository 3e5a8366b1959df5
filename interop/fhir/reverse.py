"""FHIR R4 → HL7 v2: Patient → ADT^A28/A31/A08, Encounter → ADT^A01/A03, DiagnosticReport + Observations → ORU^R01."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from interop.errors import MappingError
from interop.fhir import codes
from interop.fhir.datatypes import DEFAULT_ID_PREFIX, DateError, from_fhir_datetime
from interop.fhir.mapping.core import KEY_SYSTEM
from interop.message import DEFAULT_SEPARATORS, escape

_SEPS = DEFAULT_SEPARATORS


def _e(value: Any) -> str:
    return escape(str(value), _SEPS) if value is not None else ""


def _join(parts: list[str], sep: str) -> str:
    """Join components, dropping trailing empty ones."""
    while parts and not parts[-1]:
        parts.pop()
    return sep.join(parts)


def _hd(app: str | tuple[str, str]) -> tuple[str, str]:
    return (app, "") if isinstance(app, str) else app


def _cx(ident: dict[str, Any], id_prefix: str) -> str:
    """Identifier → CX, writing the system back as the assigning authority it came from."""
    system = str(ident.get("system", ""))
    assigner = str((ident.get("assigner") or {}).get("display", ""))
    sub = _SEPS.subcomponent
    if system.startswith("urn:oid:"):
        authority = _join([_e(assigner), _e(system[8:]), "ISO"], sub)
    elif system.startswith(id_prefix):
        from urllib.parse import unquote

        authority = _e(unquote(system[len(id_prefix):]))
    elif system:
        authority = _join([_e(assigner), _e(system), "URI"], sub)
    else:
        authority = _e(assigner)
    id_type = ""
    for coding in (ident.get("type") or {}).get("coding", []):
        if coding.get("system") == codes.v2_table("0203"):
            id_type = _e(coding.get("code", ""))
    return _join([_e(ident.get("value", "")), "", "", authority, id_type], _SEPS.component)


def _xpn(name: dict[str, Any]) -> str:
    given = list(name.get("given", []))
    return _join([
        _e(name.get("family", "")),
        _e(given[0]) if given else "",
        _e(" ".join(given[1:])),
        _e(" ".join(name.get("suffix", []))),
        _e(" ".join(name.get("prefix", []))),
        "",
        codes.NAME_USE_V2.get(str(name.get("use", "")), ""),
    ], _SEPS.component)


def _xad(addr: dict[str, Any]) -> str:
    lines = list(addr.get("line", []))
    kind = codes.ADDRESS_USE_V2.get(str(addr.get("use", "")), "")
    if not kind and addr.get("type") == "postal":
        kind = "M"
    return _join([
        _e(lines[0]) if lines else "", _e(", ".join(lines[1:])), _e(addr.get("city", "")),
        _e(addr.get("state", "")), _e(addr.get("postalCode", "")), _e(addr.get("country", "")), kind,
        "", _e(addr.get("district", "")),
    ], _SEPS.component)


def _xtn(point: dict[str, Any]) -> str:
    system, use, value = point.get("system", "phone"), point.get("use", ""), _e(point.get("value", ""))
    if system == "email":
        return _join(["", "NET", "Internet", value], _SEPS.component)
    use_code = {"home": "PRN", "work": "WPN", "mobile": "PRN", "temp": "EMR"}.get(str(use), "PRN")
    equipment = {"phone": "CP" if use == "mobile" else "PH", "fax": "FX", "pager": "BP"}.get(str(system), "PH")
    return _join([value, use_code, equipment], _SEPS.component)


def _dtm(value: Any, where: str) -> str:
    if not value:
        return ""
    try:
        return from_fhir_datetime(str(value))
    except DateError as exc:
        raise MappingError(f"{where}: {exc}") from exc


def _pid_segment(patient: dict[str, Any], id_prefix: str) -> str:
    """FHIR Patient → PID (identifiers, names, birth, sex, addresses, telecom, marital status, death)."""
    if patient.get("resourceType") != "Patient":
        raise MappingError("resource is not a Patient")
    identifiers = [i for i in patient.get("identifier", []) if i.get("value")]
    if not identifiers:
        raise MappingError("Patient.identifier: at least one identifier is needed for PID-3")
    rep, comp, field = _SEPS.repetition, _SEPS.component, _SEPS.field
    ssn = [i for i in identifiers if i.get("system") == codes.SSN]
    pid3 = rep.join(_cx(i, id_prefix) for i in identifiers if i not in ssn)
    if not pid3:
        raise MappingError("Patient.identifier: only an SSN, PID-3 needs a patient identifier")
    names = rep.join(_xpn(n) for n in patient.get("name", []))
    gender = codes.GENDER_V2.get(str(patient.get("gender", "")), "")
    if patient.get("gender") and not gender:
        raise MappingError(f"Patient.gender: {patient.get('gender')!r} is not an administrative gender")
    addresses = rep.join(_xad(a) for a in patient.get("address", []))
    telecom = patient.get("telecom", [])
    home = rep.join(_xtn(t) for t in telecom if t.get("use") != "work")
    work = rep.join(_xtn(t) for t in telecom if t.get("use") == "work")
    marital = ""
    for coding in (patient.get("maritalStatus") or {}).get("coding", []):
        reverse = {v: k for k, v in codes.MARITAL.items() if k in "ADMSWCPIB"}
        if coding.get("system") == codes.V3_MARITAL and coding.get("code") in reverse:
            marital = _join([reverse[coding["code"]], "", "HL70002"], comp)
    mmn = ""
    for ext in patient.get("extension", []):
        if ext.get("url") == codes.MOTHERS_MAIDEN_NAME:
            mmn = _e(ext.get("valueString", ""))
    death_dt = _dtm(patient.get("deceasedDateTime"), "Patient.deceasedDateTime")
    deceased = patient.get("deceasedBoolean")
    death_flag = "Y" if death_dt or deceased is True else ("N" if deceased is False else "")
    pid = [""] * 31
    pid[0] = "PID"
    pid[1] = "1"
    pid[3] = pid3
    pid[5] = names
    pid[6] = mmn
    pid[7] = _dtm(patient.get("birthDate"), "Patient.birthDate")
    pid[8] = gender
    pid[11] = addresses
    pid[13] = home
    pid[14] = work
    pid[16] = marital
    pid[19] = _e(ssn[0]["value"]) if ssn else ""
    pid[29] = death_dt
    pid[30] = death_flag
    return _join(pid, field)


def _header(code: str, trigger: str, structure: str, sending: str | tuple[str, str],
            receiving: str | tuple[str, str], control_id: str | None, version: str,
            timestamp: datetime | None) -> tuple[str, str]:
    s_app, s_fac = _hd(sending)
    r_app, r_fac = _hd(receiving)
    now = (timestamp or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z") or ""
    ctl = control_id or uuid.uuid4().hex[:20]
    comp, field = _SEPS.component, _SEPS.field
    msh = field.join([
        "MSH", _SEPS.encoding_characters, _e(s_app), _e(s_fac), _e(r_app), _e(r_fac), now, "",
        f"{code}{comp}{trigger}{comp}{structure}", _e(ctl), "P", _e(version),
    ])
    return msh, now


def patient_to_adt(
    patient: dict[str, Any],
    *,
    trigger: str = "A28",
    sending: str | tuple[str, str] = ("LIFELINE", ""),
    receiving: str | tuple[str, str] = ("", ""),
    control_id: str | None = None,
    version: str = "2.5.1",
    timestamp: datetime | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
) -> str:
    """Build an ER7 ADT^A28 / A31 / A08 (MSH, EVN, PID, PV1 class N) from a FHIR Patient dict."""
    if trigger not in PATIENT_TRIGGERS:
        raise MappingError(f"patient_to_adt: trigger must be one of {', '.join(PATIENT_TRIGGERS)}, not {trigger!r}")
    if patient.get("resourceType") != "Patient":
        raise MappingError("patient_to_adt: resource is not a Patient")
    pid = _pid_segment(patient, id_prefix)
    msh, now = _header("ADT", trigger, "ADT_A01" if trigger == "A08" else "ADT_A05", sending, receiving,
                       control_id, version, timestamp)
    field = _SEPS.field
    return "\r".join([msh, field.join(["EVN", trigger, now]), pid, field.join(["PV1", "1", "N"])])


PATIENT_TRIGGERS = ("A28", "A31", "A08")
ENCOUNTER_TRIGGERS = ("A01", "A03")
_CLASS_V2 = {"EMER": "E", "IMP": "I", "AMB": "O", "PRENC": "P", "ACUTE": "I", "NONAC": "I", "OBSENC": "O",
             "SS": "O", "VR": "O", "HH": "O"}


def _visit_number(encounter: dict[str, Any], id_prefix: str) -> str:
    idents = [i for i in encounter.get("identifier", []) if i.get("value") and i.get("system") != KEY_SYSTEM]
    for ident in idents:
        if any(c.get("code") == "VN" for c in (ident.get("type") or {}).get("coding", [])):
            return _cx(ident, id_prefix)
    return _cx(idents[0], id_prefix) if idents else ""


def encounter_to_adt(
    encounter: dict[str, Any],
    patient: dict[str, Any],
    *,
    trigger: str = "A01",
    sending: str | tuple[str, str] = ("LIFELINE", ""),
    receiving: str | tuple[str, str] = ("", ""),
    control_id: str | None = None,
    version: str = "2.5.1",
    timestamp: datetime | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
) -> str:
    """Build an ER7 ADT^A01 (admit) / ADT^A03 (discharge) from a FHIR Encounter and its Patient:
    PV1-2 class, PV1-19 visit number, PV1-44/45 admit and discharge times, PV1-3 current location."""
    if trigger not in ENCOUNTER_TRIGGERS:
        raise MappingError(f"encounter_to_adt: trigger must be A01 or A03, not {trigger!r}")
    if encounter.get("resourceType") != "Encounter":
        raise MappingError("encounter_to_adt: resource is not an Encounter")
    pid = _pid_segment(patient, id_prefix)
    msh, now = _header("ADT", trigger, "ADT_A01" if trigger == "A01" else "ADT_A03", sending, receiving,
                       control_id, version, timestamp)
    klass = encounter.get("class") or {}
    code = str(klass.get("code", ""))
    pclass = _CLASS_V2.get(code, "") if klass.get("system") == codes.V3_ACT_CODE else _e(code)
    period = encounter.get("period") or {}
    end = _dtm(period.get("end"), "Encounter.period.end")
    if trigger == "A03" and not end:
        raise MappingError("Encounter.period.end: a discharge (A03) needs the discharge time for PV1-45")
    current = next((loc for loc in encounter.get("location", []) if loc.get("status") in (None, "active")), None)
    where = ""
    if current is not None:
        display = str((current.get("location") or {}).get("display", ""))
        where = _e(display.split(" (")[0].split(" ")[0]) if display else ""
    pv1 = [""] * 46
    pv1[0], pv1[1], pv1[2], pv1[3] = "PV1", "1", pclass or "U", where
    pv1[19] = _visit_number(encounter, id_prefix)
    pv1[44] = _dtm(period.get("start"), "Encounter.period.start")
    pv1[45] = end
    field = _SEPS.field
    return "\r".join([msh, field.join(["EVN", trigger, now]), pid, _join(pv1, field)])


_VALUE_TYPES = (("valueQuantity", "NM"), ("valueString", "ST"), ("valueCodeableConcept", "CWE"),
                ("valueDateTime", "DTM"), ("valueTime", "TM"))
_STATUS_V2 = {"final": "F", "corrected": "C", "preliminary": "P", "registered": "I", "cancelled": "X",
              "entered-in-error": "W", "amended": "C", "partial": "A"}


def _cwe(concept: dict[str, Any]) -> str:
    coding = (concept.get("coding") or [{}])[0]
    system = str(coding.get("system", ""))
    name = next((k for k, v in codes.CODING_SYSTEMS.items() if v == system), "")
    if not name and system.startswith(codes.V2_TABLE.format(table="")):
        name = "HL7" + system.rsplit("-", 1)[-1]
    return _join([_e(coding.get("code", "")), _e(coding.get("display", concept.get("text", ""))), _e(name)],
                 _SEPS.component)


def _ei(ident: dict[str, Any] | None) -> str:
    if not ident:
        return ""
    system = str(ident.get("system", ""))
    namespace = system[len(DEFAULT_ID_PREFIX):] if system.startswith(DEFAULT_ID_PREFIX) else ""
    if system.startswith("urn:oid:"):
        return _join([_e(ident.get("value", "")), "", _e(system[8:]), "ISO"], _SEPS.component)
    from urllib.parse import unquote

    return _join([_e(ident.get("value", "")), _e(unquote(namespace))], _SEPS.component)


def _typed_identifier(resource: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The resource's identifier of a v2 identifier type (PLAC, FILL, ...), if it has one."""
    return next((i for i in resource.get("identifier", []) if any(
        c.get("code") == kind for c in (i.get("type") or {}).get("coding", []))), None)


def _bundle_parts(bundle: dict[str, Any], kind: str, needs: str) -> tuple[dict[Any, dict[str, Any]], dict[str, Any],
                                                                           list[dict[str, Any]]]:
    """(resources by fullUrl, the first Patient, the resources of `kind`); a MappingError naming `needs` when the
    Bundle lacks a Patient or a resource of that kind."""
    entries = {e.get("fullUrl"): e.get("resource", {}) for e in bundle.get("entry", [])}
    patients = [r for r in entries.values() if r.get("resourceType") == "Patient"]
    found = [r for r in entries.values() if r.get("resourceType") == kind]
    if not patients or not found:
        raise MappingError(f"Bundle: {needs} needs a Patient and a {kind}")
    return entries, patients[0], found


def _obx(n: int, obs: dict[str, Any]) -> str:
    vtype, value, unit = "", "", ""
    for key, kind in _VALUE_TYPES:
        if key not in obs:
            continue
        vtype, raw = kind, obs[key]
        if kind == "NM":
            value = _e(raw.get("value", ""))
            if raw.get("comparator"):
                vtype, value = "SN", _join([_e(raw["comparator"]), value], _SEPS.component)
            unit = _join([_e(raw.get("code") or raw.get("unit", "")), _e(raw.get("unit", "")),
                          "UCUM" if raw.get("system") == codes.UCUM else ""], _SEPS.component)
        elif kind == "CWE":
            value = _cwe(raw)
        elif kind == "DTM":
            value = from_fhir_datetime(str(raw))
        else:
            value = _e(raw).replace("\n", _SEPS.escape + ".br" + _SEPS.escape) if kind == "ST" else _e(
                str(raw).replace(":", ""))
        break
    ranges = obs.get("referenceRange") or [{}]
    flags = _SEPS.repetition.join(_e((i.get("coding") or [{}])[0].get("code", "")) for i in obs.get(
        "interpretation", []))
    effective = from_fhir_datetime(str(obs["effectiveDateTime"])) if obs.get("effectiveDateTime") else ""
    obx = ["OBX", str(n), vtype, _cwe(obs.get("code") or {}), "", value, unit, _e(ranges[0].get("text", "")),
           flags, "", "", _STATUS_V2.get(str(obs.get("status", "")), "F"), "", "", effective]
    return _join(obx, _SEPS.field)


def report_to_oru(
    bundle: dict[str, Any],
    *,
    sending: str | tuple[str, str] = ("LIFELINE", ""),
    receiving: str | tuple[str, str] = ("", ""),
    control_id: str | None = None,
    version: str = "2.5.1",
    timestamp: datetime | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
) -> str:
    """Build an ER7 ORU^R01 from a Bundle holding a Patient, DiagnosticReport(s) and their Observations:
    OBR-2/3 placer/filler, OBR-4 code, OBR-7 effective, OBR-22 issued, OBR-25 status; OBX per result."""
    entries, patient, reports = _bundle_parts(bundle, "DiagnosticReport", "an ORU^R01")
    msh, _ = _header("ORU", "R01", "ORU_R01", sending, receiving, control_id, version, timestamp)
    segments = [msh, _pid_segment(patient, id_prefix)]
    field = _SEPS.field
    for n, report in enumerate(reports, start=1):
        placer = None
        for ref in report.get("basedOn", []):
            request = entries.get(ref.get("reference"), {})
            placer = _typed_identifier(request, "PLAC") or placer
        filler = _typed_identifier(report, "FILL")
        obr = [""] * 26
        obr[0], obr[1], obr[2], obr[3] = "OBR", str(n), _ei(placer), _ei(filler)
        obr[4] = _cwe(report.get("code") or {})
        obr[7] = from_fhir_datetime(str(report["effectiveDateTime"])) if report.get("effectiveDateTime") else ""
        obr[22] = from_fhir_datetime(str(report["issued"])) if report.get("issued") else ""
        obr[25] = _STATUS_V2.get(str(report.get("status", "")), "")
        segments.append(_join(obr, field))
        for k, ref in enumerate(report.get("result", []), start=1):
            obs = entries.get(ref.get("reference"))
            if obs is None:
                raise MappingError(f"DiagnosticReport.result[{k - 1}]: {ref.get('reference')} is not in the Bundle")
            segments.append(_obx(k, obs))
    return "\r".join(segments)


REQUEST_MESSAGES = ("ORM", "OML")
_ORDER_CONTROL = {"active": "NW", "revoked": "CA", "on-hold": "HD", "completed": "SC", "entered-in-error": "OC",
                  "draft": "NW"}
_ORDER_STATUS = {"active": "IP", "completed": "CM", "revoked": "CA", "on-hold": "HD", "entered-in-error": "ER"}
_PRIORITY_V2 = {"stat": "S", "asap": "A", "routine": "R", "urgent": "P"}


def _xcn(practitioner: dict[str, Any], display: str) -> str:
    ident: dict[str, Any] = next((i for i in practitioner.get("identifier", []) if i.get("system") != KEY_SYSTEM), {})
    name = (practitioner.get("name") or [{}])[0]
    given = list(name.get("given", []))
    if not name and display:
        parts = display.split()
        name, given = {"family": parts[-1]}, parts[:-1]
    authority = ""
    system = str(ident.get("system", ""))
    if system.startswith("urn:oid:"):
        authority = _join(["", _e(system[8:]), "ISO"], _SEPS.subcomponent)
    elif system.startswith(DEFAULT_ID_PREFIX):
        from urllib.parse import unquote

        authority = _e(unquote(system[len(DEFAULT_ID_PREFIX):]))
    return _join([_e(ident.get("value", "")), _e(name.get("family", "")), _e(given[0]) if given else "",
                  _e(" ".join(given[1:])), "", _e(" ".join(name.get("prefix", []))), "", "", authority],
                 _SEPS.component)


def request_to_order(
    bundle: dict[str, Any],
    *,
    message: str = "ORM",
    sending: str | tuple[str, str] = ("LIFELINE", ""),
    receiving: str | tuple[str, str] = ("", ""),
    control_id: str | None = None,
    version: str = "2.5.1",
    timestamp: datetime | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
) -> str:
    """Build an ER7 ORM^O01 (ORC-7 timing) or OML^O21 (TQ1 timing) from a Bundle's Patient and
    ServiceRequest(s): ORC-1/5 from status, ORC/OBR-2/3 placer/filler, OBR-4 code, ORC-9 authored,
    ORC-12 requester, start and priority, notes as NTE."""
    if message not in REQUEST_MESSAGES:
        raise MappingError(f"request_to_order: message must be ORM or OML, not {message!r}")
    entries, patient, requests = _bundle_parts(bundle, "ServiceRequest", "an order message")
    trigger, structure = ("O01", "ORM_O01") if message == "ORM" else ("O21", "OML_O21")
    msh, _ = _header(message, trigger, structure, sending, receiving, control_id, version, timestamp)
    segments = [msh, _pid_segment(patient, id_prefix)]
    field, comp = _SEPS.field, _SEPS.component
    for n, sr in enumerate(requests, start=1):
        placer, filler = _ei(_typed_identifier(sr, "PLAC")), _ei(_typed_identifier(sr, "FILL"))
        status = str(sr.get("status", "active"))
        start = _dtm(sr.get("occurrenceDateTime"), "ServiceRequest.occurrenceDateTime")
        priority = _PRIORITY_V2.get(str(sr.get("priority", "")), "")
        requester = sr.get("requester") or {}
        who = entries.get(requester.get("reference"), {})
        xcn = _xcn(who, str(requester.get("display", ""))) if who.get("resourceType") == "Practitioner" or (
            requester.get("display") and not who) else ""
        orc = [""] * 13
        orc[0], orc[1], orc[2], orc[3] = "ORC", _ORDER_CONTROL.get(status, "NW"), placer, filler
        orc[5] = _ORDER_STATUS.get(status, "")
        if message == "ORM":
            orc[7] = _join(["", "", "", start, "", priority], comp)
        orc[9] = _dtm(sr.get("authoredOn"), "ServiceRequest.authoredOn")
        orc[12] = xcn
        segments.append(_join(orc, field))
        if message == "OML" and (start or priority):
            segments.append(_join(["TQ1", "1", "", "", "", "", "", start, "", priority], field))
        obr = [""] * 17
        obr[0], obr[1], obr[2], obr[3] = "OBR", str(n), placer, filler
        obr[4] = _cwe(sr.get("code") or {}) if sr.get("code") else ""
        obr[7] = start
        obr[16] = xcn
        segments.append(_join(obr, field))
        for k, note in enumerate(sr.get("note", []), start=1):
            segments.append(_join(["NTE", str(k), "", _e(note.get("text", ""))], field))
    return "\r".join(segments)
