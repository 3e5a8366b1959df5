"""Fast tolerant HL7 v2 parser with typed access by path (``PID-3[1].1``, ``OBX[2]-5``).

Segments are split eagerly (cheap); fields are split on first access, so routing and ACKing a
message touches only MSH. Values returned by ``get`` are unescaped; ``raw`` accessors are not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from interop.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    HL7ParseError,
    MessageTooLarge,
    PathError,
)

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})


@dataclass(frozen=True, slots=True)
class Separators:
    """The delimiters a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written in a header."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_SEPARATORS = Separators()


def normalize(text: str) -> str:
    """Strip a BOM and surrounding whitespace, turn CRLF / LF line endings into the HL7 CR."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.strip("\r\n\t \x00\x0b\x1c")


def separators_from_header(header: str) -> Separators:
    """Read the delimiters from an MSH / FHS / BHS segment's first characters."""
    if len(header) < 8:
        raise HL7ParseError(f"{header[:3] or 'MSH'} segment is too short to declare its separators")
    field = header[3]
    if field.isalnum() or field in " \r\n" or not _printable(field):
        raise HL7ParseError(f"MSH-1 field separator {field!r} is not a valid separator", field=1)
    end = header.find(field, 4)
    enc = header[4:end] if end != -1 else header[4:]
    if len(enc) < 4 or len(enc) > 5:
        raise HL7ParseError(
            f"MSH-2 encoding characters {enc!r} must be 4 (or 5 with truncation) characters", field=2
        )
    chars = field + enc
    if len(set(chars)) != len(chars) or any(c.isalnum() or c in " \r\n" for c in chars):
        raise HL7ParseError(f"MSH-2 encoding characters {enc!r} are not distinct delimiters", field=2)
    if not _printable(chars):
        # A control character (NUL, VT, FS, DEL, ...) as a delimiter would make the message unreadable to peers.
        raise HL7ParseError("MSH-1/MSH-2 declare a control or non-ASCII character as a separator",
                            field=1 if not _printable(field) else 2)
    return Separators(field, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else "")


def _printable(chars: str) -> bool:
    return all("!" <= c <= "~" for c in chars)


_ESCAPE_NAMED = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(value: str, seps: Separators = DEFAULT_SEPARATORS) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ ...) to text."""
    esc = seps.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end == -1:  # a lone escape character: keep it literally (tolerant)
            out.append(value[i:])
            break
        token = value[i + 1 : end]
        i = end + 1
        if token in _ESCAPE_NAMED:
            out.append(getattr(seps, _ESCAPE_NAMED[token]))
        elif token == ".br":
            out.append("\n")
        elif token.startswith("X") and len(token) % 2 == 1:
            try:
                out.append(bytes.fromhex(token[1:]).decode("utf-8", errors="replace"))
            except ValueError:
                out.append(esc + token + esc)
        elif token in ("H", "N") or token.startswith((".sp", ".in", ".ti", ".sk", ".fi", ".nf", ".ce")):
            continue  # formatting hints carry no text
        elif token.startswith(("C", "M", "Z")):
            continue  # character-set switches and locally defined escapes: no text of their own
        else:
            out.append(esc + token + esc)
    return "".join(out)


def escape(value: str, seps: Separators = DEFAULT_SEPARATORS) -> str:
    """Escape delimiters in free text so it can be placed in a field."""
    specials = (seps.escape, seps.field, seps.component, seps.repetition, seps.subcomponent)
    if not any(c in value for c in specials) and "\n" not in value and "\r" not in value:
        return value
    e = seps.escape
    table = {
        seps.escape: f"{e}E{e}",
        seps.field: f"{e}F{e}",
        seps.component: f"{e}S{e}",
        seps.repetition: f"{e}R{e}",
        seps.subcomponent: f"{e}T{e}",
        "\n": f"{e}.br{e}",
        "\r": f"{e}.br{e}",
    }
    return "".join(table.get(c, c) for c in value.replace("\r\n", "\n"))


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed field path: ``SEG[occ]-field[rep].component.subcomponent`` (all 1-based)."""

    segment: str
    occurrence: int = 1
    field: int = 0
    repetition: int = 1
    component: int | None = None
    subcomponent: int | None = None

    def __str__(self) -> str:
        text = self.segment + (f"[{self.occurrence}]" if self.occurrence != 1 else "")
        if self.field:
            text += f"-{self.field}" + (f"[{self.repetition}]" if self.repetition != 1 else "")
            if self.component is not None:
                text += f".{self.component}"
                if self.subcomponent is not None:
                    text += f".{self.subcomponent}"
        return text


_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\d+)\])?"
    r"(?:[-.](?P<field>\d+)(?:\[(?P<rep>\d+)\])?"
    r"(?:[.-](?P<comp>\d+)(?:[.-](?P<sub>\d+))?)?)?$"
)


@lru_cache(maxsize=1024)
def parse_path(path: str) -> Path:
    """Parse ``PID-3[1].1`` / ``OBX[2]-5`` / ``MSH-9.2`` into a :class:`Path`."""
    m = _PATH.match(path.strip().upper())
    if not m:
        raise PathError(f"{path!r} is not an HL7 path like 'PID-3[1].1' or 'OBX[2]-5'")
    values = [int(v) if v else None for v in m.group("occ", "field", "rep", "comp", "sub")]
    occ, field, rep, comp, sub = values
    if 0 in (occ, field, rep, comp, sub):
        raise PathError(f"{path!r}: positions are 1-based")
    return Path(m.group("seg"), occ or 1, field or 0, rep or 1, comp, sub)


class Segment:
    """One segment; fields are split on first use."""

    __slots__ = ("id", "raw", "_seps", "_fields", "_reps")

    def __init__(self, raw: str, seps: Separators) -> None:
        self.raw = raw
        self.id = raw[:3]
        self._seps = seps
        self._fields: list[str] | None = None
        # Split repetitions per field, kept so a loop over the repetitions of a field stays linear.
        self._reps: dict[int, list[str]] = {}

    @property
    def fields(self) -> list[str]:
        """Raw field texts indexed by HL7 field number (index 0 is the segment id)."""
        if self._fields is None:
            parts = self.raw.split(self._seps.field)
            if self.id in ("MSH", "FHS", "BHS"):
                # MSH-1 is the field separator itself, so numbering shifts by one.
                parts.insert(1, self._seps.field)
            self._fields = parts
        return self._fields

    def __len__(self) -> int:
        """The number of the last field present."""
        return len(self.fields) - 1

    def field(self, n: int) -> str:
        """Raw (escaped) text of field n, '' when absent."""
        f = self.fields
        return f[n] if 0 <= n < len(f) else ""

    def repetitions(self, n: int) -> list[str]:
        """Raw repetitions of field n ([] when empty)."""
        value = self.field(n)
        if not value:
            return []
        if self.id == "MSH" and n in (1, 2):
            return [value]
        reps = self._reps.get(n)
        if reps is None:
            reps = self._reps[n] = value.split(self._seps.repetition)
        return list(reps)

    def get(self, field: int, repetition: int = 1, component: int | None = None,
            subcomponent: int | None = None) -> str:
        """Unescaped value at field[rep].component.subcomponent; '' when absent."""
        value = self.field(field)
        if not value:
            return ""
        seps = self._seps
        if self.id in ("MSH", "FHS", "BHS") and field in (1, 2):
            return value if repetition == 1 and not component else ""
        if seps.repetition in value:
            reps = self._reps.get(field)
            if reps is None:
                reps = self._reps[field] = value.split(seps.repetition)
            value = reps[repetition - 1] if repetition <= len(reps) else ""
        elif repetition != 1:
            return ""
        if component is not None:
            comps = value.split(seps.component)
            value = comps[component - 1] if component <= len(comps) else ""
            if subcomponent is not None:
                subs = value.split(seps.subcomponent)
                value = subs[subcomponent - 1] if subcomponent <= len(subs) else ""
        return unescape(value, seps)

    def components(self, field: int, repetition: int = 1) -> list[str]:
        """Unescaped components of one repetition of a field."""
        value = self.field(field)
        if not value:
            return []
        reps = self._reps.get(field)
        if reps is None:
            reps = self._reps[field] = value.split(self._seps.repetition)
        if repetition > len(reps):
            return []
        seps = self._seps
        return [unescape(c, seps) for c in reps[repetition - 1].split(seps.component)]

    def __repr__(self) -> str:
        return f"<Segment {self.id}>"


class Message:
    """A parsed HL7 v2 message."""

    __slots__ = ("text", "separators", "segments", "ignored_lines", "_index")

    def __init__(self, text: str, separators: Separators, segments: list[Segment],
                 ignored_lines: list[int]) -> None:
        self.text = text
        self.separators = separators
        self.segments = segments
        self.ignored_lines = ignored_lines
        self._index: dict[str, list[Segment]] | None = None

    # -- segments ---------------------------------------------------------------------------
    def all(self, segment_id: str) -> list[Segment]:
        """Every segment with this id, in order."""
        if self._index is None:
            index: dict[str, list[Segment]] = {}
            for seg in self.segments:
                index.setdefault(seg.id, []).append(seg)
            self._index = index
        return self._index.get(segment_id, [])

    def segment(self, segment_id: str, occurrence: int = 1) -> Segment | None:
        """The n-th segment with this id (1-based), or None."""
        found = self.all(segment_id)
        return found[occurrence - 1] if 0 < occurrence <= len(found) else None

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def msh(self) -> Segment:
        """The header segment (always present after a successful parse)."""
        return self.segments[0]

    # -- path access ------------------------------------------------------------------------
    def get(self, path: str | Path) -> str:
        """Unescaped value at a path such as ``PID-3[1].1``; '' when absent."""
        p = parse_path(path) if isinstance(path, str) else path
        seg = self.segment(p.segment, p.occurrence)
        if seg is None or not p.field:
            return ""
        return seg.get(p.field, p.repetition, p.component, p.subcomponent)

    def get_all(self, path: str) -> list[str]:
        """Values of a path across every occurrence of its segment (``OBX-5`` of each OBX)."""
        p = parse_path(path)
        return [s.get(p.field, p.repetition, p.component, p.subcomponent) for s in self.all(p.segment)]

    # -- header shortcuts -------------------------------------------------------------------
    @property
    def message_code(self) -> str:
        return self.msh.get(9, component=1)

    @property
    def trigger_event(self) -> str:
        return self.msh.get(9, component=2)

    @property
    def message_structure(self) -> str:
        return self.msh.get(9, component=3)

    @property
    def message_type(self) -> str:
        """``ADT^A01`` style type (code and trigger)."""
        code, event = self.message_code, self.trigger_event
        return f"{code}^{event}" if event else code

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def version(self) -> str:
        return self.msh.get(12, component=1)

    @property
    def processing_id(self) -> str:
        return self.msh.get(11, component=1)

    @property
    def sending_application(self) -> str:
        return self.msh.get(3, component=1)

    @property
    def sending_facility(self) -> str:
        return self.msh.get(4, component=1)

    @property
    def receiving_application(self) -> str:
        return self.msh.get(5, component=1)

    @property
    def receiving_facility(self) -> str:
        return self.msh.get(6, component=1)

    def to_er7(self, line_ending: str = "\r") -> str:
        """The message as ER7 text (segments joined by CR)."""
        return line_ending.join(s.raw for s in self.segments)

    def __repr__(self) -> str:
        return f"<Message {self.message_type} {self.control_id!r} v{self.version}>"


@dataclass(frozen=True, slots=True)
class Limits:
    """How large one message may be in segments, and one segment in characters (settings give the values)."""

    max_segments: int = 10_000
    max_segment_chars: int = 4 * 1024 * 1024


NO_LIMITS = Limits(max_segments=2**62, max_segment_chars=2**62)


def check_limits(text: str, limits: Limits) -> None:
    """Raise :class:`MessageTooLarge` naming the first segment over the limits (text split on CR)."""
    if limits is NO_LIMITS:
        return
    count = 0
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\r"), start=1):
        if not line:
            continue
        count += 1
        seg_id = line[:3] if _SEGMENT_ID.match(line) else "MSH"
        seen[seg_id] = occurrence = seen.get(seg_id, 0) + 1
        if len(line) > limits.max_segment_chars:
            raise MessageTooLarge(
                f"{seg_id} segment on line {lineno} is longer than {limits.max_segment_chars} characters",
                segment=seg_id, occurrence=occurrence)
        if count > limits.max_segments:
            raise MessageTooLarge(f"message has more than {limits.max_segments} segments (line {lineno}, a "
                                  f"{seg_id} segment, is over the limit)", segment=seg_id, occurrence=occurrence)


def _split_segments(text: str, seps: Separators) -> tuple[list[Segment], list[int]]:
    segments: list[Segment] = []
    ignored: list[int] = []
    for lineno, line in enumerate(text.split("\r"), start=1):
        if not line:
            continue
        if len(line) >= 3 and (len(line) == 3 or line[3] == seps.field) and _SEGMENT_ID.match(line):
            segments.append(Segment(line, seps))
        elif line.strip("\x00\x1a\x1c\x0b \t"):
            # Bytes that are not a segment (trailing garbage, a stray line): kept out, reported.
            ignored.append(lineno)
    return segments, ignored


def parse(text: str | bytes, encoding: str = "utf-8", *, limits: Limits = NO_LIMITS) -> Message:
    """Parse one message tolerantly; raise :class:`HL7ParseError` when it has no usable header or exceeds limits."""
    if isinstance(text, bytes):
        text = text.decode(encoding, errors="replace")
    text = normalize(text)
    if not text:
        raise HL7ParseError("empty message", code=REQUIRED_FIELD_MISSING)
    start = text.find("MSH")
    if start != 0:
        if start == -1:
            raise HL7ParseError("no MSH segment: a message must start with MSH", code=SEGMENT_SEQUENCE_ERROR)
        lead = text[:start]
        if lead.strip("\x00\x0b\x1c\r \t"):
            raise HL7ParseError("the message does not start with MSH", code=SEGMENT_SEQUENCE_ERROR)
        text = text[start:]
    seps = separators_from_header(text[: text.find("\r")] if "\r" in text else text)
    check_limits(text, limits)
    segments, ignored = _split_segments(text, seps)
    if not segments or segments[0].id != "MSH":
        raise HL7ParseError("the message does not start with MSH", code=SEGMENT_SEQUENCE_ERROR)
    if sum(1 for s in segments if s.id == "MSH") > 1:
        raise HL7ParseError(
            "more than one MSH segment: send a batch (FHS/BHS) or one message per frame",
            code=SEGMENT_SEQUENCE_ERROR, occurrence=2,
        )
    return Message(text, seps, segments, ignored)


@dataclass(frozen=True, slots=True)
class Batch:
    """A file / batch (FHS, BHS ... BTS, FTS) and the messages it carries."""

    header_segments: list[Segment]
    trailer_segments: list[Segment]
    messages: list[Message]

    def header(self, segment_id: str) -> Segment | None:
        for seg in self.header_segments + self.trailer_segments:
            if seg.id == segment_id:
                return seg
        return None

    @property
    def declared_count(self) -> int | None:
        """Message count stated in BTS-1, when present and numeric."""
        bts = self.header("BTS")
        value = bts.get(1) if bts else ""
        # isdigit() accepts "²", which int() rejects.
        return int(value) if value.isascii() and value.isdigit() else None


def is_batch(text: str) -> bool:
    """True when the text starts with a batch or file header."""
    head = normalize(text)[:3]
    return head in ("FHS", "BHS")


def parse_batch(text: str | bytes, encoding: str = "utf-8") -> Batch:
    """Split a batch into its envelope segments and messages, each parsed tolerantly."""
    if isinstance(text, bytes):
        text = text.decode(encoding, errors="replace")
    text = normalize(text)
    if not text:
        raise HL7ParseError("empty batch", code=REQUIRED_FIELD_MISSING)
    head = text[:3]
    if head not in ("FHS", "BHS", "MSH"):
        raise HL7ParseError("a batch must start with FHS, BHS or MSH", code=SEGMENT_SEQUENCE_ERROR)
    seps = separators_from_header(text.split("\r", 1)[0])
    headers: list[Segment] = []
    trailers: list[Segment] = []
    messages: list[Message] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            messages.append(parse("\r".join(current)))
            current.clear()

    for line in text.split("\r"):
        if not line.strip():
            continue
        seg_id = line[:3]
        if seg_id in _BATCH_SEGMENTS:
            flush()
            (headers if seg_id in ("FHS", "BHS") else trailers).append(Segment(line, seps))
        elif seg_id == "MSH":
            flush()
            current.append(line)
        elif current:
            current.append(line)
        else:
            raise HL7ParseError(f"segment {seg_id!r} outside of a message in the batch")
    flush()
    return Batch(headers, trailers, messages)
