"""Pharmacy (RDE^O11/O25, RDS^O13): ORC + RXO/RXE → MedicationRequest, RXD → MedicationDispense,
each naming a Medication (one per drug code); RXR route and site onto the dosage."""

from __future__ import annotations

from interop.fhir import codes
from interop.fhir.datatypes import JSON, Composite, count, cwe_concept, number
from interop.fhir.mapping import orders
from interop.fhir.mapping.core import Mapper, concept_text, simple
from interop.fhir.mapping.entities import location, practitioner, practitioners, xon_organization
from interop.fhir.mapping.results import on_obx_generic, quantity
from interop.message import Segment


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    walk(m, {"ORC": on_orc, "RXO": on_rxo, "RXE": on_rxe, "RXD": on_rxd, "RXR": on_rxr, "RXC": on_rxc,
             "RXA": on_rxa, "TQ1": on_tq1, "OBX": on_obx_generic}, authoritative=False)


def on_orc(m: Mapper, orc: Segment) -> None:
    m.ctx.orc, m.ctx.orc_used = orc, False
    m.ctx.order = m.ctx.order_ref = m.ctx.parent = m.ctx.parent_ref = None


def on_rxo(m: Mapper, rxo: Segment) -> None:
    """RXO (the order as placed) matters only when no RXE (the order as encoded) follows it."""
    if m.msg.all("RXE"):
        m.use_all(rxo)
        return
    orc = orders.take_orc(m, rxo)
    med = m.required_concept(rxo, 1, "requested give code missing: no MedicationRequest")
    if med is None:
        return
    res = _request(m, orc, rxo, med)
    dose = number(m.val(rxo, 2))
    dosage: JSON = {}
    if dose is not None:
        dosage["doseAndRate"] = [{"doseQuantity": quantity(m, dose, m.comp(rxo, 4))}]
    res["dosageInstruction"] = [dosage]
    if (qty := number(m.val(rxo, 11))) is not None:
        res["dispenseRequest"] = {"quantity": simple(quantity(m, qty, m.comp(rxo, 12)))}
    _add_request(m, orc, rxo, res)


def on_rxe(m: Mapper, rxe: Segment) -> None:
    orc = orders.take_orc(m, rxe)
    medication_request(m, orc, rxe)


def medication(m: Mapper, code: JSON, form: JSON | None = None) -> JSON:
    """A drug code → Medication (one per code, conditional create)."""
    coding = (code.get("coding") or [{}])[0]
    key = m.derived_key("Medication", str(coding.get("system", "")), str(coding.get("code") or code.get("text", "")))
    res: JSON = {"resourceType": "Medication", "code": code}
    if form:
        res["form"] = form
    ref = m.add(res, key, update=False)
    ref["display"] = concept_text(code)
    return ref


def _request(m: Mapper, orc: Segment | None, seg: Segment, med: JSON) -> JSON:
    res: JSON = {"resourceType": "MedicationRequest", "status": orders.order_status(m, orc, codes.MEDREQ_STATUS)
                 if orc is not None else "active", "intent": "order",
                 "medicationReference": medication(m, med), "subject": m.subject()}
    m.with_encounter(res)
    if orc is not None:
        if authored := m.datetime(orc, 9):
            res["authoredOn"] = authored
        if who := practitioner(m, m.comp(orc, 12)):
            res["requester"] = who
        for xon in m.reps(orc, 21):
            if (org := xon_organization(m, xon)) and "requester" not in res:
                res["requester"] = org
        practitioners(m, orc, 10)
        practitioners(m, orc, 11)
        location(m, m.comp(orc, 13))
        orders.tq_priority(m, m.comp(orc, 7), res, m.loc(orc, 7))
    return res


def _add_request(m: Mapper, orc: Segment | None, seg: Segment, res: JSON) -> None:
    idents = orders.order_identifiers(m, orc, None)
    res["identifier"] = idents
    key = idents[0] if idents else m.message_key("MedicationRequest", seg)
    ref = m.add(res, key)
    m.ctx.order, m.ctx.order_ref = m.resource(ref), ref
    m.ctx.note_target = m.ctx.order


def medication_request(m: Mapper, orc: Segment | None, rxe: Segment) -> None:
    """ORC + RXE → MedicationRequest keyed on the placer order number."""
    med = m.required_concept(rxe, 2, "give code missing: no MedicationRequest", severity="error")
    if med is None:
        return
    res = _request(m, orc, rxe, med)
    dosage: JSON = {}
    tq = m.comp(rxe, 1)
    if tq(2):
        dosage["timing"] = {"code": {"text": tq(2)}}
    if tq(4) and (start := m.datetime(rxe, 1, tq(4))):
        dosage.setdefault("timing", {})["repeat"] = {"boundsPeriod": {"start": start}}
    if "priority" not in res:
        orders.tq_priority(m, tq, res, m.loc(rxe, 1))
    dose = number(m.val(rxe, 3))
    unit = m.comp(rxe, 5)
    if dose is not None:
        dosage["doseAndRate"] = [{"doseQuantity": quantity(m, dose, unit)}]
    m.use(rxe, 4)
    if (high := number(m.val(rxe, 4))) is not None and dose is not None and high != dose:
        dosage["doseAndRate"] = [{"doseRange": {"low": simple(quantity(m, dose, unit)),
                                                "high": simple(quantity(m, high, unit))}}]
    instructions = [c.get("text") or (c.get("coding") or [{}])[0].get("display", "")
                    for c in (cwe_concept(x, m.cfg) for x in m.reps(rxe, 7)) if c]
    instructions += [t for t in m.texts(rxe, 21) if t]
    if any(instructions):
        dosage["text"] = "; ".join(t for t in instructions if t)
    res["dosageInstruction"] = [dosage]
    dispense: JSON = {}
    if (qty := number(m.val(rxe, 10))) is not None:
        dispense["quantity"] = simple(quantity(m, qty, m.comp(rxe, 11)))
    else:
        m.use(rxe, 11)
    if (refills := count(m.val(rxe, 12))) is not None:
        dispense["numberOfRepeatsAllowed"] = refills
    if dispense:
        res["dispenseRequest"] = dispense
    if form := cwe_concept(m.comp(rxe, 6), m.cfg):
        m.resource(res["medicationReference"])["form"] = form
    practitioners(m, rxe, 13)  # ordering provider's DEA number: the Practitioner is ORC-12
    _add_request(m, orc, rxe, res)


def on_rxd(m: Mapper, rxd: Segment) -> None:
    """RXD → MedicationDispense (keyed on RXD-7 prescription number + RXD-1 dispense counter)."""
    m.use(rxd, 1)
    orc = orders.take_orc(m, rxd)
    med = m.required_concept(rxd, 2, "dispense/give code missing: no MedicationDispense")
    if med is None:
        return
    res: JSON = {"resourceType": "MedicationDispense", "status": "completed",
                 "medicationReference": medication(m, med, cwe_concept(m.comp(rxd, 6), m.cfg)),
                 "subject": m.subject()}
    m.with_encounter(res, "context")
    if m.ctx.order_ref is not None and m.resource(m.ctx.order_ref)["resourceType"] == "MedicationRequest":
        res["authorizingPrescription"] = [dict(m.ctx.order_ref)]
    if when := m.datetime(rxd, 3):
        res["whenHandedOver"] = when
    if (qty := number(m.val(rxd, 4))) is not None:
        res["quantity"] = simple(quantity(m, qty, m.comp(rxd, 5)))
    if (days := number(m.val(rxd, 12))) is not None:
        res["daysSupply"] = {"value": days, "unit": "d", "system": codes.UCUM, "code": "d"}
    performers = [{"actor": r} for r in practitioners(m, rxd, 10)]
    if performers:
        res["performer"] = performers
    dosage: JSON = {}
    instructions = [c.get("text") or (c.get("coding") or [{}])[0].get("display", "")
                    for c in (cwe_concept(x, m.cfg) for x in m.reps(rxd, 15)) if c]
    if any(instructions):
        dosage["text"] = "; ".join(t for t in instructions if t)
    res["dosageInstruction"] = [dosage]
    if where := location(m, m.comp(rxd, 13)):
        res["destination"] = where
    prescription = m.val(rxd, 7)
    pat_sys, pat_val = m.patient_parts()
    idents = orders.order_identifiers(m, orc, None) if orc is not None else []
    scope = idents[0] if idents else {"system": pat_sys, "value": pat_val}
    key = (m.derived_key("MedicationDispense", scope["system"], scope["value"], prescription, m.val(rxd, 1))
           if prescription or idents else m.message_key("MedicationDispense", rxd))
    ref = m.add(res, key, update=True)
    m.ctx.parent, m.ctx.parent_ref = m.resource(ref), ref
    m.ctx.note_target = m.ctx.parent


def on_rxa(m: Mapper, rxa: Segment) -> None:
    from interop.fhir.mapping.immunization import on_rxa as immunization_rxa

    immunization_rxa(m, rxa)


def on_rxr(m: Mapper, rxr: Segment) -> None:
    """RXR route (1) and site (2) onto the current dosage."""
    target: JSON | None = None
    parent, order = m.ctx.parent, m.ctx.order
    if parent is not None and parent["resourceType"] == "Immunization":
        target = parent
    elif parent is not None and parent["resourceType"] == "MedicationDispense":
        target = parent.setdefault("dosageInstruction", [{}])[0]
    elif order is not None and order["resourceType"] == "MedicationRequest":
        target = order.setdefault("dosageInstruction", [{}])[0]
    route(m, rxr, target)


def route(m: Mapper, rxr: Segment, target: JSON | None) -> None:
    m.use(rxr, 1, 2)
    if target is None:
        m.use_all(rxr)
        m.issue(m.loc(rxr), "route without an order or administration to apply it to")
        return
    if rt := cwe_concept(m.comp(rxr, 1), m.cfg, "0162"):
        target["route"] = rt
    if site := cwe_concept(m.comp(rxr, 2), m.cfg, "0163"):
        target["site"] = site
    if method := cwe_concept(m.comp(rxr, 4), m.cfg, "0165"):
        if "vaccineCode" not in target:
            target["method"] = method
    m.use(rxr, 3, 5, 6)


def on_rxc(m: Mapper, rxc: Segment) -> None:
    """RXC (compound components): ingredients of the order's Medication."""
    m.use_all(rxc)
    if m.ctx.order is None or "medicationReference" not in m.ctx.order:
        return
    if (item := cwe_concept(m.comp(rxc, 2), m.cfg)) is None:
        return
    ingredient: JSON = {"itemCodeableConcept": item}
    if (amount := number(m.val(rxc, 3))) is not None:
        unit: Composite = m.comp(rxc, 4)
        ingredient["strength"] = {"numerator": simple(quantity(m, amount, unit)), "denominator": {"value": 1}}
    med = m.resource(m.ctx.order["medicationReference"])
    if ingredient not in med.setdefault("ingredient", []):
        med["ingredient"].append(ingredient)


def on_tq1(m: Mapper, tq1: Segment) -> None:
    if m.ctx.order is not None:
        orders.timing(m, tq1, m.ctx.order)
    else:
        orders.on_tq1(m, tq1)
