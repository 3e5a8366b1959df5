"""Results (ORU^R01, OUL^R22-R24): OBR → DiagnosticReport (+ ServiceRequest), OBX → Observation.

``observation`` is used by every family: OBX in ADT, VXU, SIU, MDM, orders and pharmacy messages
becomes an Observation too, ``basedOn`` the current order and ``partOf`` the current event.
"""

from __future__ import annotations

import re

from interop.fhir import codes
from interop.fhir.datatypes import JSON, Composite, code_text, cwe_concept, ei_identifier, number
from interop.fhir.mapping import orders
from interop.fhir.mapping.core import Mapper, simple
from interop.fhir.mapping.entities import practitioners, xon_organization
from interop.message import Segment


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    walk(m, {"ORC": orders.on_orc, "OBR": on_obr, "OBX": on_obx, "SPM": orders.on_spm, "TQ1": orders.on_tq1},
         authoritative=False)
    settle_report_status(m)


def on_obr(m: Mapper, obr: Segment) -> None:
    """OBR (with its ORC) → ServiceRequest and the DiagnosticReport based on it."""
    orc = orders.take_orc(m, obr)
    request_ref = orders.service_request(m, orc, obr, result=True)
    report = diagnostic_report(m, obr, orc, request_ref)
    m.ctx.report = report
    m.ctx.note_target = None


def on_obx(m: Mapper, obx: Segment) -> None:
    if m.ctx.report is None:
        on_obx_generic(m, obx)
    else:
        m.ctx.note_target = observation(m, obx, report=m.ctx.report)


def on_obx_generic(m: Mapper, obx: Segment) -> None:
    """An OBX outside a result report: an Observation supporting the current order / event, or the patient's."""
    res = observation(m, obx)
    m.ctx.note_target = res
    if m.ctx.order is not None and m.ctx.order.get("resourceType") in ("ServiceRequest", "MedicationRequest"):
        ref = {"reference": m.full_url("Observation", res["identifier"][-1])}
        info = m.ctx.order.setdefault("supportingInformation" if m.ctx.order["resourceType"] == "MedicationRequest"
                                      else "supportingInfo", [])
        if ref not in info:
            info.append(ref)


def settle_report_status(m: Mapper) -> None:
    for entry in m.entries.values():
        res = entry["resource"]
        if res["resourceType"] == "DiagnosticReport" and res["status"] == "unknown" and res.get("result"):
            statuses = {m.resource(r)["status"] for r in res["result"]}
            if len(statuses) == 1 and "unknown" not in statuses:
                res["status"] = statuses.pop()


def diagnostic_report(m: Mapper, obr: Segment, orc: Segment | None, request_ref: JSON | None) -> JSON:
    """OBR → DiagnosticReport keyed on the filler order number (else placer, else this message)."""
    m.use(obr, 1)
    ident = None
    for seg, n, kind in ((obr, 3, "FILL"), (orc, 3, "FILL"), (obr, 2, "PLAC"), (orc, 2, "PLAC")):
        if seg is not None and ident is None:
            ident = ei_identifier(m.comp(seg, n), m.cfg, m.authority, kind)
    m.use(obr, 2, 3)
    key = ident or m.message_key("DiagnosticReport", obr)
    code = cwe_concept(m.comp(obr, 4), m.cfg)
    if code is None:
        m.issue(m.loc(obr, 4), "universal service identifier missing")
        code = {"text": "unknown"}
    status_code = m.val(obr, 25).upper()
    status = codes.REPORT_STATUS.get(status_code, "unknown")
    if status == "unknown":
        m.issue(m.loc(obr, 25), f"result status {status_code!r} unknown: taken from the OBX-11 "
                "statuses when they agree, else 'unknown'")
    res: JSON = {"resourceType": "DiagnosticReport", "identifier": [ident] if ident else [],
                 "status": status, "code": code, "subject": m.subject()}
    if section := cwe_concept(m.comp(obr, 24), m.cfg, "0074"):
        res["category"] = [section]
    m.with_encounter(res)
    if effective := m.datetime(obr, 7):
        end = m.datetime(obr, 8)
        if end and end != effective:
            res["effectivePeriod"] = {"start": effective, "end": end}
        else:
            res["effectiveDateTime"] = effective
    if issued := m.instant(obr, 22):
        res["issued"] = issued
    interpreters = practitioners(m, obr, 32)
    if interpreters:
        res["resultsInterpreter"] = interpreters
    performers = practitioners(m, obr, 34) + practitioners(m, obr, 35)
    if performers:
        res["performer"] = performers
    if request_ref is not None:
        res["basedOn"] = [dict(request_ref)]
    if m.ctx.specimen_ref is not None:
        res["specimen"] = [dict(m.ctx.specimen_ref)]
    res["result"] = []
    m.add(res, key)
    return res


def observation(m: Mapper, obx: Segment, *, report: JSON | None = None) -> JSON:
    """OBX → Observation, value typed by OBX-2; under a report, the report's result."""
    m.use(obx, 1, 4)
    code = cwe_concept(m.comp(obx, 3), m.cfg)
    if code is None:
        m.issue(m.loc(obx, 3), "observation identifier missing")
        code = {"text": "unknown"}
    ident = ei_identifier(m.comp(obx, 21), m.cfg, m.authority)
    code_id = m.comp(obx, 3)
    scope: tuple[str, ...]
    if report is not None:
        parent = report["identifier"][-1]
        scope = (parent["system"], parent["value"])
    else:
        context = m.ctx.order or m.ctx.parent
        if context is not None and context.get("identifier"):
            scope = (context["identifier"][-1]["system"], context["identifier"][-1]["value"])
        else:
            scope = (*m.patient_parts(), *m.encounter_parts(), m.val(obx, 14))
    key = ident or m.unique_key("Observation", *scope, code_id(3), code_id(1) or code_id(2), m.val(obx, 4))
    status_code = m.val(obx, 11).upper()
    status = codes.OBSERVATION_STATUS.get(status_code, "unknown" if report is not None else "final")
    if status == "unknown" or (status_code and status_code not in codes.OBSERVATION_STATUS):
        m.issue(m.loc(obx, 11), f"result status {status_code!r} unknown: status {status!r}")
    res: JSON = {"resourceType": "Observation", "identifier": [ident] if ident else [], "status": status,
                 "code": code, "subject": m.subject()}
    if report is not None and "category" in report:
        res["category"] = report["category"]
    m.with_encounter(res)
    effective = m.datetime(obx, 14) or (report or {}).get("effectiveDateTime")
    if effective:
        res["effectiveDateTime"] = effective
    if issued := m.instant(obx, 19):
        res["issued"] = issued
    observation_value(m, obx, res)
    unit = m.comp(obx, 6)
    ranges = reference_range(m, obx, unit)
    if ranges:
        res["referenceRange"] = [ranges]
    interpretations = [interpretation(m, c) for c in m.reps(obx, 8)]
    if interpretations:
        res["interpretation"] = interpretations
    if method := cwe_concept(m.comp(obx, 17), m.cfg):
        res["method"] = method
    performers = practitioners(m, obx, 16) + practitioners(m, obx, 25)
    performers += [r for r in (xon_organization(m, x) for x in m.reps(obx, 23)) if r]
    m.use(obx, 24)
    if performers:
        res["performer"] = performers
    if m.ctx.order_ref is not None:
        res["basedOn"] = [dict(m.ctx.order_ref)]
    if m.ctx.parent_ref is not None and m.resource(m.ctx.parent_ref)["resourceType"] in (
            "Immunization", "MedicationDispense", "MedicationAdministration", "Procedure"):
        res["partOf"] = [dict(m.ctx.parent_ref)]
    if m.ctx.specimen_ref is not None:
        res["specimen"] = dict(m.ctx.specimen_ref)
    ref = m.add(res, key)
    if report is not None:
        report["result"].append(ref)
    return res


def quantity(m: Mapper, value: int | float, unit: Composite) -> JSON:
    q: JSON = {"value": value}
    code, text, system = unit(1), unit(2), unit(3).upper()
    if code:
        q["unit"] = text or code
        if system in ("UCUM", "ISO+") or (not system and code in codes.UCUM_UNITS):
            q["system"] = codes.UCUM
            q["code"] = code
        elif system:
            q["system"] = codes.coding_system(unit(3), m.cfg.code_prefix)
            q["code"] = code
    return q


def observation_value(m: Mapper, obx: Segment, res: JSON) -> None:
    vtype = m.val(obx, 2).upper()
    values = m.reps(obx, 5)
    unit = m.comp(obx, 6)
    where = m.loc(obx, 5)
    if not values:
        return
    if not vtype:
        m.issue(m.loc(obx, 2), "value type missing: value mapped as a string")
        vtype = "ST"
    first = values[0]
    raw_text = obx.get(5)
    if vtype == "NM":
        num = number(first(1))
        if num is not None:
            res["valueQuantity"] = quantity(m, num, unit)
        elif match := re.fullmatch(r"\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*", first(1)):
            num = number(match.group(2))
            assert num is not None
            res["valueQuantity"] = {**quantity(m, num, unit), "comparator": match.group(1)}
        else:
            m.issue(where, f"NM value {first(1)!r} is not a number: mapped as a string")
            res["valueString"] = raw_text
    elif vtype in ("ST", "TX", "FT"):
        res["valueString"] = "\n".join(obx.get(5, r) for r in range(1, len(obx.repetitions(5)) + 1))
    elif vtype in ("CE", "CWE", "CNE", "CF"):
        if concept := cwe_concept(first, m.cfg):
            res["valueCodeableConcept"] = concept
        if len(values) > 1:
            m.issue(where, f"{len(values) - 1} further coded value(s): an Observation holds one")
    elif vtype == "SN":
        structured_numeric(m, first, unit, res, where)
    elif vtype in ("DT", "TS", "DTM"):
        if value := m.datetime(obx, 5, first(1)):
            res["valueDateTime"] = value
    elif vtype == "TM":
        match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", first(1))
        if match:
            res["valueTime"] = (f"{match.group(1)}:{match.group(2) or '00'}:{match.group(3) or '00'}"
                                f"{match.group(4) or ''}")
        else:
            m.issue(where, f"TM value {first(1)!r} is not a time")
    elif vtype in ("ID", "IS"):
        res["valueCodeableConcept"] = {"coding": [{"code": code_text(first(1))}]} if first(1) else {"text": raw_text}
    elif vtype in ("XCN", "XPN", "XAD", "XON", "CX", "EI", "HD", "PN", "AD", "TN", "XTN"):
        res["valueString"] = " ".join(c for comp in first.parts for c in comp if c)
    else:
        m.issue(where, f"value type {vtype} has no Observation.value[x] mapping")


def structured_numeric(m: Mapper, sn: Composite, unit: Composite, res: JSON, where: str) -> None:
    """SN (comparator ^ num1 ^ separator/suffix ^ num2) → Quantity, Range or Ratio."""
    comparator, sep = sn(1), sn(3)
    n1, n2 = number(sn(2)), number(sn(4))
    if sep in ("-",) and n1 is not None and n2 is not None:
        res["valueRange"] = {"low": quantity(m, n1, unit), "high": quantity(m, n2, unit)}
    elif sep in (":", "/") and n1 is not None and n2 is not None:
        res["valueRatio"] = {"numerator": {"value": n1}, "denominator": {"value": n2}}
    elif n1 is not None and not sep and n2 is None:
        q = quantity(m, n1, unit)
        if comparator in ("<", ">", "<=", ">="):
            q["comparator"] = comparator
        elif comparator not in ("", "="):
            m.issue(where, f"SN comparator {comparator!r} has no FHIR equivalent: dropped")
        res["valueQuantity"] = q
    elif n1 is not None and sep == "+" and n2 is None:
        res["valueQuantity"] = {**quantity(m, n1, unit), "comparator": ">="}
    else:
        m.issue(where, "structured numeric not understood: mapped as a string")
        res["valueString"] = "".join((comparator, sn(2), sep, sn(4)))


def reference_range(m: Mapper, obx: Segment, unit: Composite) -> JSON | None:
    """OBX-7 ("70-110", "<5", ">10", "3.5 - 5.0") → referenceRange with low/high and the text."""
    text = m.val(obx, 7)
    if not text:
        return None
    rng: JSON = {}
    num = r"([+-]?\d+(?:\.\d+)?)"
    if match := re.fullmatch(rf"\s*{num}\s*-\s*{num}\s*", text):
        low, high = number(match.group(1)), number(match.group(2))
        if low is not None and high is not None:
            rng = {"low": simple(quantity(m, low, unit)), "high": simple(quantity(m, high, unit))}
    elif match := re.fullmatch(rf"\s*(<=?|>=?)\s*{num}\s*", text):
        bound = number(match.group(2))
        if bound is not None:
            rng = {("high" if match.group(1).startswith("<") else "low"): simple(quantity(m, bound, unit))}
    rng["text"] = text
    return rng


def interpretation(m: Mapper, flag: Composite) -> JSON:
    code = flag(1)
    if code in codes.INTERPRETATION_V3:
        return {"coding": [{"system": codes.V3_INTERPRETATION, "code": code}]}
    return cwe_concept(flag, m.cfg, "0078") or {"text": code}


def note(m: Mapper, nte: Segment, target: JSON) -> None:
    m.use(nte, 1, 2, 4)
    text = "\n".join(r for r in m.texts(nte, 3) if r)
    if text:
        target.setdefault("note", []).append({"text": text})
