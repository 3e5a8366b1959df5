"""Scheduling (SIU^S12-S26): SCH + AIS/AIG/AIL/AIP → Appointment; AIP → Practitioner, AIL → Location."""

from __future__ import annotations

from datetime import datetime, timedelta

from interop.fhir import codes
from interop.fhir.datatypes import JSON, cwe_concept, ei_identifier, number
from interop.fhir.mapping.core import Mapper, concept_text
from interop.fhir.mapping.entities import location, location_display, practitioner, practitioners
from interop.fhir.mapping.results import note
from interop.message import Segment

# Longest duration taken at its word (ten years): beyond it the value is a data error, not a booking.
MAX_MINUTES = 10 * 366 * 24 * 60
_UNIT_MINUTES = {"": 1, "MIN": 1, "M": 1, "H": 60, "HR": 60, "HOUR": 60, "S": 1 / 60, "D": 1440}
_RESOURCES = ("AIS", "AIG", "AIL", "AIP")


def run(m: Mapper) -> None:
    from interop.fhir.mapping.walk import walk

    sch = m.msg.segment("SCH")
    if sch is None:
        m.issue("SCH", f"{m.msg.message_type} without SCH: no Appointment", "error")
    skip = dict.fromkeys((*_RESOURCES, "SCH"), _later)
    walk(m, {**skip, "NTE": on_nte}, authoritative=False,
         finish=lambda mm: appointment(mm, sch) if sch is not None else None)


def _later(m: Mapper, seg: Segment) -> None:
    m.ctx.note_target = None  # mapped with the Appointment at the end; their NTEs become its comment


def on_nte(m: Mapper, nte: Segment) -> None:
    if m.ctx.note_target is not None:
        note(m, nte, m.ctx.note_target)
    else:
        m.ctx.extra.setdefault("appointment_notes", []).append(nte)


def duration_minutes(m: Mapper, sch: Segment) -> int | None:
    duration = number(m.val(sch, 9))
    unit = m.comp(sch, 10)(1).upper()
    if not isinstance(duration, int | float):
        return None
    factor = _UNIT_MINUTES.get(unit)
    if factor is None:
        m.issue(m.loc(sch, 10), f"duration unit {unit!r} unknown")
        return None
    minutes = round(duration * factor)
    if not 0 <= minutes <= MAX_MINUTES:
        m.issue(m.loc(sch, 9), f"duration of {minutes} minutes is implausible: not mapped", "error")
        return None
    return minutes


def end_of(m: Mapper, start: str, minutes: int, where: str) -> str | None:
    """start + minutes as a FHIR instant, or None (with an issue) when the sum leaves the calendar."""
    try:
        end = (datetime.fromisoformat(start) + timedelta(minutes=minutes)).isoformat()
    except (OverflowError, ValueError):
        m.issue(where, "start plus duration is not a representable time: no end", "error")
        return None
    return end.replace("+00:00", "Z") if start.endswith("Z") else end


def appointment(m: Mapper, sch: Segment) -> None:
    """SCH + AIS/AIG/AIL/AIP → Appointment keyed on the filler appointment id (SCH-2)."""
    filler = ei_identifier(m.comp(sch, 2), m.cfg, m.authority, "FILL")
    placer = ei_identifier(m.comp(sch, 1), m.cfg, m.authority, "PLAC")
    idents = [i for i in (filler, placer) if i]
    key = idents[0] if idents else m.message_key("Appointment", sch)
    filler_status = m.comp(sch, 25)(1).upper()
    status = codes.APPOINTMENT_TRIGGER_STATUS.get(m.trigger, "booked")
    if m.trigger == "S16":
        status = "cancelled"
    if m.trigger in ("S12", "S13", "S14") and filler_status:
        if filler_status in codes.APPOINTMENT_STATUS:
            status = codes.APPOINTMENT_STATUS[filler_status]
        else:
            m.issue(m.loc(sch, 25), f"filler status {filler_status!r} unknown")
    res: JSON = {"resourceType": "Appointment", "identifier": idents, "status": status}
    if reason := cwe_concept(m.comp(sch, 7), m.cfg):
        res["reasonCode"] = [reason]
    if kind := cwe_concept(m.comp(sch, 8), m.cfg, "0277"):
        res["appointmentType"] = kind
    if event_reason := cwe_concept(m.comp(sch, 6), m.cfg):
        res["description"] = concept_text(event_reason)
    minutes = duration_minutes(m, sch)
    tq = m.comp(sch, 11)
    start = m.instant(sch, 11, tq(4)) if tq(4) else None
    end = m.instant(sch, 11, tq(5)) if tq(5) else None
    participants: list[JSON] = [{"actor": m.subject(), "status": "accepted"}]
    for who in practitioners(m, sch, 12) + practitioners(m, sch, 16) + practitioners(m, sch, 20):
        if not any(p["actor"] == who for p in participants):
            participants.append({"actor": who, "status": "accepted"})
    service: list[JSON] = []
    for seg in m.msg.segments:
        if seg.id not in _RESOURCES:
            continue
        m.use(seg, 1, 2)
        if start is None and (s := m.instant(seg, 4 if seg.id == "AIS" else 6)):
            start = s
        if isinstance(d := number(m.val(seg, 7 if seg.id == "AIS" else 9)), int) and minutes is None \
                and 0 <= d <= MAX_MINUTES:
            minutes = d
        m.use(seg, 4, 5, 6, 8, 10, 11, 12)  # offsets and their units: superseded by the start time
        if seg.id == "AIS":
            if svc := cwe_concept(m.comp(seg, 3), m.cfg):
                service.append(svc)
        elif seg.id == "AIP":
            if ref := practitioner(m, m.comp(seg, 3)):
                p: JSON = {"actor": ref, "status": "accepted"}
                if role := cwe_concept(m.comp(seg, 4), m.cfg):
                    p["type"] = [role]
                participants.append(p)
        elif seg.id == "AIL":
            pl = m.comp(seg, 3)
            if ref := location(m, pl):
                participants.append({"actor": ref, "status": "accepted"})
            elif text := location_display(pl):
                participants.append({"actor": {"display": text}, "status": "accepted"})
            m.use(seg, 4)
        elif (gen := cwe_concept(m.comp(seg, 3), m.cfg)) is not None:
            participants.append({"actor": {"display": concept_text(gen)}, "status": "accepted"})
    if start:
        res["start"] = start
        if end is None and minutes is not None and "T" in start:
            end = end_of(m, start, minutes, m.loc(sch, 9))
    if end:
        res["end"] = end
    if minutes is not None and minutes > 0:
        res["minutesDuration"] = minutes
    if start is None and status not in ("proposed", "cancelled", "waitlist", "entered-in-error", "noshow"):
        m.issue(m.loc(sch, 11), "no start time (SCH-11.4 / AIS-4 / AIx-6) for a booked appointment")
    if service:
        res["serviceType"] = service
    res["participant"] = participants
    for nte in m.ctx.extra.get("appointment_notes", []):
        m.use(nte, 1, 2, 3, 4)
        text = "\n".join(t for t in m.texts(nte, 3) if t)
        if text:
            res["comment"] = "\n".join(filter(None, (res.get("comment"), text)))
    m.add(res, key)
