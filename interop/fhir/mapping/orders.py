"""Orders (ORM^O01, OML^O21, OMG^O19): ORC + OBR → ServiceRequest, TQ1 timing, SPM / OBR-15 → Specimen."""

from __future__ import annotations

from collections.abc import Mapping

from interop.fhir import codes
from interop.fhir.datatypes import (
    JSON,
    Composite,
    code_text,
    cwe_concept,
    cx_identifier,
    ei_identifier,
    identifier_system,
    number,
)
from interop.fhir.mapping.core import Mapper
from interop.fhir.mapping.entities import location, practitioner, practitioners, xon_organization
from interop.message import Segment


def run(m: Mapper) -> None:
    from interop.fhir.mapping import results
    from interop.fhir.mapping.walk import walk

    walk(m, {"ORC": on_orc, "OBR": on_obr, "OBX": results.on_obx_generic, "SPM": on_spm, "TQ1": on_tq1},
         authoritative=False, finish=flush_orc)


# -- ORC / OBR pairing --------------------------------------------------------------------------------

def on_orc(m: Mapper, orc: Segment) -> None:
    """Remember the ORC for the OBR that follows; OUL puts it after its OBR, so attach it there."""
    flush_orc(m)
    if m.msg.message_code == "OUL" and m.ctx.order is not None and not m.ctx.extra.get("order_has_orc"):
        attach_orc(m, orc, m.ctx.order)
        m.ctx.order["status"] = order_status(m, orc)
        m.ctx.extra["order_has_orc"] = True
        return
    m.ctx.orc, m.ctx.orc_used = orc, False
    m.ctx.extra["pending_tq1"] = []


def take_orc(m: Mapper, _req: Segment) -> Segment | None:
    """The ORC an order detail segment (OBR, RXE, RXA, ...) belongs to, if one is waiting."""
    if m.ctx.orc is not None and not m.ctx.orc_used:
        m.ctx.orc_used = True
        return m.ctx.orc
    return None


def flush_orc(m: Mapper) -> None:
    """An ORC with no OBR (a cancel, a status change) still names an order: ServiceRequest from ORC alone."""
    orc = m.ctx.orc
    if orc is None or m.ctx.orc_used:
        return
    m.ctx.orc_used = True
    if order_identifiers(m, orc, None):
        ref = service_request(m, orc, None)
        m.ctx.order_ref, m.ctx.order = ref, m.resource(ref)


def on_obr(m: Mapper, obr: Segment) -> None:
    orc = take_orc(m, obr)
    if m.msg.message_code != "OUL":
        m.ctx.specimen_ref = None
    ref = service_request(m, orc, obr)
    m.ctx.note_target = m.resource(ref)
    for tq1 in m.ctx.extra.pop("pending_tq1", []):
        timing(m, tq1, m.resource(ref))


def on_tq1(m: Mapper, tq1: Segment) -> None:
    if m.ctx.orc is not None and not m.ctx.orc_used:
        m.ctx.extra.setdefault("pending_tq1", []).append(tq1)  # OML puts the order's timing before its OBR
    elif m.ctx.order is not None:
        timing(m, tq1, m.ctx.order)
    else:
        m.use(tq1, 1)


# -- ServiceRequest ----------------------------------------------------------------------------------------

def order_identifiers(m: Mapper, orc: Segment | None, req: Segment | None) -> list[JSON]:
    idents: list[JSON] = []
    for n, kind in ((2, "PLAC"), (3, "FILL")):
        for seg in (orc, req):
            if seg is None:
                continue
            ident = ei_identifier(m.comp(seg, n), m.cfg, m.authority, kind)
            if ident and not any(i["value"] == ident["value"] and i["system"] == ident["system"] for i in idents):
                idents.append(ident)
    if orc is not None and (group := ei_identifier(m.comp(orc, 4), m.cfg, m.authority, "PGN")):
        idents.append(group)
    return idents


def order_status(m: Mapper, orc: Segment | None, vocabulary: Mapping[str, str] | None = None) -> str:
    if orc is None:
        return "active"
    m.use(orc, 1, 5)
    status = codes.ORDER_STATUS.get(m.val(orc, 5).upper()) or codes.ORDER_CONTROL_STATUS.get(
        m.val(orc, 1).upper())
    if status is None:
        m.issue(m.loc(orc, 1), f"order control {m.val(orc, 1)!r} unknown: status 'unknown'")
        status = "unknown"
    return vocabulary.get(status, status) if vocabulary else status


def attach_orc(m: Mapper, orc: Segment, res: JSON) -> None:
    """Common ORC content on a request: who, when, where, priority."""
    for ident in order_identifiers(m, orc, None):
        if ident not in res.setdefault("identifier", []):
            res["identifier"].append(ident)
    if authored := m.datetime(orc, 9):
        res.setdefault("authoredOn", authored)
    requester = practitioner(m, m.comp(orc, 12))
    if requester is None:
        requester = next(iter(r for r in (xon_organization(m, x) for x in m.reps(orc, 21)) if r), None)
    else:
        for x in m.reps(orc, 21):
            xon_organization(m, x)
    if requester:
        res.setdefault("requester", requester)
    for n in (10, 11, 19):
        practitioners(m, orc, n)  # entered by / verified by / action by: Practitioners of the order
    if (where := location(m, m.comp(orc, 13))) and res["resourceType"] == "ServiceRequest":
        res.setdefault("locationReference", []).append(where)
    if reason := cwe_concept(m.comp(orc, 16), m.cfg):
        res.setdefault("reasonCode", []).append(reason)
    tq = m.comp(orc, 7)
    tq_priority(m, tq, res, m.loc(orc, 7))
    if tq(4) and (start := m.datetime(orc, 7, tq(4))) and res["resourceType"] == "ServiceRequest":
        res.setdefault("occurrenceDateTime", start)


def service_request(m: Mapper, orc: Segment | None, obr: Segment | None, *, result: bool = False) -> JSON:
    """ORC (+ OBR) → ServiceRequest keyed on the placer order number; a result message only
    makes sure the order exists (conditional create), an order message owns it (conditional update)."""
    idents = order_identifiers(m, orc, obr)
    anchor = obr if obr is not None else orc
    assert anchor is not None
    key = idents[0] if idents else m.message_key("ServiceRequest", anchor)
    status = order_status(m, orc)
    if result and orc is None and obr is not None:
        status = "completed" if m.comp(obr, 25)(1).upper() in ("F", "C") else "active"
    res: JSON = {"resourceType": "ServiceRequest", "identifier": idents, "status": status, "intent": "order",
                 "subject": m.subject()}
    m.with_encounter(res)
    if orc is not None:
        attach_orc(m, orc, res)
    if obr is not None:
        request_details(m, obr, res)
    elif orc is not None and (code := cwe_concept(m.comp(orc, 16), m.cfg)) and "code" not in res:
        res["code"] = code
    if m.ctx.specimen_ref is not None:
        res["specimen"] = [dict(m.ctx.specimen_ref)]
    ref = m.add(res, key, update=not result)
    if m.resource(ref) is res:
        m.ctx.order, m.ctx.order_ref = res, ref
    else:
        m.ctx.order, m.ctx.order_ref = m.resource(ref), ref
    m.ctx.extra["order_has_orc"] = orc is not None
    if obr is not None and m.comp(obr, 15):
        obr_specimen(m, obr, key)
    return ref


def request_details(m: Mapper, obr: Segment, res: JSON) -> None:
    """OBR → ServiceRequest code, timing, requester, reason, notes."""
    m.use(obr, 1, 2, 3)
    code = cwe_concept(m.comp(obr, 4), m.cfg)
    if code is None:
        m.issue(m.loc(obr, 4), "universal service identifier missing")
    else:
        res["code"] = code
    if "requester" not in res and (who := practitioner(m, m.comp(obr, 16))):
        res["requester"] = who
    else:
        practitioner(m, m.comp(obr, 16))
    if "priority" not in res:
        tq_priority(m, m.comp(obr, 27), res, m.loc(obr, 27))
    if "priority" not in res and (prio := m.val(obr, 5).upper()) in codes.PRIORITY:
        res["priority"] = codes.PRIORITY[prio]
    if (when := m.datetime(obr, 7)) and "occurrenceDateTime" not in res:
        res["occurrenceDateTime"] = when
    reasons = [c for c in (cwe_concept(x, m.cfg) for x in m.reps(obr, 31)) if c]
    if reasons:
        res.setdefault("reasonCode", []).extend(reasons)
    if info := m.val(obr, 13):
        res.setdefault("note", []).append({"text": info})
    performers = practitioners(m, obr, 34)
    practitioners(m, obr, 10)  # collector: the Specimen's, when there is one
    practitioners(m, obr, 28)  # result copies to: Practitioners of the order, no ServiceRequest element
    if performers:
        res["performer"] = performers
    if (where := m.val(obr, 24)) and "category" not in res:
        res["category"] = [{"coding": [{"system": codes.v2_table("0074"), "code": where}]}]


def tq_priority(m: Mapper, tq: Composite, res: JSON, where: str) -> None:
    prio = tq(6).upper()
    if prio in codes.PRIORITY:
        res["priority"] = codes.PRIORITY[prio]
    elif prio:
        m.issue(where, f"priority {prio!r} unknown")


def timing(m: Mapper, tq1: Segment, res: JSON) -> None:
    """TQ1 start (7) and priority (9) onto a request."""
    m.use(tq1, 1)
    if start := m.datetime(tq1, 7):
        if res["resourceType"] == "ServiceRequest":
            res["occurrenceDateTime"] = start
        elif res["resourceType"] == "MedicationRequest":
            dosage = res.setdefault("dosageInstruction", [{}])[0]
            dosage.setdefault("timing", {}).setdefault("repeat", {})["boundsPeriod"] = {"start": start}
    if pattern := m.comp(tq1, 3)(1):
        if res["resourceType"] == "MedicationRequest":
            res.setdefault("dosageInstruction", [{}])[0].setdefault("timing", {})["code"] = {"text": pattern}
    prio = m.comp(tq1, 9)(1).upper()
    if prio in codes.PRIORITY:
        res["priority"] = codes.PRIORITY[prio]
    elif prio:
        m.issue(m.loc(tq1, 9), f"priority {prio!r} unknown")


# -- Specimen ------------------------------------------------------------------------------------------

def on_spm(m: Mapper, spm: Segment) -> None:
    ref = specimen(m, spm)
    m.ctx.specimen_ref = ref
    m.ctx.note_target = m.resource(ref)
    for holder in (m.ctx.order, m.ctx.report):
        if holder is not None and ref not in holder.setdefault("specimen", []):
            holder["specimen"].append(dict(ref))


def specimen(m: Mapper, spm: Segment) -> JSON:
    """SPM → Specimen keyed on the filler (else placer) specimen id."""
    m.use(spm, 1)
    eip = m.comp(spm, 2)
    ident: JSON | None = None
    idents: list[JSON] = []
    for comp, kind in ((2, "FGN"), (1, "PGN")):
        if eip(comp, 1):
            found = {"system": identifier_system(eip(comp, 2), eip(comp, 3), eip(comp, 4), m.cfg, m.authority),
                     "value": eip(comp, 1), "type": {"coding": [{"system": codes.v2_table("0203"), "code": kind}]}}
            idents.append(found)
            ident = ident or found
    res: JSON = {"resourceType": "Specimen", "identifier": idents, "status": "available", "subject": m.subject()}
    accession = cx_identifier(m.comp(spm, 30), m.cfg, m.authority)
    if accession is not None:
        res["accessionIdentifier"] = accession
    if kind_ := cwe_concept(m.comp(spm, 4), m.cfg, "0487"):
        res["type"] = kind_
    collection: JSON = {}
    dr = m.comp(spm, 17)
    start = m.datetime(spm, 17, dr(1)) if dr(1) else None
    end = m.datetime(spm, 17, dr(2)) if dr(2) else None
    if start and end and end != start:
        collection["collectedPeriod"] = {"start": start, "end": end}
    elif start:
        collection["collectedDateTime"] = start
    if method := cwe_concept(m.comp(spm, 7), m.cfg, "0488"):
        collection["method"] = method
    if site := cwe_concept(m.comp(spm, 8), m.cfg, "0784"):
        collection["bodySite"] = site
    amount = m.comp(spm, 12)
    if (qty := number(amount(1))) is not None:
        collection["quantity"] = {"value": qty, **({"unit": amount(2, 1) or amount(2)} if amount(2) else {})}
    if collection:
        res["collection"] = collection
    if received := m.datetime(spm, 18):
        res["receivedTime"] = received
    conditions = [c for c in (cwe_concept(x, m.cfg, "0493") for x in m.reps(spm, 24)) if c]
    if conditions:
        res["condition"] = conditions
    if desc := m.val(spm, 14):
        res["note"] = [{"text": desc}]
    if m.val(spm, 20).upper() == "N" or m.reps(spm, 21):
        res["status"] = "unavailable"
    if m.ctx.order_ref is not None:
        res["request"] = [dict(m.ctx.order_ref)]
    scope = m.ctx.order["identifier"][0] if m.ctx.order and m.ctx.order.get("identifier") else {
        "system": m.patient_parts()[0], "value": m.patient_parts()[1]}
    key = ident or m.unique_key("Specimen", scope["system"], scope["value"], m.val(spm, 1),
                                concept_of(res.get("type")))
    return m.add(res, key)


def concept_of(concept: JSON | None) -> str:
    if not concept:
        return ""
    coding = (concept.get("coding") or [{}])[0]
    return str(coding.get("code") or concept.get("text") or "")


def obr_specimen(m: Mapper, obr: Segment, order_key: JSON) -> None:
    """OBR-15 (specimen source, v2.3-2.6) → Specimen of the order, collected at OBR-7/8 by OBR-10."""
    sps = m.comp(obr, 15)
    source = {"coding": [{k: v for k, v in (("system", codes.coding_system(sps(1, 3), m.cfg.code_prefix)),
                                               ("code", code_text(sps(1, 1))), ("display", sps(1, 2))) if v}]} \
        if sps(1, 1) else ({"text": sps(1, 2) or sps(2)} if sps(1, 2) or sps(2) else None)
    res: JSON = {"resourceType": "Specimen", "status": "available", "subject": m.subject()}
    if source:
        res["type"] = source
    collection: JSON = {}
    if when := m.datetime(obr, 7):
        collection["collectedDateTime"] = when
    if who := practitioner(m, m.comp(obr, 10)):
        collection["collector"] = who
    if sps(4, 1):
        site: JSON = {"code": code_text(sps(4, 1))}
        if sps(4, 2):
            site["display"] = sps(4, 2)
        collection["bodySite"] = {"coding": [site]}
    if collection:
        res["collection"] = collection
    if received := m.datetime(obr, 14):
        res["receivedTime"] = received
    if m.ctx.order_ref is not None:
        res["request"] = [dict(m.ctx.order_ref)]
    ref = m.add(res, m.derived_key("Specimen", order_key["system"], order_key["value"], "OBR-15"))
    m.ctx.specimen_ref = ref
    if m.ctx.order is not None and ref not in m.ctx.order.setdefault("specimen", []):
        m.ctx.order["specimen"].append(dict(ref))
