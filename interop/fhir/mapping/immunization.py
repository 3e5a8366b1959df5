"""Immunization (VXU^V04): ORC + RXA → Immunization, RXR route/site, OBX (eligibility, VIS, ...) →
Observations ``partOf`` the Immunization."""

from __future__ import annotations

from interop.fhir import codes
from interop.fhir.datatypes import JSON, cwe_concept, number, table_concept
from interop.fhir.mapping import orders, pharmacy
from interop.fhir.mapping.core import Mapper
from interop.fhir.mapping.entities import hd_organization, location, practitioners
from interop.fhir.mapping.results import on_obx_generic, quantity
from interop.message import Segment


class _Skip(Exception):
    """An RXA that cannot be an Immunization: reported, the rest of the message still maps."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(reason)
        self.where, self.reason = where, reason


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    walk(m, {"ORC": pharmacy.on_orc, "RXA": on_rxa, "RXR": pharmacy.on_rxr, "OBX": on_obx_generic,
             "TQ1": orders.on_tq1}, authoritative=False)


def on_rxa(m: Mapper, rxa: Segment) -> None:
    orc = orders.take_orc(m, rxa)
    try:
        res, ref = immunization(m, orc, rxa)
    except _Skip as skip:
        m.issue(skip.where, skip.reason, "error")
        m.use_all(rxa)
        return
    m.ctx.parent, m.ctx.parent_ref, m.ctx.note_target = res, ref, res
    m.ctx.order = m.ctx.order_ref = None


def immunization(m: Mapper, orc: Segment | None, rxa: Segment) -> tuple[JSON, JSON]:
    """RXA → Immunization keyed on the filler order number (ORC-3)."""
    m.use(rxa, 1, 2)
    idents = orders.order_identifiers(m, orc, None)
    if orc is not None:
        practitioners(m, orc, 10)
        practitioners(m, orc, 12)
        m.use_all(orc)
    vaccine = cwe_concept(m.comp(rxa, 5), m.cfg, "0292")
    if vaccine is None:
        raise _Skip(m.loc(rxa, 5), "administered code missing: no Immunization")
    occurrence = m.datetime(rxa, 3)
    if occurrence is None:
        raise _Skip(m.loc(rxa, 3), "administration date missing or invalid: no Immunization")
    filler = next((i for i in idents if i["type"]["coding"][0]["code"] == "FILL"), None)
    pat_sys, pat_val = m.patient_parts()
    key = filler or (idents[0] if idents else m.unique_key(
        "Immunization", pat_sys, pat_val, m.comp(rxa, 5)(1), occurrence))
    completion = m.val(rxa, 20).upper()
    status = codes.IMMUNIZATION_STATUS.get(completion, "completed")
    if completion and completion not in codes.IMMUNIZATION_STATUS:
        m.issue(m.loc(rxa, 20), f"completion status {completion!r} unknown: 'completed' assumed")
    if m.val(rxa, 21).upper() == "D":
        status = "entered-in-error"
    res: JSON = {"resourceType": "Immunization", "identifier": idents, "status": status,
                 "vaccineCode": vaccine, "patient": m.subject(), "occurrenceDateTime": occurrence}
    m.with_encounter(res)
    if completion == "PA":
        res["isSubpotent"] = True
    if reason := cwe_concept(m.comp(rxa, 18), m.cfg):
        res["statusReason"] = reason
    dose = number(m.val(rxa, 6))
    if dose is not None and dose != 999:  # 999 is the CDC "amount unknown" convention
        res["doseQuantity"] = quantity(m, dose, m.comp(rxa, 7))
    else:
        m.use(rxa, 7)
    source = m.comp(rxa, 9)
    if source(1):
        res["primarySource"] = source(1) == "00"
        if source(1) != "00" and (origin := cwe_concept(source, m.cfg)):
            res["reportOrigin"] = origin
    performers = [{"function": table_concept("AP", "0443"), "actor": r} for r in practitioners(m, rxa, 10)]
    if performers:
        res["performer"] = performers
    lots = [lot for lot in (c(1) for c in m.reps(rxa, 15)) if lot]
    if lots:
        res["lotNumber"] = lots[0]
        if len(lots) > 1:
            m.issue(m.loc(rxa, 15), "more than one lot number: only the first is kept")
    if expiry := m.date(rxa, 16, m.comp(rxa, 16)(1) or ""):
        res["expirationDate"] = expiry
    if manufacturer := _manufacturer(m, rxa):
        res["manufacturer"] = manufacturer
    pl = m.comp(rxa, 11)
    if pl(4, 1) and not pl(1):
        if org := hd_organization(m, pl(4, 1), pl(4, 2), pl(4, 3)):
            performers.append({"function": table_concept("OP", "0443"), "actor": org})
            res["performer"] = performers
    elif where := location(m, pl):
        res["location"] = where
    reasons = [c for c in (cwe_concept(x, m.cfg) for x in m.reps(rxa, 19)) if c]
    if reasons:
        res["reasonCode"] = reasons
    ref = m.add(res, key)
    return m.resource(ref), ref


def _manufacturer(m: Mapper, rxa: Segment) -> JSON | None:
    """RXA-17 (MVX code ^ name) → Organization keyed on the MVX code."""
    mvx = m.comp(rxa, 17)
    if not (mvx(1) or mvx(2)):
        return None
    name = mvx(2) or mvx(1)
    res: JSON = {"resourceType": "Organization", "active": True, "name": name}
    key = ({"system": codes.coding_system(mvx(3) or "MVX", m.cfg.code_prefix), "value": mvx(1)} if mvx(1)
           else m.derived_key("Organization", m.authority, name))
    ref = m.add(res, key, update=False)
    ref["display"] = name
    return ref
