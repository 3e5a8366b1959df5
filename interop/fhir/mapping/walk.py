"""The walk over a message's segments: each segment id has one handler (the family's, else a common one)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from interop.errors import MappingError
from interop.fhir.mapping import adt, entities, financial, orders, results
from interop.fhir.mapping.core import HEADER_SEGMENTS, Mapper
from interop.message import Segment

Handler = Callable[[Mapper, Segment], None]


def _pid(m: Mapper, pid: Segment) -> None:
    if id(pid) in m.used:  # the first PID, mapped before the walk
        return
    entities.patient(m, pid, authoritative=m.ctx.extra.get("authoritative", False))
    m.ctx.order = m.ctx.order_ref = m.ctx.report = m.ctx.parent = m.ctx.parent_ref = None


def _pv1(m: Mapper, pv1: Segment) -> None:
    entities.encounter(m, pv1, authoritative=m.ctx.extra.get("authoritative", False))


def _nte(m: Mapper, nte: Segment) -> None:
    if m.ctx.note_target is not None:
        results.note(m, nte, m.ctx.note_target)


def _skip(m: Mapper, seg: Segment) -> None:
    """Grouping segments with no content of their own."""
    m.use_all(seg)


def _rol(m: Mapper, seg: Segment) -> None:
    entities.practitioner_role(m, seg)


COMMON: dict[str, Handler] = {
    "PID": _pid, "PD1": entities.patient_extras, "PV1": _pv1, "PV2": entities.encounter_extras,
    "NK1": entities.related_person, "AL1": adt.allergy, "IAM": adt.allergy_iam, "DG1": adt.condition,
    "PR1": adt.procedure, "IN1": financial.coverage, "IN2": financial.insurance_extras,
    "IN3": financial.certification, "GT1": financial.guarantor, "ROL": _rol, "PRT": _rol,
    "OBX": results.on_obx_generic, "NTE": _nte, "FT1": financial.charge_item, "SPM": orders.on_spm,
    "ORC": orders.on_orc, "OBR": orders.on_obr, "TQ1": orders.on_tq1, "TQ2": _skip, "RGS": _skip,
    "CON": adt.consent, "DRG": adt.drg, "ACC": adt.accident, "DB1": adt.disability,
}


def walk(m: Mapper, handlers: Mapping[str, Handler], *, authoritative: bool,
         finish: Callable[[Mapper], None] | None = None) -> None:
    """Map the first PID (the subject of everything), then every segment in order."""
    m.ctx.extra["authoritative"] = authoritative
    pid = m.msg.segment("PID")
    if pid is None:
        raise MappingError(f"{m.msg.message_type}: PID segment missing")
    entities.patient(m, pid, authoritative=authoritative)
    if pid18 := m.comp(pid, 18):
        financial.account(m, pid, pid18)
    for seg in m.msg.segments:
        if seg.id in HEADER_SEGMENTS:
            continue
        handler = handlers.get(seg.id) or COMMON.get(seg.id)
        if handler is not None:
            handler(m, seg)
    if finish is not None:
        finish(m)
    orders.flush_orc(m)
