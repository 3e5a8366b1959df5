"""Generate HL7 v2 messages (ADT^A01/A03/A04/A08, ORU^R01, ORM^O01) from dataclasses or a JSON-like dict."""

from __future__ import annotations

import dataclasses
import re
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Union, get_args, get_origin, get_type_hints

from interop.errors import GenerationError
from interop.message import DEFAULT_SEPARATORS, escape
from interop.validate import TABLES, check_type, is_supported_version, version_tuple

SUPPORTED_TYPES: dict[str, str] = {
    "ADT^A01": "ADT_A01", "ADT^A04": "ADT_A01", "ADT^A08": "ADT_A01", "ADT^A03": "ADT_A03",
    "ORU^R01": "ORU_R01", "ORM^O01": "ORM_O01",
}
VALUE_TYPES = frozenset({"NM", "ST", "TX", "FT", "CWE", "CE", "DT", "TS", "DTM"})
_ISO = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.\d+)?)?(?P<tz>Z|[+-]\d{2}:?\d{2})?)?$"
)


@dataclass
class Patient:
    """The patient (PID)."""

    id: str
    family: str
    given: str = ""
    middle: str = ""
    id_authority: str = ""
    id_type: str = "MR"
    birth_date: str = ""
    sex: str = "U"
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    phone: str = ""
    account_number: str = ""


@dataclass
class Visit:
    """The encounter (PV1)."""

    patient_class: str = "U"
    location: str = ""
    attending_id: str = ""
    attending_family: str = ""
    attending_given: str = ""
    visit_number: str = ""
    admit_time: str = ""
    discharge_time: str = ""


@dataclass
class Observation:
    """One result (OBX); ``value_type`` empty means NM for numbers, ST otherwise."""

    code: str
    value: str = ""
    text: str = ""
    system: str = "LN"
    value_type: str = ""
    value_code: str = ""
    value_system: str = ""
    units: str = ""
    reference_range: str = ""
    abnormal_flag: str = ""
    status: str = "F"
    observed_at: str = ""


@dataclass
class Order:
    """One order / report (ORC + OBR) and its observations."""

    placer_id: str
    service_code: str
    service_text: str = ""
    service_system: str = "LN"
    filler_id: str = ""
    ordered_at: str = ""
    result_status: str = "F"
    observations: list[Observation] = field(default_factory=list)


@dataclass
class MessageSpec:
    """What to generate: the type, the header fields and the content."""

    message_type: str
    patient: Patient
    version: str = "2.5.1"
    sending_application: str = "LIFELINE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    timestamp: str = ""
    processing_id: str = "P"
    visit: Visit | None = None
    orders: list[Order] = field(default_factory=list)


def from_dict(data: Any) -> MessageSpec:
    """Build a :class:`MessageSpec` from a JSON-like dict; :class:`GenerationError` names the bad field."""
    spec = _build(MessageSpec, data, "")
    assert isinstance(spec, MessageSpec)
    return spec


def _build(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise GenerationError(path or "$", f"expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise GenerationError(_join(path, unknown[0]), "unknown field")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        where = _join(path, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise GenerationError(where, "is required")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], where)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _convert(args[0], value, path)
    if origin is list:
        if not isinstance(value, list):
            raise GenerationError(path, f"expected a list, got {type(value).__name__}")
        (item,) = get_args(hint)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)  # type: ignore[arg-type]
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise GenerationError(path, f"expected a string, got {type(value).__name__}")
        return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    raise GenerationError(path, "unsupported field type")  # pragma: no cover - the dataclasses above only


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def hl7_datetime(value: str, path: str, *, date_only: bool = False) -> str:
    """ISO 8601 (``1970-04-15``, ``2024-03-12T08:30:00Z``) or HL7 DTM text as HL7 DTM."""
    value = value.strip()
    m = _ISO.match(value)
    if m:
        out = m.group("y") + m.group("mo") + m.group("d")
        if m.group("h"):
            out += m.group("h") + m.group("mi") + (m.group("s") or "")
            tz = m.group("tz")
            if tz:
                out += "+0000" if tz == "Z" else tz.replace(":", "")
        value = out
    problem = check_type(value, "DT" if date_only else "DTM")
    if problem:
        raise GenerationError(path, f"not a date{'' if date_only else '/time'}: {problem}")
    return value


def _check_table(value: str, table: str, path: str) -> str:
    if value and value not in TABLES[table]:
        raise GenerationError(path, f"{value!r} is not in HL7 table {table}: {sorted(TABLES[table])}")
    return value


def _fields(segment_id: str, values: Mapping[int, str]) -> str:
    last = max((n for n, v in values.items() if v), default=0)
    return "|".join([segment_id, *(values.get(n, "") for n in range(1, last + 1))])


def _comp(*parts: str) -> str:
    return "^".join(escape(p, DEFAULT_SEPARATORS) for p in parts).rstrip("^")


def generate(spec: MessageSpec, *, now: datetime | None = None) -> str:
    """The message as ER7 text (CR-separated, final CR); :class:`GenerationError` on an inconsistent spec."""
    mtype = spec.message_type.strip().upper()
    structure = SUPPORTED_TYPES.get(mtype)
    if structure is None:
        raise GenerationError("message_type", f"{spec.message_type!r} is not one of {sorted(SUPPORTED_TYPES)}")
    if not is_supported_version(spec.version):
        raise GenerationError("version", f"{spec.version!r} is not a supported version (2.1 to 2.8.x)")
    if spec.processing_id not in ("P", "T", "D"):
        raise GenerationError("processing_id", "must be P, T or D")
    code, event = mtype.split("^")
    version = version_tuple(spec.version)
    stamp = (hl7_datetime(spec.timestamp, "timestamp") if spec.timestamp
             else (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S"))
    control_id = spec.control_id or uuid.uuid4().hex[:20].upper()
    msg_type = f"{code}^{event}^{structure}" if version >= (2, 3, 1) else f"{code}^{event}"
    # MSH-1 is the "|" after the id, so key n below is field n + 1.
    segments = [_fields("MSH", {
        1: "^~\\&", 2: escape(spec.sending_application), 3: escape(spec.sending_facility),
        4: escape(spec.receiving_application), 5: escape(spec.receiving_facility), 6: stamp,
        8: msg_type, 9: escape(control_id), 10: spec.processing_id, 11: spec.version,
    })]
    if code == "ADT":
        segments.append(_fields("EVN", {1: event if version < (2, 7) else "", 2: stamp}))
    segments.append(_pid(spec.patient))
    visit = spec.visit or (Visit() if code == "ADT" else None)
    if visit is not None:
        segments.append(_pv1(visit))
    if code in ("ORU", "ORM"):
        if not spec.orders:
            raise GenerationError("orders", f"{mtype} needs at least one order")
        for i, order in enumerate(spec.orders):
            segments += _order(order, i, code, stamp)
    elif spec.orders:
        raise GenerationError("orders", f"{mtype} carries no orders")
    return "\r".join(segments) + "\r"


def generate_from_dict(data: Any, *, now: datetime | None = None) -> str:
    """``generate(from_dict(data))``."""
    return generate(from_dict(data), now=now)


def _pid(p: Patient) -> str:
    if not p.id.strip():
        raise GenerationError("patient.id", "must not be empty")
    if not p.family.strip():
        raise GenerationError("patient.family", "must not be empty")
    sex = _check_table(p.sex.upper(), "0001", "patient.sex")
    birth = hl7_datetime(p.birth_date, "patient.birth_date") if p.birth_date else ""
    address = _comp(p.street, "", p.city, p.state, p.postal_code, p.country)
    phone = _comp("", "PRN", "PH", "", "", "", "", "", "", "", "", p.phone) if p.phone else ""
    return _fields("PID", {
        1: "1", 3: _comp(p.id, "", "", p.id_authority, p.id_type), 5: _comp(p.family, p.given, p.middle),
        7: birth, 8: sex, 11: address, 13: phone, 18: escape(p.account_number),
    })


def _pv1(v: Visit) -> str:
    cls = _check_table(v.patient_class.upper(), "0004", "visit.patient_class")
    if not cls:
        raise GenerationError("visit.patient_class", "must not be empty")
    attending = _comp(v.attending_id, v.attending_family, v.attending_given) if v.attending_id else ""
    return _fields("PV1", {
        1: "1", 2: cls, 3: _comp(*v.location.split("^")) if v.location else "", 7: attending,
        19: escape(v.visit_number),
        44: hl7_datetime(v.admit_time, "visit.admit_time") if v.admit_time else "",
        45: hl7_datetime(v.discharge_time, "visit.discharge_time") if v.discharge_time else "",
    })


def _order(o: Order, i: int, code: str, stamp: str) -> list[str]:
    where = f"orders[{i}]"
    if not o.placer_id.strip():
        raise GenerationError(f"{where}.placer_id", "must not be empty")
    if not o.service_code.strip():
        raise GenerationError(f"{where}.service_code", "must not be empty")
    ordered = hl7_datetime(o.ordered_at, f"{where}.ordered_at") if o.ordered_at else stamp
    status = _check_table(o.result_status, "0123", f"{where}.result_status")
    service = _comp(o.service_code, o.service_text, o.service_system)
    if code == "ORM":
        if o.observations:
            raise GenerationError(f"{where}.observations", "ORM^O01 orders carry no observations here")
        return [
            _fields("ORC", {1: "NW", 2: escape(o.placer_id), 9: ordered}),
            _fields("OBR", {1: str(i + 1), 2: escape(o.placer_id), 4: service, 7: ordered}),
        ]
    if not o.observations:
        raise GenerationError(f"{where}.observations", "ORU^R01 needs at least one observation per order")
    out = [
        _fields("ORC", {1: "RE", 2: escape(o.placer_id), 3: escape(o.filler_id)}),
        _fields("OBR", {1: str(i + 1), 2: escape(o.placer_id), 3: escape(o.filler_id), 4: service, 7: ordered,
                        22: stamp, 25: status}),
    ]
    out += [_obx(obs, j, f"{where}.observations[{j}]") for j, obs in enumerate(o.observations)]
    return out


def _obx(obs: Observation, j: int, where: str) -> str:
    if not obs.code.strip():
        raise GenerationError(f"{where}.code", "must not be empty")
    vtype = obs.value_type.upper() or ("NM" if check_type(obs.value, "NM") is None else "ST")
    if vtype not in VALUE_TYPES:
        raise GenerationError(f"{where}.value_type", f"{obs.value_type!r} is not one of {sorted(VALUE_TYPES)}")
    if vtype == "NM":
        problem = check_type(obs.value, "NM")
        if problem:
            raise GenerationError(f"{where}.value", problem)
        value = obs.value
    elif vtype in ("CWE", "CE"):
        if not (obs.value_code or obs.value):
            raise GenerationError(f"{where}.value_code", f"a {vtype} value needs a code or a text")
        value = _comp(obs.value_code, obs.value, obs.value_system)
    elif vtype in ("DT", "TS", "DTM"):
        value = hl7_datetime(obs.value, f"{where}.value", date_only=vtype == "DT")
    else:
        value = escape(obs.value)
    flag = _check_table(obs.abnormal_flag, "0078", f"{where}.abnormal_flag")
    status = _check_table(obs.status, "0085", f"{where}.status")
    if not status:
        raise GenerationError(f"{where}.status", "must not be empty")
    return _fields("OBX", {
        1: str(j + 1), 2: vtype, 3: _comp(obs.code, obs.text, obs.system), 5: value, 6: _comp(obs.units),
        7: escape(obs.reference_range), 8: flag, 11: status,
        14: hl7_datetime(obs.observed_at, f"{where}.observed_at") if obs.observed_at else "",
    })
