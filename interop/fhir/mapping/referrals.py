"""Referrals (REF^I12-I15) and patient problems (PPR^PC1-PC3): RF1 → ServiceRequest (a referral),
PRD → Practitioner + PractitionerRole, PRB → Condition (problem-list item)."""

from __future__ import annotations

from interop.fhir import codes
from interop.fhir.datatypes import (
    JSON,
    cwe_concept,
    ei_identifier,
    identifier_system,
    xad_address,
    xpn_name,
    xtn_contact,
)
from interop.fhir.mapping.core import Mapper, concept_text
from interop.fhir.mapping.entities import location, xon_organization
from interop.message import Segment

_REFERRAL_STATUS = {"A": "active", "P": "draft", "R": "revoked", "E": "completed"}
_PROVIDER_ROLES = {"RP": "requester", "PP": "requester", "RT": "performer", "CP": "performer"}


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    walk(m, {"RF1": referral, "PRD": provider, "PRB": problem, "CTD": _skip_reported}, authoritative=False,
         finish=_link_providers)


def run_problems(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    walk(m, {"PRB": problem}, authoritative=False)


def _skip_reported(m: Mapper, seg: Segment) -> None:
    """Contact data (CTD) has no FHIR home here: left for the issues report."""


def referral(m: Mapper, rf1: Segment) -> None:
    """RF1 → ServiceRequest (category referral) keyed on the originating referral id (RF1-6)."""
    ident = ei_identifier(m.comp(rf1, 6), m.cfg, m.authority, "PLAC")
    externals = [i for i in (ei_identifier(x, m.cfg, m.authority) for x in m.reps(rf1, 11)) if i]
    idents = [i for i in (ident, *externals) if i]
    status_code = m.comp(rf1, 1)(1).upper()
    status = _REFERRAL_STATUS.get(status_code, "active")
    if m.trigger == "I14":
        status = "revoked"
    res: JSON = {"resourceType": "ServiceRequest", "identifier": idents, "status": status, "intent": "order",
                 "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005",
                                           "display": "Patient referral"}]}],
                 "subject": m.subject()}
    if kind := cwe_concept(m.comp(rf1, 3), m.cfg, "0281"):
        res["code"] = kind
    prio = m.comp(rf1, 2)(1).upper()
    if prio in codes.PRIORITY:
        res["priority"] = codes.PRIORITY[prio]
    if category := cwe_concept(m.comp(rf1, 5), m.cfg, "0284"):
        res["category"].append(category)
    start, end = m.datetime(rf1, 7), m.datetime(rf1, 8)
    if start or end:
        res["occurrencePeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if authored := m.datetime(rf1, 9):
        res["authoredOn"] = authored
    reasons = [c for c in (cwe_concept(x, m.cfg, "0336") for x in m.reps(rf1, 10)) if c]
    if reasons:
        res["reasonCode"] = reasons
    m.with_encounter(res)
    disposition = [c for c in (cwe_concept(x, m.cfg, "0282") for x in m.reps(rf1, 4)) if c]
    if disposition:
        res["orderDetail"] = disposition
    key = idents[0] if idents else m.message_key("ServiceRequest", rf1)
    ref = m.add(res, key)
    m.ctx.order, m.ctx.order_ref = m.resource(ref), ref
    m.ctx.extra["referral"] = m.ctx.order
    m.ctx.note_target = m.ctx.order


def provider(m: Mapper, prd: Segment) -> None:
    """PRD → Practitioner (identifiers PRD-7, name, address, telecom) and a PractitionerRole (PRD-1)."""
    m.use(prd, 1)
    names = [n for n in (xpn_name(x) for x in m.reps(prd, 2)) if n]
    ids = [c for c in m.reps(prd, 7) if c(1)]
    org = next(iter(r for r in (xon_organization(m, x) for x in m.reps(prd, 10)) if r), None)
    if not (names or ids):
        if org is None:
            m.issue(m.loc(prd), "provider without name or identifier: not mapped")
        return
    idents: list[JSON] = [{"system": identifier_system(c(3), "", "", m.cfg, m.authority) if c(3) else
                           m.cfg.id_prefix + "provider:" + (c(2) or m.authority), "value": c(1)} for c in ids]
    res: JSON = {"resourceType": "Practitioner", "identifier": idents, "active": True}
    if names:
        res["name"] = names
    addresses = [a for a in (xad_address(x) for x in m.reps(prd, 3)) if a]
    if addresses:
        res["address"] = addresses
    telecom = [c for c in (xtn_contact(x, "work") for x in m.reps(prd, 5)) if c]
    if telecom:
        res["telecom"] = telecom
    name = names[0] if names else {}
    key = idents[0] if idents else m.derived_key("Practitioner", m.authority, name.get("family", ""),
                                                   *name.get("given", []))
    who = m.add(res, key, update=False)
    roles = [c for c in (cwe_concept(x, m.cfg, "0286") for x in m.reps(prd, 1)) if c]
    role: JSON = {"resourceType": "PractitionerRole", "active": True, "practitioner": dict(who)}
    if roles:
        role["code"] = roles
    if org:
        role["organization"] = org
    if where := location(m, m.comp(prd, 4)):
        role["location"] = [where]
    period = {k: v for k, v in (("start", m.datetime(prd, 8)), ("end", m.datetime(prd, 9))) if v}
    if period:
        role["period"] = period
    role_ref = m.add(role, m.derived_key("PractitionerRole", who["reference"], *(concept_text(r) for r in roles)),
                     update=False)
    m.ctx.extra.setdefault("providers", []).append((roles[0] if roles else {}, role_ref))


def _link_providers(m: Mapper) -> None:
    """Referring provider → ServiceRequest.requester; referred-to / consulting → performer."""
    order = m.ctx.extra.get("referral")
    for role, ref in m.ctx.extra.get("providers", []):
        if order is None:
            return
        code = ((role.get("coding") or [{}])[0].get("code") or "").upper()
        slot = _PROVIDER_ROLES.get(code)
        if slot == "requester":
            order.setdefault("requester", dict(ref))
        elif slot == "performer":
            order.setdefault("performer", []).append(dict(ref))


def problem(m: Mapper, prb: Segment) -> None:
    """PRB → Condition (problem-list-item) keyed on the problem instance id (PRB-4)."""
    m.use(prb, 1, 2)
    code = m.required_concept(prb, 3, "problem id missing: Condition not created")
    if code is None:
        return
    ident = ei_identifier(m.comp(prb, 4), m.cfg, m.authority)
    pat_sys, pat_val = m.patient_parts()
    key = ident or m.unique_key("Condition", pat_sys, pat_val, "problem", m.comp(prb, 3)(1))
    res: JSON = {"resourceType": "Condition",
                 "category": [{"coding": [{"system": codes.CONDITION_CATEGORY, "code": "problem-list-item"}]}],
                 "code": code, "subject": m.subject()}
    action = m.val(prb, 1).upper()
    life = m.comp(prb, 14)(1).upper()
    if m.trigger == "PC3" or action == "DE":
        res["verificationStatus"] = {"coding": [{"system": codes.CONDITION_VER_STATUS,
                                                 "code": "entered-in-error"}]}
    else:
        clinical = "resolved" if m.val(prb, 9) else codes.PROBLEM_STATUS.get(life[:1], "active")
        res["clinicalStatus"] = {"coding": [{"system": codes.CONDITION_CLINICAL, "code": clinical}]}
        confirmation = m.comp(prb, 13)(1).upper()
        if confirmation in ("C", "P", "R"):
            res["verificationStatus"] = {"coding": [{"system": codes.CONDITION_VER_STATUS, "code": {
                "C": "confirmed", "P": "provisional", "R": "refuted"}[confirmation]}]}
    if recorded := m.datetime(prb, 7):
        res["recordedDate"] = recorded
    if onset := m.datetime(prb, 16):
        res["onsetDateTime"] = onset
    elif onset_text := m.val(prb, 17):
        res["onsetString"] = onset_text
    if abated := m.datetime(prb, 9):
        res["abatementDateTime"] = abated
    if severity := cwe_concept(m.comp(prb, 26), m.cfg, "0836"):
        res["severity"] = severity
    m.with_encounter(res)
    m.ctx.note_target = res
    m.add(res, key)
