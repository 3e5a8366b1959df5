"""Compact HL7 v2 message structures (abstract message syntax) and a lazy-DFA matcher over segment ids.

Structures are written in the standard's own notation (``[ ]`` optional, ``{ }`` repeating, ``< | >`` choice)
as one superset per structure across v2.3..v2.8, so a message valid in any of those versions matches.
Matching uses regular-expression derivatives with hash-consed nodes, so each (state, segment) step is
computed once per process and then costs one dict lookup.
"""

from __future__ import annotations

import re
from functools import cache

_EPS, _NULL, _SYM, _CAT, _ALT, _STAR = range(6)


class Node:
    """A regular expression over segment ids; equal expressions are the same object (hash-consed)."""

    __slots__ = ("kind", "sym", "a", "b", "opts", "nullable", "trans")

    def __init__(self, kind: int, sym: str, a: Node | None, b: Node | None, opts: frozenset[Node]) -> None:
        self.kind = kind
        self.sym = sym
        self.a = a
        self.b = b
        self.opts = opts
        self.trans: dict[str, Node] = {}
        if kind == _EPS or kind == _STAR:
            self.nullable = True
        elif kind == _CAT:
            assert a is not None and b is not None
            self.nullable = a.nullable and b.nullable
        elif kind == _ALT:
            self.nullable = any(o.nullable for o in opts)
        else:
            self.nullable = False


_INTERN: dict[tuple[int, str, Node | None, Node | None, frozenset[Node]], Node] = {}
_NO_OPTS: frozenset[Node] = frozenset()


def _mk(kind: int, sym: str = "", a: Node | None = None, b: Node | None = None,
        opts: frozenset[Node] = _NO_OPTS) -> Node:
    key = (kind, sym, a, b, opts)
    node = _INTERN.get(key)
    if node is None:
        node = _INTERN.setdefault(key, Node(kind, sym, a, b, opts))
    return node


EPS = _mk(_EPS)
NULL = _mk(_NULL)


def sym(segment_id: str) -> Node:
    return _mk(_SYM, segment_id)


def cat(a: Node, b: Node) -> Node:
    if a is NULL or b is NULL:
        return NULL
    if a is EPS:
        return b
    if b is EPS:
        return a
    if a.kind == _CAT:  # right-associate so equal sequences intern to one node
        assert a.a is not None and a.b is not None
        return cat(a.a, cat(a.b, b))
    return _mk(_CAT, a=a, b=b)


def alt(*nodes: Node) -> Node:
    flat: set[Node] = set()
    for n in nodes:
        if n.kind == _ALT:
            flat.update(n.opts)
        elif n is not NULL:
            flat.add(n)
    if not flat:
        return NULL
    if len(flat) == 1:
        return next(iter(flat))
    return _mk(_ALT, opts=frozenset(flat))


def star(a: Node) -> Node:
    if a is EPS or a is NULL:
        return EPS
    if a.kind == _STAR:
        return a
    return _mk(_STAR, a=a)


def step(node: Node, segment_id: str) -> Node:
    """The state after reading one segment (NULL when the segment is not allowed here)."""
    nxt = node.trans.get(segment_id)
    if nxt is not None:
        return nxt
    kind = node.kind
    if kind == _SYM:
        nxt = EPS if node.sym == segment_id else NULL
    elif kind == _CAT:
        assert node.a is not None and node.b is not None
        first = cat(step(node.a, segment_id), node.b)
        nxt = alt(first, step(node.b, segment_id)) if node.a.nullable else first
    elif kind == _ALT:
        nxt = alt(*(step(o, segment_id) for o in node.opts))
    elif kind == _STAR:
        assert node.a is not None
        nxt = cat(step(node.a, segment_id), node)
    else:
        nxt = NULL
    node.trans[segment_id] = nxt
    return nxt


def expected(node: Node) -> set[str]:
    """Segment ids that may come next."""
    kind = node.kind
    if kind == _SYM:
        return {node.sym}
    if kind == _CAT:
        assert node.a is not None and node.b is not None
        return expected(node.a) | expected(node.b) if node.a.nullable else expected(node.a)
    if kind == _ALT:
        out: set[str] = set()
        for o in node.opts:
            out |= expected(o)
        return out
    if kind == _STAR:
        assert node.a is not None
        return expected(node.a)
    return set()


def required_next(node: Node) -> str | None:
    """The first segment that must still come (None when the structure may end here)."""
    if node.nullable:
        return None
    if node.kind == _SYM:
        return node.sym
    if node.kind == _CAT:
        assert node.a is not None and node.b is not None
        return required_next(node.a) if not node.a.nullable else required_next(node.b)
    if node.kind == _ALT:
        names = sorted(n for n in (required_next(o) for o in node.opts) if n)
        return " or ".join(names) if names else None
    return None


_TOKEN = re.compile(r"[A-Z][A-Z0-9]{2}|[\[\]{}<>|]")


def compile_structure(notation: str) -> tuple[Node, frozenset[str]]:
    """Compile ``MSH [{SFT}] EVN PID ...`` into a matcher node and its segment alphabet."""
    tokens = _TOKEN.findall(notation)
    pos = 0

    def seq(stop: str) -> list[Node]:
        nonlocal pos
        items: list[Node] = []
        while pos < len(tokens) and tokens[pos] not in stop:
            items.append(item())
        return items

    def chain(items: list[Node]) -> Node:
        node = EPS
        for n in reversed(items):
            node = cat(n, node)
        return node

    def item() -> Node:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "[":
            inner = chain(seq("]"))
            pos += 1
            return alt(EPS, inner)
        if tok == "{":
            inner = chain(seq("}"))
            pos += 1
            return cat(inner, star(inner))
        if tok == "<":
            choices = [chain(seq("|>"))]
            while tokens[pos] == "|":
                pos += 1
                choices.append(chain(seq("|>")))
            pos += 1
            return alt(*choices)
        return sym(tok)

    node = chain(seq(""))
    alphabet = frozenset(t for t in tokens if t[0].isalpha())
    return node, alphabet


# Supersets over v2.3..v2.8 (later-version segments such as PRT/ARV are allowed where the newest version
# puts them; the validator warns when the message's own version predates them).
_INSURANCE = "[{IN1 [IN2] [{IN3}] [{ROL}]}]"
_ADT_A01 = (
    "MSH [{SFT}] [UAC] EVN PID [PD1] [{ARV}] [{ROL}] [{NK1}] PV1 [PV2] [{ARV}] [{ROL}] [{DB1}] "
    "[{OBX [{PRT}]}] [{AL1}] [{DG1}] [DRG] [{PR1 [{ROL}]}] [{GT1}] " + _INSURANCE + " [ACC] [UB1] [UB2] [PDA]"
)
_PATIENT_ORDER = "[PID [PD1] [{PRT}] [{NTE}] [{NK1}] [{ARV}] [PV1 [PV2] [{PRT}]] [{IN1 [IN2] [IN3]}] [GT1] [{AL1}]]"
NOTATION: dict[str, str] = {
    "ADT_A01": _ADT_A01,
    "ADT_A05": _ADT_A01,
    "ADT_A02": "MSH [{SFT}] [UAC] EVN PID [PD1] [{ARV}] [{ROL}] PV1 [PV2] [{ARV}] [{ROL}] [{DB1}] "
               "[{OBX [{PRT}]}] [PDA]",
    "ADT_A03": "MSH [{SFT}] [UAC] EVN PID [PD1] [{ARV}] [{ROL}] [{NK1}] PV1 [PV2] [{ARV}] [{ROL}] [{DB1}] "
               "[{AL1}] [{DG1}] [DRG] [{PR1 [{ROL}]}] [{OBX [{PRT}]}] [{GT1}] " + _INSURANCE + " [ACC] [PDA]",
    "ADT_A09": "MSH [{SFT}] [UAC] EVN PID [PD1] PV1 [PV2] [{DB1}] [{OBX}] [{DG1}]",
    "ADT_A39": "MSH [{SFT}] [UAC] EVN {PID [PD1] MRG [PV1]}",
    "ORU_R01": "MSH [{SFT}] [UAC] {[PID [PD1] [{PRT}] [{NTE}] [{NK1}] [{ARV}] [{OBX [{PRT}]}] "
               "[PV1 [PV2] [{PRT}]]] {[ORC [{PRT}]] OBR [{NTE}] [{PRT}] [{TQ1 [{TQ2}]}] [CTD] "
               "[{OBX [{PRT}] [{NTE}]}] [{FT1}] [{CTI}] [{SPM [{OBX [{PRT}]}]}]}} [DSC]",
    "ORM_O01": "MSH [{SFT}] [{NTE}] " + _PATIENT_ORDER + " {ORC [{TQ1 [{TQ2}]}] "
               "[<OBR|RQD|RQ1|RXO|ODS|ODT> [{NTE}] [CTD] [{DG1}] [{OBX [{NTE}]}]] [{FT1}] [{CTI}] [BLG]}",
    "OML_O21": "MSH [{SFT}] [UAC] [{NTE}] " + _PATIENT_ORDER + " {ORC [{PRT}] [{TQ1 [{TQ2}]}] "
               "[OBR [{PRT}] [TCD] [{NTE}] [CTD] [{DG1}] [{OBX [{PRT}] [TCD] [{NTE}]}] "
               "[{SPM [{OBX [{PRT}]}] [{SAC [{OBX}]}]}]] [{FT1}] [{CTI}] [BLG]}",
    "VXU_V04": "MSH [{SFT}] [UAC] PID [PD1] [{PRT}] [{NK1}] [{ARV}] [PV1 [PV2] [{PRT}]] [{GT1}] "
               "[{IN1 [IN2] [IN3]}] [{[ORC [{PRT}]] [{TQ1 [{TQ2}]}] RXA [RXR] [{OBX [{PRT}] [{NTE}]}]}]",
    "RDE_O11": "MSH [{SFT}] [UAC] [{NTE}] " + _PATIENT_ORDER + " {ORC [{PRT}] [{TQ1 [{TQ2}]}] "
               "[RXO [{NTE}] [{RXR}] [{RXC [{NTE}]}]] [{PRT}] RXE [{NTE}] [{PRT}] [{TQ1 [{TQ2}]}] {RXR} "
               "[{RXC}] [{OBX [{PRT}] [{NTE}]}] [{FT1}] [BLG] [{CTI}]}",
    "SIU_S12": "MSH [{SFT}] [UAC] SCH [{TQ1}] [{NTE}] [{PID [PD1] [{PRT}] [PV1] [PV2] [{PRT}] [{OBX}] "
               "[{DG1}]}] {RGS [{AIS [{NTE}]}] [{AIG [{NTE}]}] [{AIL [{NTE}]}] [{AIP [{NTE}]}]}",
    "MDM_T02": "MSH [{SFT}] [UAC] EVN PID PV1 [{ORC [{PRT}] [{TQ1 [{TQ2}]}] OBR [{NTE}]}] TXA [{PRT}] "
               "[{CON}] {OBX [{PRT}] [{NTE}]}",
    "MDM_T01": "MSH [{SFT}] [UAC] EVN PID PV1 [{ORC [{PRT}] [{TQ1 [{TQ2}]}] OBR [{NTE}]}] TXA [{PRT}] [{CON}]",
    "ACK": "MSH [{SFT}] [UAC] MSA [{ERR}]",
}

# Trigger events to structures (MSH-9.3 wins when it names a known structure).
EVENT_STRUCTURE: dict[str, str] = {
    **{f"ADT^{e}": "ADT_A01" for e in ("A01", "A04", "A08", "A13")},
    "ADT^A02": "ADT_A02",
    "ADT^A03": "ADT_A03",
    **{f"ADT^{e}": "ADT_A05" for e in ("A05", "A14", "A28", "A31")},
    **{f"ADT^{e}": "ADT_A09" for e in ("A09", "A10", "A11")},
    **{f"ADT^{e}": "ADT_A39" for e in ("A39", "A40", "A41", "A42")},
    "ORU^R01": "ORU_R01",
    "ORM^O01": "ORM_O01",
    "OML^O21": "OML_O21",
    "VXU^V04": "VXU_V04",
    "RDE^O11": "RDE_O11",
    **{f"SIU^S{n}": "SIU_S12" for n in range(12, 27)},
    **{f"MDM^T{n:02d}": "MDM_T02" for n in (2, 4, 6, 8, 10)},
    **{f"MDM^T{n:02d}": "MDM_T01" for n in (1, 3, 5, 7, 9, 11)},
}

# The first version defining a segment, for segments a supported structure may carry.
SEGMENT_SINCE: dict[str, tuple[int, ...]] = {
    "PRT": (2, 7), "ARV": (2, 8), "UAC": (2, 5), "SFT": (2, 5), "TQ1": (2, 5), "TQ2": (2, 5),
    "SPM": (2, 5), "SAC": (2, 4), "TCD": (2, 5), "CON": (2, 6), "CTI": (2, 4),
}


@cache
def structure(name: str) -> tuple[Node, frozenset[str]] | None:
    """The compiled matcher for a structure name, or None when Lifeline has no definition for it."""
    notation = NOTATION.get(name)
    return compile_structure(notation) if notation else None


def structure_for(code: str, trigger: str, declared: str) -> str | None:
    """The structure a message uses: MSH-9.3 when known, else by message code and trigger."""
    if declared in NOTATION:
        return declared
    if code == "ACK":
        return "ACK"
    return EVENT_STRUCTURE.get(f"{code}^{trigger}")
