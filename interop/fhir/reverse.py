"""FHIR R4 Patient → HL7 v2 ADT^A28 / ADT^A31 (add / update person information)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from interop.errors import MappingError
from interop.fhir import codes
from interop.fhir.datatypes import DEFAULT_ID_PREFIX, DateError, from_fhir_datetime
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
        raise MappingError(f"Patient.{where}: {exc}") from exc


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
    """Build an ER7 ADT^A28 / ADT^A31 (MSH, EVN, PID, PV1 class N) from a FHIR Patient dict."""
    if trigger not in ("A28", "A31"):
        raise MappingError(f"patient_to_adt: trigger must be A28 or A31, not {trigger!r}")
    if patient.get("resourceType") != "Patient":
        raise MappingError("patient_to_adt: resource is not a Patient")
    identifiers = [i for i in patient.get("identifier", []) if i.get("value")]
    if not identifiers:
        raise MappingError("Patient.identifier: at least one identifier is needed for PID-3")
    s_app, s_fac = _hd(sending)
    r_app, r_fac = _hd(receiving)
    now = (timestamp or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z") or ""
    ctl = control_id or uuid.uuid4().hex[:20]
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
    death_dt = _dtm(patient.get("deceasedDateTime"), "deceasedDateTime")
    deceased = patient.get("deceasedBoolean")
    death_flag = "Y" if death_dt or deceased is True else ("N" if deceased is False else "")

    pid = [""] * 31
    pid[0] = "PID"
    pid[1] = "1"
    pid[3] = pid3
    pid[5] = names
    pid[6] = mmn
    pid[7] = _dtm(patient.get("birthDate"), "birthDate")
    pid[8] = gender
    pid[11] = addresses
    pid[13] = home
    pid[14] = work
    pid[16] = marital
    pid[19] = _e(ssn[0]["value"]) if ssn else ""
    pid[29] = death_dt
    pid[30] = death_flag
    msh = field.join([
        "MSH", _SEPS.encoding_characters, _e(s_app), _e(s_fac), _e(r_app), _e(r_fac), now, "",
        f"ADT{comp}{trigger}{comp}ADT_A05", _e(ctl), "P", _e(version),
    ])
    evn = field.join(["EVN", trigger, now])
    segments = [msh, evn, _join(pid, field), field.join(["PV1", "1", "N"])]
    return "\r".join(segments)
