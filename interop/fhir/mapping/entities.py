"""Resources every message family shares: Patient, Encounter, Practitioner(Role), Organization, Location,
RelatedPerson and Provenance. Shared resources are deduplicated by their conditional key."""

from __future__ import annotations

from interop.errors import MappingError
from interop.fhir import codes
from interop.fhir.datatypes import (
    JSON,
    Composite,
    DateError,
    code_text,
    count,
    cwe_concept,
    cx_identifier,
    display_name,
    ei_identifier,
    identifier_system,
    table_concept,
    to_date,
    to_instant,
    xad_address,
    xcn_name,
    xpn_name,
    xtn_contact,
)
from interop.fhir.mapping.core import URI_SYSTEM, Mapper, concept_text
from interop.message import Segment

# -- Organization (HD / XON) ---------------------------------------------------------------------


def hd_organization(m: Mapper, namespace: str, universal_id: str = "", universal_type: str = "",
                    name: str = "") -> JSON | None:
    """An HD (assigning authority, facility) → Organization keyed on the identifier system it stands for."""
    if not (namespace or universal_id):
        return None
    system = identifier_system(namespace, universal_id, universal_type, m.cfg, m.authority)
    key = {"system": URI_SYSTEM, "value": system}
    res: JSON = {"resourceType": "Organization", "active": True, "name": name or namespace or universal_id}
    if namespace and universal_id:
        res["alias"] = [namespace]
    ref = m.add(res, key, update=False)
    ref["display"] = res["name"]
    return ref


def authority_organization(m: Mapper, hd: Composite, comp: int) -> JSON | None:
    """The Organization of an assigning authority component (CX.4, XCN.9, EI 2-4) when it names one
    with a universal id (a bare namespace is usually a local code, not an organisation)."""
    if not hd(comp, 2):
        return None
    return hd_organization(m, hd(comp, 1), hd(comp, 2), hd(comp, 3))


def xon_organization(m: Mapper, xon: Composite) -> JSON | None:
    """XON (name ^ type ^ id ^ ... ^ assigning authority (6) ^ ... ^ organization identifier (10))."""
    name, ident_value = xon(1), xon(10) or xon(3)
    if not (name or ident_value):
        return None
    res: JSON = {"resourceType": "Organization", "active": True}
    if name:
        res["name"] = name
    key: JSON
    if ident_value:
        system = identifier_system(xon(6, 1), xon(6, 2), xon(6, 3), m.cfg, m.authority)
        key = {"system": system, "value": ident_value}
        ident: JSON = dict(key)
        if xon(7):
            ident["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": code_text(xon(7))}]}
        res["identifier"] = [ident]
    else:
        key = m.derived_key("Organization", m.authority, name)
    ref = m.add(res, key, update=False)
    if name:
        ref["display"] = name
    return ref


def named_organization(m: Mapper, name: str) -> JSON | None:
    """A facility or payer known only by a code or name (PV1-39, ...)."""
    if not name:
        return None
    ref = m.add({"resourceType": "Organization", "active": True, "name": name},
                m.derived_key("Organization", m.authority, name), update=False)
    ref["display"] = name
    return ref


# -- Practitioner (XCN) -------------------------------------------------------------------------------


def practitioner(m: Mapper, xcn: Composite) -> JSON | None:
    """XCN → reference to a Practitioner (created once per message, conditional create)."""
    if not xcn:
        return None
    name = xcn_name(xcn)
    display = display_name(name) if name else ""
    if xcn(1):
        system = identifier_system(xcn(9, 1), xcn(9, 2), xcn(9, 3), m.cfg, m.authority)
        key: JSON = {"system": system, "value": xcn(1)}
    elif name:
        # No id: keyed on the name under the sender, so the same XCN across messages is one Practitioner.
        key = m.derived_key("Practitioner", m.authority, name.get("family", ""), *name.get("given", []))
    else:
        return None
    res: JSON = {"resourceType": "Practitioner", "active": True}
    if xcn(1):
        ident = dict(key)
        if xcn(13):
            ident["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": code_text(xcn(13))}]}
        res["identifier"] = [ident]
    if name:
        res["name"] = [name]
    if xcn(9, 2):
        authority_organization(m, xcn, 9)
    ref = m.add(res, key, update=False)
    if display:
        ref["display"] = display
    return ref


def practitioners(m: Mapper, seg: Segment, n: int) -> list[JSON]:
    return [r for r in (practitioner(m, x) for x in m.reps(seg, n)) if r]


# -- Location (PL) ---------------------------------------------------------------------------------

# PL components from the top of the hierarchy down: facility (4, an HD), building (7), floor (8),
# point of care (1), room (2), bed (3), with their location-physical-type.
_PL_LEVELS = ((4, "si", "Site"), (7, "bu", "Building"), (8, "lvl", "Level"), (1, "wa", "Ward"),
              (2, "ro", "Room"), (3, "bd", "Bed"))


def location(m: Mapper, pl: Composite) -> JSON | None:
    """PL → the chain of Locations (facility → building → floor → point of care → room → bed), each
    ``partOf`` the one above; returns a reference to the most specific one."""
    path: list[str] = []
    parent: JSON | None = None
    facility = identifier_system(pl(4, 1), pl(4, 2), pl(4, 3), m.cfg, m.authority) if pl(4) else m.authority
    for comp, code, display in _PL_LEVELS:
        value = pl(comp, 1) if comp == 4 else pl(comp)
        if not value:
            continue
        path.append(f"{comp}={value}")
        res: JSON = {"resourceType": "Location", "status": "active", "mode": "instance", "name": value,
                     "physicalType": {"coding": [{"system": codes.LOCATION_PHYSICAL_TYPE, "code": code,
                                                  "display": display}]}}
        if comp == 4 and pl(4, 2):
            res["alias"] = [pl(4, 2)]
        if comp == 1 and pl(6):
            res["type"] = [table_concept(pl(6), "0305")]
        if comp in (1, 2, 3) and pl(5):
            res["operationalStatus"] = {"system": codes.v2_table("0116"), "code": code_text(pl(5))}
        if pl(9) and comp in (1, 2, 3):
            res["description"] = pl(9)
        if parent is not None:
            res["partOf"] = dict(parent)
        parent = m.add(res, m.derived_key("Location", facility, *path), update=False)
        parent["display"] = value
    if parent is not None:
        parent["display"] = location_display(pl)
    return parent


def location_display(pl: Composite) -> str:
    """PL (point of care ^ room ^ bed ^ facility ...) as one readable string."""
    text = " ".join(p for p in (pl(1), pl(2), pl(3)) if p)
    if pl(4, 1):
        text = f"{text} ({pl(4, 1)})" if text else pl(4, 1)
    return text


# -- Patient (PID, PD1) ------------------------------------------------------------------------------


def patient(m: Mapper, pid: Segment, *, authoritative: bool) -> JSON:
    """PID → Patient; ADT owns demographics (PUT), other messages only make sure it exists (POST)."""
    m.use(pid, 1, 33, 34)
    idents: list[JSON] = []
    key: JSON | None = None
    for cx in m.reps(pid, 3):
        ident = cx_identifier(cx, m.cfg, m.authority)
        if ident:
            idents.append(ident)
            authority_organization(m, cx, 4)
            if key is None and cx(5) == "MR":
                key = ident
    for n in (2, 4):
        for cx in m.reps(pid, n):
            ident = cx_identifier(cx, m.cfg, m.authority)
            if ident and ident not in idents:
                idents.append(ident)
                authority_organization(m, cx, 4)
    if not idents:
        key = _demographic_key(m, pid)
    key = key or idents[0]
    if ssn := m.val(pid, 19):
        idents.append({"system": codes.SSN, "value": ssn,
                       "type": {"coding": [{"system": codes.v2_table("0203"), "code": "SS"}]}})
    dln = m.comp(pid, 20)
    if dln(1):
        ident = {"system": m.cfg.id_prefix + "dl:" + (dln(2) or m.authority), "value": dln(1),
                 "type": {"coding": [{"system": codes.v2_table("0203"), "code": "DL"}]}}
        if expiry := m.date(pid, 20, dln(3)) if dln(3) else None:
            ident["period"] = {"end": expiry}
        idents.append(ident)
    res: JSON = {"resourceType": "Patient", "identifier": idents, "active": True}
    names = [n for n in (xpn_name(x) for x in m.reps(pid, 5)) if n]
    names += [{**n, "use": "usual"} for n in (xpn_name(x) for x in m.reps(pid, 9)) if n]
    if names:
        res["name"] = names
    extensions: list[JSON] = []
    mmn = m.comp(pid, 6)
    if mmn(1):
        extensions.append({"url": codes.MOTHERS_MAIDEN_NAME, "valueString": mmn(1)})
    telecom = [c for c in (xtn_contact(x, "home") for x in m.reps(pid, 13)) if c]
    telecom += [c for c in (xtn_contact(x, "work") for x in m.reps(pid, 14)) if c]
    telecom += [c for c in (xtn_contact(x) for x in m.reps(pid, 40)) if c]
    if telecom:
        res["telecom"] = _unique(telecom)
    sex = m.val(pid, 8)
    if sex:
        if sex.upper() in codes.GENDER:
            res["gender"] = codes.GENDER[sex.upper()]
        else:
            m.issue(m.loc(pid, 8), f"sex {sex!r} is not in table 0001")
    if birth := m.date(pid, 7):
        res["birthDate"] = birth
        if "T" in (birth_time := m.datetime(pid, 7) or ""):
            res["_birthDate"] = {"extension": [{"url": codes.BIRTH_TIME, "valueDateTime": birth_time}]}
    death_dt = m.datetime(pid, 29)
    death = m.val(pid, 30).upper()
    if death_dt:
        res["deceasedDateTime"] = death_dt
    elif death in ("Y", "N"):
        res["deceasedBoolean"] = death == "Y"
    addresses = [a for a in (xad_address(x) for x in m.reps(pid, 11)) if a]
    if county := m.val(pid, 12):
        for addr in addresses:
            addr.setdefault("district", county)
    if addresses:
        res["address"] = addresses
    marital = m.comp(pid, 16)
    if marital(1):
        code = marital(1).upper()
        if code in codes.MARITAL:
            res["maritalStatus"] = {"coding": [{"system": codes.V3_MARITAL, "code": codes.MARITAL[code]}]}
        elif code == "U":
            res["maritalStatus"] = {"coding": [{"system": codes.V3_NULL_FLAVOR, "code": "UNK"}]}
        else:
            res["maritalStatus"] = cwe_concept(marital, m.cfg, "0002")
    multiple = m.val(pid, 24).upper()
    order = count(m.val(pid, 25))
    if isinstance(order, int):
        res["multipleBirthInteger"] = order
    elif multiple in ("Y", "N"):
        res["multipleBirthBoolean"] = multiple == "Y"
    languages = [c for c in (cwe_concept(x, m.cfg, "0296") for x in m.reps(pid, 15)) if c]
    if languages:
        res["communication"] = [{"language": lang} for lang in languages]
    extensions += _race_ethnicity(m, pid)
    if religion := cwe_concept(m.comp(pid, 17), m.cfg, "0006"):
        extensions.append({"url": codes.RELIGION, "valueCodeableConcept": religion})
    if place := m.val(pid, 23):
        extensions.append({"url": codes.BIRTH_PLACE, "valueAddress": {"text": place}})
    for cit in (cwe_concept(x, m.cfg, "0171") for x in m.reps(pid, 26)):
        if cit:
            extensions.append({"url": codes.CITIZENSHIP, "extension": [{"url": "code", "valueCodeableConcept": cit}]})
    if nationality := cwe_concept(m.comp(pid, 28), m.cfg, "0212"):
        extensions.append({"url": codes.NATIONALITY,
                           "extension": [{"url": "code", "valueCodeableConcept": nationality}]})
    if extensions:
        res["extension"] = extensions
    if m.val(pid, 31).upper() == "Y" or m.val(pid, 32):
        m.use(pid, 31, 32)
    if last := m.instant(pid, 33):
        res["meta"] = {"lastUpdated": last}
    m.patient_key = key
    m.patient_ref = m.add(res, key, update=authoritative)
    m.encounter_ref = m.encounter_key = None
    return m.patient_ref


def _demographic_key(m: Mapper, pid: Segment) -> JSON:
    """No identifier at all: key the Patient on sender + name + birth date + sex (said in an issue), or fail."""
    name = m.comp(pid, 5)
    if not (name(1) or name(2)):
        raise MappingError(f"{m.loc(pid, 3)}: no patient identifier and no name, a Patient cannot be keyed")
    m.issue(m.loc(pid, 3), "no patient identifier: Patient keyed on sender, name, birth date and sex")
    return m.derived_key("Patient", m.authority, name(1).upper(), name(2).upper(), pid.get(7)[:8],
                         pid.get(8).upper())


def _unique(items: list[JSON]) -> list[JSON]:
    out: list[JSON] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _race_ethnicity(m: Mapper, pid: Segment) -> list[JSON]:
    """PID-10 / PID-22 → US Core race / ethnicity (ombCategory when the code is an OMB one, text always)."""
    out: list[JSON] = []
    for n, url, omb in ((10, codes.US_CORE_RACE, codes.OMB_RACE), (22, codes.US_CORE_ETHNICITY,
                                                                     codes.OMB_ETHNICITY)):
        parts: list[JSON] = []
        texts: list[str] = []
        for cwe in m.reps(pid, n):
            code, text = cwe(1), cwe(2)
            if n == 22 and code.upper() in codes.ETHNICITY_LETTERS and not cwe(3):
                code, default_text = codes.ETHNICITY_LETTERS[code.upper()]
                text = text or default_text
            if code in omb:
                coding: JSON = {"system": codes.CDC_RACE_ETHNICITY, "code": code_text(code)}
                if text:
                    coding["display"] = text
                parts.append({"url": "ombCategory", "valueCoding": coding})
            elif code and cwe(3) in ("CDCREC", "HL70005", "HL70189"):
                parts.append({"url": "detailed", "valueCoding": {"system": codes.CDC_RACE_ETHNICITY,
                                                                 "code": code_text(code)}})
            texts.append(text or code)
        if texts:
            parts.append({"url": "text", "valueString": ", ".join(t for t in texts if t)})
            out.append({"url": url, "extension": parts})
    return out


def patient_extras(m: Mapper, pd1: Segment) -> None:
    """PD1-3 (primary facility) and PD1-4 (primary care provider) → Patient.generalPractitioner."""
    m.use(pd1, 1)
    if m.patient_ref is None:
        m.use_all(pd1)
        return
    res = m.resource(m.patient_ref)
    gps = [r for r in (xon_organization(m, x) for x in m.reps(pd1, 3)) if r]
    gps += practitioners(m, pd1, 4)
    for ref in gps:
        res.setdefault("generalPractitioner", []).append(ref)
    if gps and gps[0]["reference"] in m.entries and \
            m.entries[gps[0]["reference"]]["resource"]["resourceType"] == "Organization":
        res.setdefault("managingOrganization", dict(gps[0]))


# -- Encounter (PV1, PV2) ----------------------------------------------------------------------------


def encounter(m: Mapper, pv1: Segment, *, authoritative: bool) -> JSON | None:
    """PV1 → Encounter keyed on the visit number (PV1-19); locations and practitioners on the way."""
    m.use(pv1, 1)
    pclass = m.val(pv1, 2).upper()
    visit = cx_identifier(m.comp(pv1, 19), m.cfg, m.authority)
    locations: list[JSON] = []
    for n, loc_status in ((3, "active"), (6, "completed"), (11, "planned"), (42, "planned"), (43, "completed")):
        if ref := location(m, m.comp(pv1, n)):
            locations.append({"location": ref, "status": loc_status})
    participants: list[JSON] = []
    for n, role, display in ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
                             (17, "ADM", "admitter"), (52, "PART", "Participation")):
        for ref in practitioners(m, pv1, n):
            participants.append({"type": [{"coding": [{"system": codes.V3_PARTICIPATION, "code": role,
                                                        "display": display}]}], "individual": ref})
    registration = pclass == "N" or m.trigger in ("A28", "A29", "A31")
    admitted = pv1.get(44).strip()
    if visit is None and (registration or not (authoritative or pclass or admitted)):
        # No visit to speak of (a registration-only PV1, or a bare PV1 in a non-ADT message).
        used = m.used[id(pv1)]
        extra = [n for n in range(4, len(pv1) + 1) if n not in used and pv1.field(n).strip()]
        if extra:
            m.issue(m.loc(pv1), "no visit number (PV1-19): no Encounter created")
        m.use_all(pv1)
        return None
    if visit is not None:
        authority_organization(m, m.comp(pv1, 19), 4)
        if "type" not in visit:
            visit["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": "VN"}]}
    if visit is not None:
        key = visit
    elif admitted:
        # The same admission (patient, class, admit time, location) in another message is the same Encounter.
        key = m.derived_key("Encounter", *m.patient_parts(), pclass, admitted, pv1.field(3))
        m.issue(m.loc(pv1, 19), "no visit number: Encounter keyed on patient, class, admit time and location",
                "information")
    else:
        key = m.message_key("Encounter", pv1)
        m.issue(m.loc(pv1, 19), "no visit number: Encounter keyed on this message only", "information")
    res: JSON = {"resourceType": "Encounter", "identifier": [visit] if visit else []}
    for cx in m.reps(pv1, 50):
        if alt := cx_identifier(cx, m.cfg, m.authority):
            res["identifier"].append(alt)
    status: str | None = None
    if m.msg.message_code == "ADT":
        status = codes.ENCOUNTER_STATUS.get(m.trigger) or codes.ENCOUNTER_STATUS_MORE.get(m.trigger)
    discharged = m.datetime(pv1, 45)
    res["status"] = status or ("finished" if discharged else "in-progress")
    if pclass in codes.PATIENT_CLASS:
        code, display = codes.PATIENT_CLASS[pclass]
        res["class"] = {"system": codes.V3_ACT_CODE, "code": code, "display": display}
    else:
        if pclass:
            m.issue(m.loc(pv1, 2), f"patient class {pclass!r} has no v3-ActCode equivalent")
        res["class"] = {"system": codes.v2_table("0004"), "code": code_text(pclass)} if pclass else {
            "system": codes.V3_NULL_FLAVOR, "code": "UNK"}
    types = [c for c in (cwe_concept(m.comp(pv1, 4), m.cfg, "0007"),
                         cwe_concept(m.comp(pv1, 18), m.cfg, "0018")) if c]
    if types:
        res["type"] = types
    if service := cwe_concept(m.comp(pv1, 10), m.cfg, "0069"):
        res["serviceType"] = service
    res["subject"] = m.subject()
    if participants:
        res["participant"] = participants
    period = {k: v for k, v in (("start", m.datetime(pv1, 44)), ("end", discharged)) if v}
    if period:
        res["period"] = period
    hosp: JSON = {}
    if src := cwe_concept(m.comp(pv1, 14), m.cfg, "0023"):
        hosp["admitSource"] = src
    if disp := cwe_concept(m.comp(pv1, 36), m.cfg, "0112"):
        hosp["dischargeDisposition"] = disp
    if readmit := m.val(pv1, 13):
        hosp["reAdmission"] = table_concept(readmit, "0092")
    if diet := cwe_concept(m.comp(pv1, 38), m.cfg, "0114"):
        hosp["dietPreference"] = [diet]
    if dest := location(m, m.comp(pv1, 37)) if m.comp(pv1, 37)(1) else None:
        hosp["destination"] = dest
    if hosp:
        res["hospitalization"] = hosp
    if locations:
        res["location"] = locations
    if org := named_organization(m, m.comp(pv1, 39)(1)):
        res["serviceProvider"] = org
    m.encounter_key = key
    m.encounter_ref = m.add(res, key, update=authoritative)
    episode_of_care(m, pv1)
    return m.encounter_ref


def episode_of_care(m: Mapper, pv1: Segment) -> None:
    """PV1-54 (service episode identifier, v2.6+) → EpisodeOfCare, linked from the Encounter."""
    ident = cx_identifier(m.comp(pv1, 54), m.cfg, m.authority)
    if ident is None or m.encounter_ref is None:
        return
    res: JSON = {"resourceType": "EpisodeOfCare", "status": "active", "patient": m.subject()}
    if desc := cwe_concept(m.comp(pv1, 53), m.cfg):
        res["type"] = [desc]
    ref = m.add(res, ident, update=False)
    m.resource(m.encounter_ref).setdefault("episodeOfCare", []).append(ref)


def encounter_extras(m: Mapper, pv2: Segment) -> None:
    """PV2 → Encounter reason (3), priority (25), length (11), planned location (1), referral source (13)."""
    m.use(pv2, 1)
    if m.encounter_ref is None:
        if any(pv2.field(n).strip() for n in range(2, len(pv2) + 1)):
            m.issue(m.loc(pv2), "no Encounter (PV1 without a visit number): PV2 not mapped")
        m.use_all(pv2)
        return
    res = m.resource(m.encounter_ref)
    if reason := cwe_concept(m.comp(pv2, 3), m.cfg):
        res.setdefault("reasonCode", []).append(reason)
    if (text := m.val(pv2, 12)) and "reasonCode" not in res:
        res["reasonCode"] = [{"text": text}]
    prio = m.comp(pv2, 25)(1)
    if prio in codes.VISIT_PRIORITY:
        res["priority"] = {"coding": [{"system": codes.V3_ACT_PRIORITY, "code": codes.VISIT_PRIORITY[prio]}]}
    elif prio:
        res["priority"] = table_concept(prio, "0217")
    length = count(m.val(pv2, 11))
    if length is not None:
        res["length"] = {"value": length, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}
    if ref := location(m, m.comp(pv2, 1)):
        res.setdefault("location", []).append({"location": ref, "status": "planned"})
    for ref in practitioners(m, pv2, 13):
        res.setdefault("participant", []).append({"type": [{"coding": [{
            "system": codes.V3_PARTICIPATION, "code": "REF", "display": "referrer"}]}], "individual": ref})
    if (expected := m.datetime(pv2, 9)) and res["status"] == "planned":
        res.setdefault("period", {}).setdefault("end", expected)


# -- people around the patient ------------------------------------------------------------------------


def relationship_concepts(m: Mapper, rel: Composite) -> list[JSON]:
    if not rel(1):
        return []
    code = rel(1).upper()
    if code in codes.RELATIONSHIP:
        return [{"coding": [{"system": codes.V3_ROLE_CODE, "code": codes.RELATIONSHIP[code]}],
                 "text": rel(2) or code}]
    concept = cwe_concept(rel, m.cfg, "0063")
    return [concept] if concept else []


def related_person(m: Mapper, nk1: Segment) -> None:
    """NK1 → RelatedPerson, and the same person as a Patient.contact."""
    m.use(nk1, 1)
    pat_sys, pat_val = m.patient_parts()
    names = [n for n in (xpn_name(x) for x in m.reps(nk1, 2)) if n]
    rel = m.comp(nk1, 3)
    relationship = relationship_concepts(m, rel)
    if role := cwe_concept(m.comp(nk1, 7), m.cfg, "0131"):
        relationship.append(role)
    idents = [i for i in (cx_identifier(c, m.cfg, m.authority) for c in m.reps(nk1, 33)) if i]
    org = [r for r in (xon_organization(m, x) for x in m.reps(nk1, 13)) if r]
    name_text = display_name(names[0]) if names else (org[0].get("display", "") if org else m.val(nk1, 1))
    key = idents[0] if idents else m.unique_key("RelatedPerson", pat_sys, pat_val, rel(1), name_text)
    res: JSON = {"resourceType": "RelatedPerson", "identifier": idents, "active": True, "patient": m.subject()}
    if relationship:
        res["relationship"] = relationship
    if names:
        res["name"] = names
    telecom = [c for c in (xtn_contact(x, "home") for x in m.reps(nk1, 5)) if c]
    telecom += [c for c in (xtn_contact(x, "work") for x in m.reps(nk1, 6)) if c]
    telecom += [c for c in (xtn_contact(x) for x in m.reps(nk1, 31)) if c]
    if telecom:
        res["telecom"] = telecom
    addresses = [a for a in (xad_address(x) for x in m.reps(nk1, 4)) if a]
    if addresses:
        res["address"] = addresses
    sex = m.val(nk1, 15).upper()
    if sex in codes.GENDER:
        res["gender"] = codes.GENDER[sex]
    if birth := m.date(nk1, 16):
        res["birthDate"] = birth
    period = {k: v for k, v in (("start", m.date(nk1, 8)), ("end", m.date(nk1, 9))) if v}
    if period:
        res["period"] = period
    if not (names or relationship or telecom or addresses or org):
        m.issue(m.loc(nk1), "next of kin without name, relationship, contact or organisation: not mapped")
        return
    if names or relationship or telecom or addresses:  # an organisation alone is a contact, not a person
        m.add(res, key)
    if m.patient_ref is not None:
        contact: JSON = {"relationship": relationship, "telecom": telecom}
        if names:
            contact["name"] = names[0]
        if addresses:
            contact["address"] = addresses[0]
        if "gender" in res:
            contact["gender"] = res["gender"]
        if org:
            contact["organization"] = dict(org[0])
        if period:
            contact["period"] = period
        m.resource(m.patient_ref).setdefault("contact", []).append(contact)


def practitioner_role(m: Mapper, seg: Segment) -> JSON | None:
    """ROL / PRT → PractitionerRole (practitioner, role, organization, location, period, telecom)."""
    m.use(seg, 1, 2)
    rol = seg.id == "ROL"
    action = m.val(seg, 2).upper()
    if action in ("DE", "D"):
        m.use_all(seg)
        m.issue(m.loc(seg, 2), "role deleted (action code DE): no PractitionerRole")
        return None
    person, role_n, org_n, loc_n = (4, 3, 14, 13) if rol else (5, 4, 8, 9)
    who = next(iter(practitioners(m, seg, person)), None)
    role = cwe_concept(m.comp(seg, role_n), m.cfg, "0443")
    if who is None:
        if not rol and any(seg.field(n).strip() for n in (10, 16, 17, 18, 19)):
            m.use_all(seg)
            m.issue(m.loc(seg), "participation of a device or organisation only: not mapped")
        return None
    res: JSON = {"resourceType": "PractitionerRole", "active": True, "practitioner": dict(who)}
    if role:
        res["code"] = [role]
    specialties = [c for c in (cwe_concept(x, m.cfg, "0072") for x in m.reps(seg, 9 if rol else 6)) if c]
    if specialties:
        res["specialty"] = specialties
    if org := next(iter(r for r in (xon_organization(m, x) for x in m.reps(seg, org_n)) if r), None):
        res["organization"] = org
    if where := location(m, m.comp(seg, loc_n)):
        res["location"] = [where]
    period = m.period(seg, 5, 6) if rol else m.period(seg, 11, 12)
    if period:
        res["period"] = period
    telecom = [c for c in (xtn_contact(x, "work") for x in m.reps(seg, 12 if rol else 15)) if c]
    if telecom:
        res["telecom"] = telecom
    ident = ei_identifier(m.comp(seg, 1), m.cfg, m.authority)
    key = ident or m.derived_key("PractitionerRole", who["reference"],
                                 concept_text(role) if role else "",
                                 res.get("organization", {}).get("reference", ""))
    ref = m.add(res, key, update=False)
    ref["display"] = who.get("display", "")
    if m.patient_ref is not None and role and concept_text(role).upper() in ("PP", "FHCP", "PRIMARY CARE"):
        m.resource(m.patient_ref).setdefault("generalPractitioner", []).append(dict(ref))
    elif m.encounter_ref is not None:
        m.resource(m.encounter_ref).setdefault("participant", []).append(
            {"type": [role] if role else [], "individual": dict(ref)})
    return ref


# -- Provenance ---------------------------------------------------------------------------------------


def provenance(m: Mapper) -> None:
    """One Provenance per bundle naming the source message and Lifeline as the transforming agent;
    a second one for the EVN event (who did what, when) when the message carries EVN."""
    msh = m.msg.msh
    sender = hd_organization(m, msh.get(4, component=1), msh.get(4, component=2), msh.get(4, component=3))
    receiver = hd_organization(m, msh.get(6, component=1), msh.get(6, component=2), msh.get(6, component=3))
    targets = [{"reference": url} for url, e in m.entries.items()
               if e["resource"]["resourceType"] not in ("Organization", "Provenance")]
    targets += [r for r in (sender, receiver) if r]
    if not targets:
        return
    recorded = recorded_time(m)
    if recorded is None:
        m.issue("MSH-7", "no valid message time: no Provenance")
        return
    source = {"system": m.bundle_identifier()["system"], "value": m.bundle_identifier()["value"]}
    agents: list[JSON] = [{
        "type": {"coding": [{"system": codes.PROVENANCE_AGENT_TYPE, "code": "assembler"}]},
        "who": {"display": "Lifeline"}}]
    app = msh.get(3, component=1)
    agents.append({"type": {"coding": [{"system": codes.PROVENANCE_AGENT_TYPE, "code": "author"}]},
                   "who": sender or {"display": app or m.authority},
                   **({"onBehalfOf": {"display": app}} if app and sender else {})})
    res: JSON = {
        "resourceType": "Provenance", "target": [dict(t) for t in targets], "recorded": recorded,
        "activity": {"coding": [{"system": codes.V3_DATA_OPERATION, "code": "CREATE"}],
                     "text": f"HL7 v2 {m.msg.message_type} transformed to FHIR by Lifeline"},
        "agent": agents,
        "entity": [{"role": "source", "what": {"identifier": source,
                                                 "display": f"{m.msg.message_type} {m.msg.control_id}"}}],
    }
    m.add_tagged(res, m.derived_key("Provenance", source["system"], source["value"]))
    evn = m.msg.segment("EVN")
    if evn is not None:
        event_provenance(m, evn, targets)


def recorded_time(m: Mapper) -> str | None:
    """MSH-7 as an instant; without an offset (and no default) it is taken as UTC, and said so."""
    if instant := m.message_instant():
        return instant
    raw = m.msg.msh.get(7)
    try:
        day = to_date(raw) if raw else None
        full = to_instant(raw, "Z") if raw else None
    except DateError:
        return None
    if day is None or len(day) < 10:
        return None
    m.issue("MSH-7", "no UTC offset: Provenance.recorded taken as UTC", "information")
    return full or f"{day}T00:00:00Z"


def event_provenance(m: Mapper, evn: Segment, targets: list[JSON]) -> None:
    """EVN → Provenance of the event: recorded (EVN-2), occurred (EVN-6), reason (EVN-4), operator (EVN-5)."""
    m.use(evn, 1, 2, 3, 4, 5, 6, 7)
    recorded = m.instant(evn, 2) if m.val(evn, 2) and m.message_instant() else recorded_time(m)
    if recorded is None:
        return
    subject = [t for t in targets if m.entries.get(t["reference"], {}).get("resource", {}).get(
        "resourceType") in ("Patient", "Encounter")]
    if not subject:
        return
    res: JSON = {"resourceType": "Provenance", "target": [dict(t) for t in subject], "recorded": recorded,
                 "activity": {"coding": [{"system": codes.v2_table("0003"),
                                          "code": code_text(m.val(evn, 1) or m.trigger)}]},
                 "agent": []}
    if occurred := m.datetime(evn, 6):
        res["occurredDateTime"] = occurred
    if reason := cwe_concept(m.comp(evn, 4), m.cfg, "0062"):
        res["reason"] = [reason]
    for who in practitioners(m, evn, 5):
        res["agent"].append({"type": {"coding": [{"system": codes.PROVENANCE_AGENT_TYPE, "code": "enterer"}]},
                             "who": who})
    if facility := hd_organization(m, m.comp(evn, 7)(1), m.comp(evn, 7)(2), m.comp(evn, 7)(3)):
        res["agent"].append({"type": {"coding": [{"system": codes.PROVENANCE_AGENT_TYPE, "code": "custodian"}]},
                             "who": facility})
    if not res["agent"]:
        res["agent"] = [{"who": {"display": m.msg.sending_application or m.authority}}]
    m.add_tagged(res, m.derived_key("Provenance", "EVN", *m.bundle_identifier().values()))
