"""ADT (A01-A62): Patient and Encounter owned by the message (conditional update), merges and identifier
changes (A40, A41, A45, A47), and the clinical segments ADT carries: AL1/IAM, DG1, PR1, CON, DRG, ACC, DB1."""

from __future__ import annotations

from interop.errors import MappingError
from interop.fhir import codes
from interop.fhir.datatypes import (
    JSON,
    code_text,
    count,
    cwe_concept,
    cx_identifier,
    ei_identifier,
    number,
    table_concept,
    xpn_name,
)
from interop.fhir.mapping import entities
from interop.fhir.mapping.core import Mapper, concept_text
from interop.message import Segment

PATIENT_MERGES = frozenset({"A34", "A36", "A39", "A40", "A47", "A48", "A46", "A30"})
MERGES = PATIENT_MERGES | frozenset({"A35", "A41", "A42", "A44", "A45", "A49", "A50"})


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    if m.trigger in MERGES and m.msg.all("MRG"):
        walk(m, {"MRG": on_mrg}, authoritative=True)
    elif m.trigger in ("A40", "A47"):
        raise MappingError(f"ADT^{m.trigger}: MRG segment missing, nothing says which patient is merged")
    else:
        walk(m, {}, authoritative=True)


def on_mrg(m: Mapper, mrg: Segment) -> None:
    """MRG after a PID: A40/A47 retire the prior patient (``replaced-by``), A41 the prior account,
    A45 moves the prior visit; the survivor is the PID just mapped."""
    survivor = m.patient_ref
    if survivor is None:
        raise MappingError(f"{m.loc(mrg)}: MRG without a PID before it")
    m.use(mrg, 2, 4, 6)
    if account := cx_identifier(m.comp(mrg, 3), m.cfg, m.authority):
        res: JSON = {"resourceType": "Account", "status": "inactive", "subject": [m.subject()],
                     "description": "merged into the patient's current account"}
        m.add(res, account)
    if visit := cx_identifier(m.comp(mrg, 5), m.cfg, m.authority):
        m.add({"resourceType": "Encounter", "status": "entered-in-error",
               "class": {"system": codes.V3_NULL_FLAVOR, "code": "UNK"}, "subject": m.subject()}, visit)
    idents = [i for i in (cx_identifier(c, m.cfg, m.authority) for c in [*m.reps(mrg, 1), *m.reps(mrg, 4)]) if i]
    if m.trigger not in PATIENT_MERGES:
        return  # an account or visit move: the prior patient identifiers name the same person
    if not idents:
        if m.trigger in ("A40", "A47"):
            raise MappingError(f"{m.loc(mrg, 1)}: no prior patient identifier to merge")
        return
    retired: JSON = {"resourceType": "Patient", "identifier": idents, "active": False,
                     "link": [{"other": dict(survivor), "type": "replaced-by"}]}
    names = [n for n in (xpn_name(x) for x in m.reps(mrg, 7)) if n]
    if names:
        retired["name"] = names
    retired_ref = m.add(retired, idents[0], update=True)
    if retired_ref["reference"] != survivor["reference"]:
        m.resource(survivor).setdefault("link", []).append({"other": retired_ref, "type": "replaces"})


# -- AllergyIntolerance -----------------------------------------------------------------------------

_NO_ALLERGEN = "allergen missing: AllergyIntolerance not created"


def allergy(m: Mapper, al1: Segment) -> None:
    """AL1 → AllergyIntolerance keyed on patient + allergen."""
    m.use(al1, 1)
    allergen = m.comp(al1, 3)
    code = m.required_concept(al1, 3, _NO_ALLERGEN)
    if code is None:
        return
    pat_sys, pat_val = m.patient_parts()
    key = m.unique_key("AllergyIntolerance", pat_sys, pat_val, allergen(3), allergen(1) or allergen(2))
    res = _allergy_base(m, code)
    _allergy_kind(m, al1, 2, res)
    severity = m.comp(al1, 4)(1).upper()
    _allergy_severity(m, al1, 4, severity, res)
    reactions = [r for r in m.texts(al1, 5) if r]
    _allergy_reactions(res, reactions, severity)
    if onset := m.datetime(al1, 6):
        res["onsetDateTime"] = onset
    res["note"] = []
    m.ctx.note_target = res
    m.add(res, key)


def _allergy_base(m: Mapper, code: JSON) -> JSON:
    return {"resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": codes.ALLERGY_CLINICAL, "code": "active"}]},
            "type": "allergy", "code": code, "patient": m.subject()}


def _allergy_kind(m: Mapper, seg: Segment, n: int, res: JSON) -> None:
    kind = m.comp(seg, n)(1).upper()
    if kind:
        category = codes.ALLERGY_CATEGORY.get(kind, "")
        if category:
            res["category"] = [category]
        elif kind not in codes.ALLERGY_CATEGORY:
            m.issue(m.loc(seg, n), f"allergen type {kind!r} is not in table 0127")
        if kind in ("DI", "FI", "MI", "EI"):  # the table's "intolerance" variants
            res["type"] = "intolerance"


def _allergy_severity(m: Mapper, seg: Segment, n: int, severity: str, res: JSON) -> None:
    if severity in codes.ALLERGY_CRITICALITY:
        res["criticality"] = codes.ALLERGY_CRITICALITY[severity]
    elif severity:
        m.issue(m.loc(seg, n), f"allergy severity {severity!r} is not in table 0128")


def _allergy_reactions(res: JSON, reactions: list[str], severity: str) -> None:
    if reactions:
        reaction: JSON = {"manifestation": [{"text": r} for r in reactions]}
        if severity in codes.ALLERGY_SEVERITY:
            reaction["severity"] = codes.ALLERGY_SEVERITY[severity]
        res["reaction"] = [reaction]


def allergy_iam(m: Mapper, iam: Segment) -> None:
    """IAM (ADT^A60) → AllergyIntolerance keyed on the allergy unique identifier (IAM-7)."""
    m.use(iam, 1)
    allergen = m.comp(iam, 3)
    code = m.required_concept(iam, 3, _NO_ALLERGEN)
    if code is None:
        return
    ident = ei_identifier(m.comp(iam, 7), m.cfg, m.authority)
    pat_sys, pat_val = m.patient_parts()
    key = ident or m.unique_key("AllergyIntolerance", pat_sys, pat_val, allergen(3), allergen(1) or allergen(2))
    res = _allergy_base(m, code)
    action = m.val(iam, 6).upper()
    if action == "D":
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "code": "entered-in-error"}]}
        del res["clinicalStatus"]
    _allergy_kind(m, iam, 2, res)
    severity = m.comp(iam, 4)(1).upper()
    _allergy_severity(m, iam, 4, severity, res)
    _allergy_reactions(res, [r for r in m.texts(iam, 5) if r], severity)
    if onset := m.datetime(iam, 11):
        res["onsetDateTime"] = onset
    elif onset_text := m.val(iam, 12):
        res["onsetString"] = onset_text
    if reported := m.datetime(iam, 13):
        res["recordedDate"] = reported
    if who := entities.practitioner(m, m.comp(iam, 18)):
        res["recorder"] = who
    m.ctx.note_target = res
    m.add(res, key)


# -- Condition (DG1) -----------------------------------------------------------------------------------

def condition(m: Mapper, dg1: Segment) -> None:
    """DG1 → Condition (encounter-diagnosis), linked from Encounter.diagnosis."""
    m.use(dg1, 1, 2)
    code = cwe_concept(m.comp(dg1, 3), m.cfg)
    desc = m.val(dg1, 4)
    if code is None and desc:
        code = {"text": desc}
    elif code is not None and desc and "text" not in code:
        code["text"] = desc
    if code is None:
        m.skip(dg1, 3, "diagnosis code missing: Condition not created")
        return
    ident = ei_identifier(m.comp(dg1, 20), m.cfg, m.authority)
    pat_sys, pat_val = m.patient_parts()
    enc_sys, enc_val = m.encounter_parts()
    key = ident or m.unique_key("Condition", pat_sys, pat_val, enc_sys, enc_val,
                                m.comp(dg1, 3)(1) or desc, m.val(dg1, 6))
    res: JSON = {
        "resourceType": "Condition",
        "identifier": [ident] if ident else [],
        "category": [{"coding": [{"system": codes.CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
        "code": code,
        "subject": m.subject(),
    }
    kind = m.val(dg1, 6).upper()
    if kind in codes.DIAGNOSIS_VERIFICATION:
        res["verificationStatus"] = {"coding": [{"system": codes.CONDITION_VER_STATUS,
                                                 "code": codes.DIAGNOSIS_VERIFICATION[kind]}]}
    m.with_encounter(res)
    if onset := m.datetime(dg1, 5):
        res["onsetDateTime"] = onset
    if who := entities.practitioner(m, m.comp(dg1, 16)):
        res["asserter"] = who
    if recorded := m.datetime(dg1, 19):
        res["recordedDate"] = recorded
    m.ctx.note_target = res
    ref = m.add(res, key)
    if m.encounter_ref is not None:
        enc = m.resource(m.encounter_ref)
        diag: JSON = {"condition": ref}
        if kind:
            diag["use"] = table_concept(kind, "0052")
        rank = count(m.val(dg1, 15))
        if rank:
            diag["rank"] = rank
        if diag not in enc.setdefault("diagnosis", []):
            enc["diagnosis"].append(diag)
    else:
        m.use(dg1, 15)


# -- Procedure (PR1) -----------------------------------------------------------------------------------

def procedure(m: Mapper, pr1: Segment) -> None:
    """PR1 → Procedure keyed on PR1-19/20 (procedure identifier), else patient + code + time."""
    m.use(pr1, 1, 2)
    code = cwe_concept(m.comp(pr1, 3), m.cfg, "0088")
    desc = m.val(pr1, 4)
    if code is None and desc:
        code = {"text": desc}
    if code is None:
        m.skip(pr1, 3, "procedure code missing: Procedure not created")
        return
    ident = ei_identifier(m.comp(pr1, 19), m.cfg, m.authority)
    pat_sys, pat_val = m.patient_parts()
    when = m.datetime(pr1, 5)
    key = ident or m.unique_key("Procedure", pat_sys, pat_val, m.comp(pr1, 3)(1) or desc, m.val(pr1, 5))
    res: JSON = {"resourceType": "Procedure", "status": "completed", "code": code, "subject": m.subject()}
    if m.trigger in ("A11", "A27", "A38"):
        res["status"] = "entered-in-error"
    m.with_encounter(res)
    minutes = number(m.val(pr1, 7))
    if when:
        res["performedDateTime"] = when
    if isinstance(minutes, int) and when and minutes > 0:
        m.use(pr1, 7)
    if category := cwe_concept(m.comp(pr1, 6), m.cfg, "0230"):
        res["category"] = category
    performers: list[JSON] = []
    for n, role in ((8, "ANEST"), (11, "SURG"), (12, "PRF")):
        for ref in entities.practitioners(m, pr1, n):
            performers.append({"function": {"coding": [{"system": codes.V3_PARTICIPATION, "code": role}]},
                               "actor": ref})
    if performers:
        res["performer"] = performers
    reasons = [c for c in (cwe_concept(m.comp(pr1, 15), m.cfg),) if c]
    if reasons:
        res["reasonCode"] = reasons
    m.ctx.note_target = res
    m.ctx.parent_ref = m.add(res, key)
    m.ctx.parent = res


# -- other ADT segments ----------------------------------------------------------------------------------

def consent(m: Mapper, con: Segment) -> None:
    """CON → Consent (status from CON-10 / CON-11, category from CON-2)."""
    m.use(con, 1)
    ident = ei_identifier(m.comp(con, 3), m.cfg, m.authority)
    kind = cwe_concept(m.comp(con, 2), m.cfg, "0496")
    pat_sys, pat_val = m.patient_parts()
    key = ident or m.unique_key("Consent", pat_sys, pat_val, m.val(con, 1), concept_text(kind) if kind else "")
    status_code = m.comp(con, 24)(1).upper() or m.val(con, 10).upper()
    status = {"A": "active", "R": "rejected", "B": "proposed", "X": "rejected", "P": "proposed"}.get(
        status_code, "active")
    res: JSON = {"resourceType": "Consent", "status": status,
                 "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": "patient-privacy"}]},
                 "category": [kind or {"coding": [{"system": codes.CONSENT_CATEGORY, "code": "59284-0"}]}],
                 "patient": m.subject()}
    if when := m.datetime(con, 14) or m.datetime(con, 13):
        res["dateTime"] = when
    start, end = m.datetime(con, 15), m.datetime(con, 16)
    if start or end:
        res["provision"] = {"period": {k: v for k, v in (("start", start), ("end", end)) if v}}
    m.add(res, key)


def drg(m: Mapper, seg: Segment) -> None:
    """DRG → Encounter diagnosis-related group as an Encounter type coding."""
    m.use_all(seg)
    if m.encounter_ref is not None and (group := cwe_concept(m.comp(seg, 1), m.cfg, "0055")):
        m.resource(m.encounter_ref).setdefault("type", []).append(group)


def accident(m: Mapper, acc: Segment) -> None:
    """ACC → an Observation of the accident (when, what, where) about the patient."""
    code = cwe_concept(m.comp(acc, 2), m.cfg, "0050")
    if code is None:
        return
    pat_sys, pat_val = m.patient_parts()
    res: JSON = {"resourceType": "Observation", "status": "final",
                 "code": {"coding": [{"system": "http://loinc.org", "code": "11374-6",
                                      "display": "Injury incident description"}]},
                 "subject": m.subject(), "valueCodeableConcept": code}
    if when := m.datetime(acc, 1):
        res["effectiveDateTime"] = when
    m.with_encounter(res)
    m.add(res, m.unique_key("Observation", pat_sys, pat_val, "ACC", m.val(acc, 1)))


def disability(m: Mapper, db1: Segment) -> None:
    """DB1 → Patient disability as an Observation (disabled person indicator, period)."""
    m.use_all(db1)
    kind = m.val(db1, 2)
    if not kind:
        return
    pat_sys, pat_val = m.patient_parts()
    res: JSON = {"resourceType": "Observation", "status": "final",
                 "code": {"coding": [{"system": codes.v2_table("0334"), "code": code_text(kind)}],
                          "text": "Disability"},
                 "subject": m.subject()}
    if m.val(db1, 4):
        res["valueBoolean"] = m.val(db1, 4).upper() == "Y"
    start, end = m.date(db1, 5), m.date(db1, 6)
    if start or end:
        res["effectivePeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    m.add(res, m.unique_key("Observation", pat_sys, pat_val, "DB1", kind))


