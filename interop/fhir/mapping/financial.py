"""Financial (BAR^P01/P02/P12, DFT^P03/P11, and the same segments in ADT): PID-18 → Account,
IN1/IN2/IN3 → Coverage (+ payer Organization, subscriber RelatedPerson), GT1 → RelatedPerson + Account
guarantor, FT1 → ChargeItem."""

from __future__ import annotations

from urllib.parse import quote

from interop.fhir import codes
from interop.fhir.datatypes import (
    JSON,
    Composite,
    count,
    cwe_concept,
    cx_identifier,
    display_name,
    ei_identifier,
    identifier_system,
    number,
    xad_address,
    xpn_name,
    xtn_contact,
)
from interop.fhir.mapping import entities
from interop.fhir.mapping.core import Mapper
from interop.message import Segment


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    walk(m, {}, authoritative=False)


def account(m: Mapper, pid: Segment, cx: Composite) -> JSON | None:
    """PID-18 (patient account number) → Account of the patient."""
    m.use(pid, 18)
    ident = cx_identifier(cx, m.cfg, m.authority)
    if ident is None:
        return None
    if "type" not in ident:
        ident["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": "AN"}]}
    entities.authority_organization(m, cx, 4)
    res: JSON = {"resourceType": "Account", "status": "active", "subject": [m.subject()]}
    ref = m.add(res, {"system": ident["system"], "value": ident["value"]}, update=False)
    stored = m.resource(ref)
    if ident not in stored["identifier"]:
        stored["identifier"].insert(0, ident)
        stored["identifier"] = [i for i in stored["identifier"]
                                if i is ident or (i["system"], i["value"]) != (ident["system"], ident["value"])]
    m.ctx.extra["account_ref"] = ref
    return ref


def coverage(m: Mapper, in1: Segment) -> None:
    """IN1 → Coverage keyed on the policy number (IN1-36) under the insurer's authority."""
    m.use(in1, 1)
    insurer = m.comp(in1, 3)
    insurer_name = m.comp(in1, 4)(1)
    policy = m.val(in1, 36)
    pat_sys, pat_val = m.patient_parts()
    ident: JSON | None = None
    if policy:
        authority = insurer(1) or insurer_name or m.authority
        ident = {"system": identifier_system(insurer(4, 1), insurer(4, 2), insurer(4, 3), m.cfg, authority)
                 if insurer(4) else m.cfg.id_prefix + quote(authority, safe=""), "value": policy}
    plan = m.comp(in1, 2)
    key = ident or m.unique_key("Coverage", pat_sys, pat_val, insurer(1) or insurer_name, plan(1))
    payor = payer(m, in1, insurer)
    res: JSON = {"resourceType": "Coverage", "identifier": [ident] if ident else [], "status": "active",
                 "beneficiary": m.subject(), "payor": [payor]}
    if plan_type := cwe_concept(m.comp(in1, 15), m.cfg, "0086"):
        res["type"] = plan_type
    classes: list[JSON] = []
    if plan(1):
        classes.append({"type": {"coding": [{"system": codes.COVERAGE_CLASS, "code": "plan"}]},
                        "value": plan(1), **({"name": plan(2)} if plan(2) else {})})
    group, group_name = m.val(in1, 8), m.val(in1, 9)
    if group:
        classes.append({"type": {"coding": [{"system": codes.COVERAGE_CLASS, "code": "group"}]},
                        "value": group, **({"name": group_name} if group_name else {})})
    elif group_name:
        m.issue(m.loc(in1, 9), "group name without group number (IN1-8): not mapped")
    if classes:
        res["class"] = classes
    period = {k: v for k, v in (("start", m.date(in1, 12)), ("end", m.date(in1, 13))) if v}
    if period:
        res["period"] = period
    rel = m.comp(in1, 17)(1).upper()
    if rel in codes.SUBSCRIBER:
        res["relationship"] = {"coding": [{"system": codes.SUBSCRIBER_RELATIONSHIP,
                                           "code": codes.SUBSCRIBER[rel]}]}
    elif rel:
        m.issue(m.loc(in1, 17), f"relationship {rel!r} has no subscriber-relationship equivalent")
    if rel == "SEL":
        res["subscriber"] = m.subject()
        m.use(in1, 16, 18, 19)
    elif subscriber := insured_person(m, in1, rel):
        res["subscriber"] = subscriber
    if sub_id := m.comp(in1, 49)(1):
        res["subscriberId"] = sub_id
    order = count(m.val(in1, 22))
    if order:
        res["order"] = order
    m.ctx.extra["coverage"] = res
    m.add(res, key)


def payer(m: Mapper, in1: Segment, insurer: Composite) -> JSON:
    """IN1-3 (insurance company id) / IN1-4 (name) / IN1-5 (address) / IN1-7 (phone) → Organization."""
    name = m.comp(in1, 4)(1)
    if insurer(1):
        key = {"system": identifier_system(insurer(4, 1), insurer(4, 2), insurer(4, 3), m.cfg, m.authority),
               "value": insurer(1)}
    elif name:
        key = m.derived_key("Organization", m.authority, name)
    else:
        return {"display": "unknown payor"}
    res: JSON = {"resourceType": "Organization", "active": True, "name": name or insurer(1),
                 "type": [{"coding": [{"system": codes.ORG_TYPE, "code": "ins", "display": "Insurance Company"}]}]}
    addresses = [a for a in (xad_address(x) for x in m.reps(in1, 5)) if a]
    if addresses:
        res["address"] = addresses
    telecom = [c for c in (xtn_contact(x, "work") for x in m.reps(in1, 7)) if c]
    if telecom:
        res["telecom"] = telecom
    ref = m.add(res, key, update=False)
    ref["display"] = res["name"]
    return ref


def insured_person(m: Mapper, in1: Segment, rel: str) -> JSON | None:
    """IN1-16 (insured's name) when the insured is not the patient → RelatedPerson."""
    names = [n for n in (xpn_name(x) for x in m.reps(in1, 16)) if n]
    if not names:
        return None
    pat_sys, pat_val = m.patient_parts()
    res: JSON = {"resourceType": "RelatedPerson", "active": True, "patient": m.subject(), "name": names}
    if relationship := entities.relationship_concepts(m, m.comp(in1, 17)):
        res["relationship"] = relationship
    addresses = [a for a in (xad_address(x) for x in m.reps(in1, 19)) if a]
    if addresses:
        res["address"] = addresses
    if birth := m.date(in1, 18):
        res["birthDate"] = birth
    sex = m.val(in1, 43).upper()
    if sex in codes.GENDER:
        res["gender"] = codes.GENDER[sex]
    key = m.derived_key("RelatedPerson", pat_sys, pat_val, rel, display_name(names[0]))
    ref = m.add(res, key)
    ref["display"] = display_name(names[0])
    return ref


def insurance_extras(m: Mapper, in2: Segment) -> None:
    """IN2 → Medicare (IN2-6) / Medicaid (IN2-8) / military (IN2-10) numbers as Patient identifiers."""
    m.use(in2, 1)
    if m.patient_ref is None:
        m.use_all(in2)
        return
    patient = m.resource(m.patient_ref)
    for n, system, code in ((6, codes.MEDICARE, "MC"), (8, codes.MEDICAID, "MA"),
                            (10, m.cfg.id_prefix + "military", "MI")):
        value = m.val(in2, n)
        if value:
            ident = {"system": system, "value": value,
                     "type": {"coding": [{"system": codes.v2_table("0203"), "code": code}]}}
            if ident not in patient["identifier"]:
                patient["identifier"].append(ident)
    for cx in m.reps(in2, 61) + m.reps(in2, 2):
        if (extra := cx_identifier(cx, m.cfg, m.authority)) and extra not in patient["identifier"]:
            patient["identifier"].append(extra)


def certification(m: Mapper, in3: Segment) -> None:
    """IN3 (certification) has no FHIR home in this mapping: reported, not dropped silently."""
    m.use(in3, 1)


def guarantor(m: Mapper, gt1: Segment) -> None:
    """GT1 → RelatedPerson (or the patient when self) as the guarantor of the patient's Account."""
    m.use(gt1, 1)
    rel = m.comp(gt1, 11)
    names = [n for n in (xpn_name(x) for x in m.reps(gt1, 3)) if n]
    party: JSON | None = None
    if rel(1).upper() == "SEL":
        party = m.subject()
        m.use(gt1, 2, 3, 5, 6, 7, 8, 9, 12)
    elif names:
        idents = [i for i in (cx_identifier(c, m.cfg, m.authority) for c in m.reps(gt1, 2)) if i]
        pat_sys, pat_val = m.patient_parts()
        res: JSON = {"resourceType": "RelatedPerson", "identifier": idents, "active": True,
                     "patient": m.subject(), "name": names}
        if relationship := entities.relationship_concepts(m, rel):
            res["relationship"] = relationship
        addresses = [a for a in (xad_address(x) for x in m.reps(gt1, 5)) if a]
        if addresses:
            res["address"] = addresses
        telecom = [c for c in (xtn_contact(x, "home") for x in m.reps(gt1, 6)) if c]
        telecom += [c for c in (xtn_contact(x, "work") for x in m.reps(gt1, 7)) if c]
        if telecom:
            res["telecom"] = telecom
        if birth := m.date(gt1, 8):
            res["birthDate"] = birth
        sex = m.val(gt1, 9).upper()
        if sex in codes.GENDER:
            res["gender"] = codes.GENDER[sex]
        key = idents[0] if idents else m.derived_key("RelatedPerson", pat_sys, pat_val, "GT1",
                                                     display_name(names[0]))
        party = m.add(res, key)
    org = next(iter(r for r in (entities.xon_organization(m, x) for x in m.reps(gt1, 21)) if r), None)
    party = party or org
    if party is None:
        return
    account_ref = m.ctx.extra.get("account_ref")
    if account_ref is None:
        pat_sys, pat_val = m.patient_parts()
        res_acc: JSON = {"resourceType": "Account", "status": "active", "subject": [m.subject()]}
        account_ref = m.add(res_acc, m.derived_key("Account", pat_sys, pat_val, "guarantor"), update=False)
        m.ctx.extra["account_ref"] = account_ref
    acct = m.resource(account_ref)
    entry: JSON = {"party": dict(party)}
    if (period := {k: v for k, v in (("start", m.date(gt1, 13)), ("end", m.date(gt1, 14))) if v}):
        entry["period"] = period
    if entry not in acct.setdefault("guarantor", []):
        acct["guarantor"].append(entry)


def charge_item(m: Mapper, ft1: Segment) -> None:
    """FT1 → ChargeItem keyed on the transaction id (FT1-2), else patient + code + date."""
    m.use(ft1, 1, 3)
    code = cwe_concept(m.comp(ft1, 7), m.cfg, "0132") or cwe_concept(m.comp(ft1, 25), m.cfg)
    if code is None:
        m.skip(ft1, 7, "transaction code missing: ChargeItem not created")
        return
    if (desc := m.val(ft1, 8)) and "text" not in code:
        code["text"] = desc
    pat_sys, pat_val = m.patient_parts()
    tx = m.val(ft1, 2)
    key = ({"system": m.cfg.id_prefix + quote(m.authority, safe="") + ":ft1", "value": tx} if tx else
           m.unique_key("ChargeItem", pat_sys, pat_val, m.comp(ft1, 7)(1), m.val(ft1, 4)))
    kind = m.comp(ft1, 6)(1).upper()
    status = {"CR": "credited", "CD": "credited", "PY": "billed", "AJ": "billable"}.get(kind, "billable")
    res: JSON = {"resourceType": "ChargeItem", "status": status, "code": code, "subject": m.subject()}
    m.with_encounter(res, "context")
    dr = m.comp(ft1, 4)
    start = m.datetime(ft1, 4, dr(1)) if dr(1) else None
    end = m.datetime(ft1, 4, dr(2)) if dr(2) else None
    if start and end and end != start:
        res["occurrencePeriod"] = {"start": start, "end": end}
    elif start:
        res["occurrenceDateTime"] = start
    if posted := m.datetime(ft1, 5):
        res["enteredDate"] = posted
    qty = number(m.val(ft1, 10))
    if qty is not None:
        res["quantity"] = {"value": qty}
    amount = m.comp(ft1, 11)
    if (value := number(amount(1, 1))) is not None:
        res["priceOverride"] = {"value": value, **({"currency": amount(1, 2)} if amount(1, 2) else {})}
    performers = [{"actor": r} for r in entities.practitioners(m, ft1, 20)]
    performers += [{"function": {"text": "ordered by"}, "actor": r} for r in entities.practitioners(m, ft1, 21)]
    if performers:
        res["performer"] = performers
    if enterer := entities.practitioner(m, m.comp(ft1, 24)):
        res["enterer"] = enterer
    entities.location(m, m.comp(ft1, 16))  # where the charge arose: a Location, no ChargeItem element
    if dept := m.comp(ft1, 13)(1):
        res["costCenter"] = entities.named_organization(m, dept)
    reasons = [c for c in (cwe_concept(x, m.cfg) for x in m.reps(ft1, 19)) if c]
    if reasons:
        res["reason"] = reasons
    if (order := ei_identifier(m.comp(ft1, 23), m.cfg, m.authority, "FILL")) is not None:
        res["note"] = [{"text": f"filler order {order['value']}"}]
    if account_ref := m.ctx.extra.get("account_ref"):
        res["account"] = [dict(account_ref)]
    m.add(res, key)
