"""Documents (MDM^T01-T11): TXA + OBX → DocumentReference (text or ED content, base64), and the OBX as
Observations; TXA-5/9/10/22 → Practitioners."""

from __future__ import annotations

import base64
import binascii

from interop.fhir import codes
from interop.fhir.datatypes import JSON, Composite, cwe_concept, ei_identifier
from interop.fhir.mapping.core import Mapper
from interop.fhir.mapping.entities import practitioner
from interop.fhir.mapping.results import observation
from interop.message import Segment


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    if m.msg.segment("TXA") is None:
        m.issue("TXA", f"{m.msg.message_type} without TXA: no DocumentReference", "error")
    walk(m, {"TXA": document, "OBX": on_obx}, authoritative=False)


def on_obx(m: Mapper, obx: Segment) -> None:
    """Each OBX is document content (mapped by ``document``) and, unless it is encapsulated data, an
    Observation of its own (a text OBX becomes a valueString Observation, as the V2-to-FHIR IG maps it)."""
    if obx.get(2).upper() in ("ED", "RP"):
        m.ctx.note_target = None
        return
    m.ctx.note_target = observation(m, obx)



def document(m: Mapper, txa: Segment) -> None:
    """TXA + OBX → DocumentReference; the text travels base64 in content.attachment.data."""
    m.use(txa, 1, 3)
    unique = ei_identifier(m.comp(txa, 12), m.cfg, m.authority)
    idents = [unique] if unique else []
    key = unique or m.message_key("DocumentReference", txa)
    availability = m.val(txa, 19).upper()
    status = "entered-in-error" if m.trigger == "T11" else codes.DOC_AVAILABILITY.get(availability,
                                                                                          "current")
    res: JSON = {"resourceType": "DocumentReference", "identifier": idents, "status": status,
                 "subject": m.subject()}
    if unique:
        res["masterIdentifier"] = dict(unique)
    completion = m.val(txa, 17).upper()
    if completion in codes.DOC_STATUS:
        res["docStatus"] = codes.DOC_STATUS[completion]
    elif completion:
        m.issue(m.loc(txa, 17), f"completion status {completion!r} not in table 0271")
    if doc_type := cwe_concept(m.comp(txa, 2), m.cfg, "0270"):
        res["type"] = doc_type
    if created := m.instant(txa, 6):
        res["date"] = created
    authors = [r for r in (practitioner(m, x) for n in (5, 9) for x in m.reps(txa, n)) if r]
    if authors:
        res["author"] = authors
    authenticators = [r for r in (practitioner(m, x) for n in (10, 22) for x in m.reps(txa, n)) if r]
    if authenticators:
        res["authenticator"] = authenticators[0]
    parent = ei_identifier(m.comp(txa, 13), m.cfg, m.authority)
    if parent:
        res["relatesTo"] = [{"code": "replaces", "target": {"identifier": parent}}]
    context: JSON = {}
    if m.encounter_ref is not None:
        context["encounter"] = [dict(m.encounter_ref)]
    if activity := m.datetime(txa, 4):
        context["period"] = {"start": activity}
    if context:
        res["context"] = context
    title = m.val(txa, 16)
    content: list[JSON] = []
    text_parts: list[str] = []
    for obx in m.msg.all("OBX"):
        m.use(obx, 1, 2, 3, 4, 11)
        vtype = obx.get(2).upper()
        if vtype in ("TX", "FT", "ST", ""):
            m.use(obx, 5)
            text_parts.extend(obx.get(5, r) for r in range(1, len(obx.repetitions(5)) + 1))
        elif vtype == "ED":
            if attachment := encapsulated(m, obx):
                content.append({"attachment": attachment})
        else:
            m.issue(m.loc(obx, 2), f"value type {vtype} cannot become document content")
    if text_parts:
        att: JSON = {"contentType": "text/plain; charset=utf-8",
                     "data": base64.b64encode("\n".join(text_parts).encode()).decode("ascii")}
        content.insert(0, {"attachment": att})
    if not content:
        m.issue(m.loc(txa), "no document content (no TX/FT/ED OBX): attachment has a title only")
        content.append({"attachment": {"title": title or "untitled document"}})
    for item in content:
        if title and "title" not in item["attachment"]:
            item["attachment"]["title"] = title
        if "date" in res:
            item["attachment"]["creation"] = res["date"]
    res["content"] = content
    m.add(res, key)

def encapsulated(m: Mapper, obx: Segment) -> JSON | None:
    """An ED OBX-5 (source ^ type ^ subtype ^ encoding ^ data) → Attachment."""
    m.use(obx, 5)
    ed = Composite(obx.field(5), m.seps)
    kind, subtype, encoding, data = ed(2).lower(), ed(3).lower(), ed(4).upper(), ed(5)
    where = m.loc(obx, 5)
    try:
        if encoding in ("BASE64", "B64"):
            payload = base64.b64decode("".join(data.split()), validate=True)
        elif encoding == "HEX":
            payload = binascii.unhexlify("".join(data.split()))
        elif encoding in ("A", ""):
            payload = data.encode()
        else:
            m.issue(where, f"ED encoding {encoding!r} unknown: content not mapped")
            return None
    except (ValueError, binascii.Error):
        m.issue(where, f"ED data is not valid {encoding}: content not mapped")
        return None
    mime = f"{kind or 'application'}/{subtype or 'octet-stream'}"
    if subtype in ("pdf", "rtf", "xml", "json", "msword") and kind in ("", "text", "ap", "application"):
        mime = f"application/{subtype}"
    elif kind in ("image", "img", "im"):
        mime = f"image/{subtype or 'octet-stream'}"
    return {"contentType": mime, "data": base64.b64encode(payload).decode("ascii")}
