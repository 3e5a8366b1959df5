"""HL7 v2 data types (DTM, CX, XPN, XAD, XTN, CWE, XCN, EI) → FHIR data types, as JSON-ready dicts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from interop.fhir import codes
from interop.message import Separators, unescape

JSON = dict[str, Any]

DEFAULT_ID_PREFIX = "urn:lifeline:id:"
DEFAULT_CODE_PREFIX = "urn:lifeline:cs:"


@dataclass(frozen=True, slots=True)
class MappingConfig:
    """Site choices the mapping cannot read from the message."""

    # Identifier system for an assigning authority that is neither an OID nor a URI.
    id_prefix: str = DEFAULT_ID_PREFIX
    # Coding system for a local coding-system name (CWE.3 "99LOCAL", "L", ...).
    code_prefix: str = DEFAULT_CODE_PREFIX
    # Offset ("+0100", "Z") applied to times that carry none and whose MSH-7 carries none either;
    # None keeps such times at date precision and reports an issue (FHIR requires an offset).
    default_timezone: str | None = None
    # Assigning authority (CX.4.1 / EI.2) → identifier system, overriding the derived one.
    systems: dict[str, str] = field(default_factory=dict)


class Composite:
    """One repetition of a v2 composite field, split into unescaped components and subcomponents."""

    __slots__ = ("parts",)

    def __init__(self, raw: str, seps: Separators) -> None:
        self.parts = [
            [unescape(s, seps) for s in comp.split(seps.subcomponent)] for comp in raw.split(seps.component)
        ]

    def __call__(self, comp: int, sub: int = 1) -> str:
        """Component (and subcomponent) value, 1-based; '' when absent."""
        if comp > len(self.parts):
            return ""
        subs = self.parts[comp - 1]
        return subs[sub - 1].strip() if sub <= len(subs) else ""

    def full(self, comp: int) -> list[str]:
        """All subcomponents of a component."""
        return self.parts[comp - 1] if comp <= len(self.parts) else []

    def __bool__(self) -> bool:
        return any(s.strip() for comp in self.parts for s in comp)


# -- dates ----------------------------------------------------------------------------------------

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?(?P<f>\.\d{1,6})?"
    r"(?P<tz>[+-]\d{4}|Z)?$"
)


class DateError(ValueError):
    """An HL7 date/time that is not a valid DTM."""


@dataclass(frozen=True, slots=True)
class DTM:
    """A parsed HL7 DTM keeping its precision."""

    year: str
    month: str | None
    day: str | None
    hour: str | None
    minute: str | None
    second: str | None
    fraction: str | None
    tz: str | None


def parse_dtm(value: str) -> DTM:
    """Parse ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``, checking each part's range."""
    m = _DTM.match(value.strip())
    if not m:
        raise DateError(f"{value!r} is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    g = m.groupdict()
    checks = (("mo", 1, 12), ("d", 1, 31), ("h", 0, 23), ("mi", 0, 59), ("s", 0, 60))
    for key, low, high in checks:
        if g[key] is not None and not low <= int(g[key]) <= high:
            raise DateError(f"{value!r}: {key} {g[key]} out of range")
    tz = g["tz"]
    if tz and tz != "Z" and (int(tz[1:3]) > 14 or int(tz[3:]) > 59):
        raise DateError(f"{value!r}: time zone {tz} out of range")
    return DTM(g["y"], g["mo"], g["d"], g["h"], g["mi"], g["s"], g["f"], tz)


def _fhir_tz(tz: str) -> str:
    return "Z" if tz in ("Z", "+0000", "-0000") else f"{tz[:3]}:{tz[3:]}"


def to_date(value: str) -> str:
    """HL7 DT/DTM → FHIR date (time dropped, partial precision kept)."""
    d = parse_dtm(value)
    return "-".join(p for p in (d.year, d.month, d.day) if p)


def to_datetime(value: str, default_tz: str | None) -> tuple[str, bool]:
    """HL7 DTM → FHIR dateTime; the flag is False when a time had to be dropped for lack of an offset."""
    d = parse_dtm(value)
    date = "-".join(p for p in (d.year, d.month, d.day) if p)
    if d.hour is None or d.day is None:
        return date, True
    tz = d.tz or default_tz
    if tz is None:
        return date, False
    time = f"{d.hour}:{d.minute or '00'}:{d.second or '00'}{d.fraction or ''}"
    return f"{date}T{time}{_fhir_tz(tz)}", True


def to_instant(value: str, default_tz: str | None) -> str | None:
    """HL7 DTM → FHIR instant (seconds padded), or None without minute precision and an offset."""
    d = parse_dtm(value)
    if d.minute is None or (d.tz or default_tz) is None:
        return None
    return to_datetime(value, default_tz)[0]


def from_fhir_datetime(value: str) -> str:
    """FHIR date/dateTime/instant → HL7 DTM."""
    m = re.match(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?$",
                 value.strip())
    if not m:
        raise DateError(f"{value!r} is not a FHIR date/dateTime")
    y, mo, d, h, mi, s, f, tz = m.groups()
    out = "".join(p for p in (y, mo, d, h, mi, s, f) if p)
    if tz:
        out += "+0000" if tz == "Z" else tz.replace(":", "")
    return out


# -- identifiers ----------------------------------------------------------------------------------

def identifier_system(namespace: str, universal_id: str, universal_type: str, config: MappingConfig,
                      fallback: str) -> str:
    """The identifier system for an HD assigning authority (``urn:oid:`` / URI / local namespace)."""
    if namespace and namespace in config.systems:
        return config.systems[namespace]
    if universal_id:
        kind = universal_type.upper()
        if kind == "URI" or universal_id.startswith(("http://", "https://", "urn:")):
            return universal_id
        if kind in ("ISO", "") and codes.OID.match(universal_id):
            return f"urn:oid:{universal_id}"
        if kind == "UUID":
            return f"urn:uuid:{universal_id.lower()}"
    if namespace:
        if codes.OID.match(namespace):
            return f"urn:oid:{namespace}"
        if namespace.startswith(("http://", "https://", "urn:")):
            return namespace
        return config.id_prefix + quote(namespace, safe="")
    if universal_id:
        return config.id_prefix + quote(universal_id, safe="")
    return config.id_prefix + quote(fallback, safe="")


def cx_identifier(cx: Composite, config: MappingConfig, fallback: str) -> JSON | None:
    """CX → Identifier with system (CX.4), type (CX.5 → v2-0203) and assigner (CX.4.1)."""
    value = cx(1)
    if not value:
        return None
    ns, uid, utype = cx(4, 1), cx(4, 2), cx(4, 3)
    ident: JSON = {"system": identifier_system(ns, uid, utype, config, fallback), "value": value}
    if cx(5):
        ident["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": code_text(cx(5))}]}
    if ns:
        ident["assigner"] = {"display": ns}
    period = {k: v for k, v in (("start", cx(7)), ("end", cx(8))) if v}
    if period:
        try:
            ident["period"] = {k: to_date(v) for k, v in period.items()}
        except DateError:
            pass
    return ident


def ei_identifier(ei: Composite, config: MappingConfig, fallback: str, type_code: str = "") -> JSON | None:
    """EI (entity id ^ namespace ^ universal id ^ type) → Identifier."""
    value = ei(1)
    if not value:
        return None
    ident: JSON = {"system": identifier_system(ei(2), ei(3), ei(4), config, fallback), "value": value}
    if type_code:
        ident["type"] = {"coding": [{"system": codes.v2_table("0203"), "code": type_code}]}
    return ident


def conditional_query(ident: JSON) -> str:
    """``identifier=system|value`` search, escaped so a value with '|', '&' or spaces stays one token."""
    return f"identifier={quote(ident['system'], safe=':/.')}|{quote(ident['value'], safe='')}"


# -- names, addresses, telecom ----------------------------------------------------------------------

def xpn_name(xpn: Composite) -> JSON | None:
    """XPN → HumanName (family, given + middle names, prefix, suffix, use from table 0200)."""
    family = xpn(1, 1)
    given = [g for g in (xpn(2), *xpn(3).split()) if g]
    name: JSON = {}
    if xpn(7) in codes.NAME_USE:
        name["use"] = codes.NAME_USE[xpn(7)]
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if xpn(5):
        name["prefix"] = [xpn(5)]
    suffixes = [s for s in (xpn(4), xpn(6)) if s]
    if suffixes:
        name["suffix"] = suffixes
    if not (family or given):
        return None
    return name


def xcn_name(xcn: Composite) -> JSON | None:
    """The name part of an XCN (components 2..7 are an XPN shifted by one)."""
    family = xcn(2, 1)
    given = [g for g in (xcn(3), *xcn(4).split()) if g]
    if not (family or given):
        return None
    name: JSON = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if xcn(6):
        name["prefix"] = [xcn(6)]
    if xcn(5):
        name["suffix"] = [xcn(5)]
    return name


def display_name(name: JSON) -> str:
    """A human-readable 'Given Family' rendering of a HumanName."""
    return " ".join([*name.get("prefix", []), *name.get("given", []), name.get("family", "")]).strip()


def xad_address(xad: Composite) -> JSON | None:
    """XAD → Address (use/type from table 0190)."""
    lines = [v for v in (xad(1, 1), xad(2)) if v]
    addr: JSON = {}
    kind = xad(7)
    if kind in codes.ADDRESS_USE:
        addr["use"] = codes.ADDRESS_USE[kind]
    elif kind in codes.ADDRESS_TYPE:
        addr["type"] = codes.ADDRESS_TYPE[kind]
    if lines:
        addr["line"] = lines
    for key, comp in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6), ("district", 9)):
        if xad(comp):
            addr[key] = xad(comp)
    if not (lines or any(k in addr for k in ("city", "state", "postalCode", "country", "district"))):
        return None
    return addr


def xtn_contact(xtn: Composite, default_use: str | None = None) -> JSON | None:
    """XTN → ContactPoint (system from 0202, use from 0201, number from components 5-8 or 1)."""
    equipment = xtn(3).upper()
    system = codes.TELECOM_SYSTEM.get(equipment, "")
    if xtn(4) or xtn(2) == "NET":
        value = xtn(4) or xtn(1)
        system = "email"
    elif xtn(7):
        value = "".join(
            p for p in (f"+{xtn(5)} " if xtn(5) else "", f"({xtn(6)}) " if xtn(6) else "", xtn(7),
                        f" x{xtn(8)}" if xtn(8) else "")
        )
    else:
        value = xtn(1)
    if not value:
        return None
    point: JSON = {"system": system or ("email" if "@" in value else "phone"), "value": value}
    use = "mobile" if equipment == "CP" else codes.TELECOM_USE.get(xtn(2), default_use or "")
    if use:
        point["use"] = use
    return point


# -- coded values ---------------------------------------------------------------------------------

def cwe_concept(cwe: Composite, config: MappingConfig, table: str = "") -> JSON | None:
    """CE/CWE/CNE → CodeableConcept (primary and alternate codings, original text)."""
    codings: list[JSON] = []
    for code_c, text_c, sys_c in ((1, 2, 3), (4, 5, 6)):
        code = code_text(cwe(code_c))
        if not code:
            continue
        system = codes.coding_system(cwe(sys_c), config.code_prefix) if cwe(sys_c) else (
            codes.v2_table(table) if table else "")
        coding: JSON = {"code": code}
        if system:
            coding = {"system": system, "code": code}
        if cwe(text_c):
            coding["display"] = cwe(text_c)
        codings.append(coding)
    concept: JSON = {}
    if codings:
        concept["coding"] = codings
    text = cwe(9) or (cwe(2) if not codings else "")
    if text:
        concept["text"] = text
    return concept or None


def table_concept(code: str, table: str, display: str = "") -> JSON:
    """A CodeableConcept with one coding from a v2 table."""
    coding: JSON = {"system": codes.v2_table(table), "code": code_text(code)}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


MAX_INT32 = 2**31 - 1


def count(text: str) -> int | None:
    """A v2 NM that must fit a FHIR integer / positiveInt (0..2^31-1), or None."""
    value = number(text)
    return value if isinstance(value, int) and 0 <= value <= MAX_INT32 else None


def code_text(value: str) -> str:
    """A FHIR ``code``: no leading, trailing or repeated whitespace."""
    return " ".join(value.split())


def number(text: str) -> int | float | None:
    """A v2 NM as a JSON number (int when it has no fraction), or None."""
    t = text.strip()
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", t):
        return None
    return float(t) if "." in t else int(t)
