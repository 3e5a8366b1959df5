"""A mutable HL7 v2 message for transform steps and plugins: read and write by path, add and remove segments.

Untouched segments keep their exact original text; a changed segment is re-joined and loses trailing empty fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from interop.errors import PathError
from interop.message import Path, Separators, escape, parse, parse_path, unescape

_EXPLICIT_OCC = re.compile(r"^\s*[A-Za-z][A-Za-z0-9]{2}\[")
_EXPLICIT_REP = re.compile(r"^\s*[A-Za-z][A-Za-z0-9]{2}(?:\[\d+\])?[-.]\d+\[")
_HEADERS = ("MSH", "FHS", "BHS")


@dataclass(frozen=True, slots=True)
class Target:
    """A path as a step means it: without ``[n]`` after the segment id it addresses every occurrence; without
    ``[r]`` after a bare field number it addresses the whole field (every repetition)."""

    path: Path
    every_occurrence: bool
    whole_field: bool
    text: str

    @property
    def segment_only(self) -> bool:
        return self.path.field == 0


def target(path: str) -> Target:
    p = parse_path(path)
    whole = p.field != 0 and p.component is None and not _EXPLICIT_REP.match(path)
    return Target(p, not _EXPLICIT_OCC.match(path), whole, path.strip().upper())


class MutableSegment:
    """One segment as a list of raw (escaped) field texts indexed by HL7 field number ([0] is the segment id)."""

    __slots__ = ("fields", "dirty", "_raw", "_seps")

    def __init__(self, raw: str, seps: Separators) -> None:
        self._raw = raw
        self._seps = seps
        parts = raw.split(seps.field)
        if parts[0] in _HEADERS:
            parts.insert(1, seps.field)
        self.fields = parts
        self.dirty = False

    @property
    def id(self) -> str:
        return self.fields[0]

    def to_er7(self) -> str:
        if not self.dirty:
            return self._raw
        fields = list(self.fields)
        while len(fields) > 1 and fields[-1] == "" and not (fields[0] in _HEADERS and len(fields) <= 3):
            fields.pop()
        if fields[0] in _HEADERS:
            return fields[0] + self._seps.field + self._seps.field.join(fields[2:])
        return self._seps.field.join(fields)

    # -- raw access by position ------------------------------------------------------------------
    def get_raw(self, field: int, repetition: int | None, component: int | None,
                subcomponent: int | None) -> str:
        """Raw text at a position; repetition None means the whole field."""
        value = self.fields[field] if field < len(self.fields) else ""
        if repetition is None or (self.id in _HEADERS and field in (1, 2)):
            return value if component is None else ""
        s = self._seps
        reps = value.split(s.repetition)
        value = reps[repetition - 1] if repetition <= len(reps) else ""
        if component is None:
            return value
        comps = value.split(s.component)
        value = comps[component - 1] if component <= len(comps) else ""
        if subcomponent is None:
            return value
        subs = value.split(s.subcomponent)
        return subs[subcomponent - 1] if subcomponent <= len(subs) else ""

    def set_raw(self, field: int, repetition: int | None, component: int | None, subcomponent: int | None,
                raw: str) -> None:
        """Replace the raw text at a position, padding with empty elements as needed."""
        if self.id in _HEADERS and field in (1, 2):
            raise PathError(f"{self.id}-{field} holds the message's separators and cannot be changed")
        while len(self.fields) <= field:
            self.fields.append("")
        s = self._seps
        if repetition is None:
            self.fields[field] = raw
        else:
            reps = self.fields[field].split(s.repetition) if self.fields[field] else [""]
            _pad(reps, repetition)
            if component is None:
                reps[repetition - 1] = raw
            else:
                comps = reps[repetition - 1].split(s.component)
                _pad(comps, component)
                if subcomponent is None:
                    comps[component - 1] = raw
                else:
                    subs = comps[component - 1].split(s.subcomponent)
                    _pad(subs, subcomponent)
                    subs[subcomponent - 1] = raw
                    comps[component - 1] = s.subcomponent.join(_trim(subs))
                reps[repetition - 1] = s.component.join(_trim(comps))
            self.fields[field] = s.repetition.join(_trim(reps))
        self.dirty = True

    def repetitions(self, field: int) -> list[str]:
        value = self.fields[field] if field < len(self.fields) else ""
        return value.split(self._seps.repetition) if value else []

    def set_repetitions(self, field: int, reps: list[str]) -> None:
        self.set_raw(field, None, None, None, self._seps.repetition.join(reps))

    def __repr__(self) -> str:
        return f"<MutableSegment {self.id}>"


def _pad(items: list[str], n: int) -> None:
    while len(items) < n:
        items.append("")


def _trim(items: list[str]) -> list[str]:
    out = list(items)
    while len(out) > 1 and out[-1] == "":
        out.pop()
    return out


class MutableMessage:
    """What plugins receive: ``get``/``set``/``clear`` by path, ``segments``, ``add_segment``, ``remove_segments``."""

    def __init__(self, text: str) -> None:
        msg = parse(text)
        self.separators: Separators = msg.separators
        self.segments: list[MutableSegment] = [MutableSegment(s.raw, msg.separators) for s in msg.segments]

    def to_er7(self) -> str:
        return "\r".join(s.to_er7() for s in self.segments)

    def lines(self) -> list[str]:
        return [s.to_er7() for s in self.segments]

    def all(self, segment_id: str) -> list[MutableSegment]:
        return [s for s in self.segments if s.id == segment_id]

    def __iter__(self) -> Iterator[MutableSegment]:
        return iter(list(self.segments))

    # -- path access ------------------------------------------------------------------------------
    def occurrences(self, t: Target) -> list[MutableSegment]:
        """The segments a target addresses (every occurrence, or the one it names)."""
        found = self.all(t.path.segment)
        if t.every_occurrence:
            return found
        return [found[t.path.occurrence - 1]] if t.path.occurrence <= len(found) else []

    def source(self, t: Target, context: MutableSegment | None = None) -> MutableSegment | None:
        """The one segment a path is read from: the context segment for the same id, else the one it names."""
        if context is not None and t.every_occurrence and context.id == t.path.segment:
            return context
        found = self.all(t.path.segment)
        return found[t.path.occurrence - 1] if t.path.occurrence <= len(found) else None

    def get(self, path: str | Target, context: MutableSegment | None = None) -> str:
        """Unescaped value at a path (first occurrence, or the context segment's own); '' when absent."""
        return unescape(self.get_raw(path, context), self.separators)

    def get_raw(self, path: str | Target, context: MutableSegment | None = None) -> str:
        t = target(path) if isinstance(path, str) else path
        seg = self.source(t, context)
        if seg is None or t.segment_only:
            return ""
        return seg.get_raw(t.path.field, _rep(t), t.path.component, t.path.subcomponent)

    def set(self, path: str | Target, value: str, *, raw: bool = False, segment: MutableSegment | None = None) -> None:
        """Write text (escaped unless raw) at a path: in `segment`, else every occurrence the path addresses; a
        missing segment is appended."""
        t = target(path) if isinstance(path, str) else path
        if t.segment_only:
            raise PathError(f"{t.text} names a segment; give a field such as {t.text}-1")
        text = value if raw else escape(value, self.separators)
        segments = [segment] if segment is not None else self.occurrences(t)
        if not segments:
            segments = [self.add_segment(t.path.segment)]
        for seg in segments:
            seg.set_raw(t.path.field, _rep(t), t.path.component, t.path.subcomponent, text)

    def clear(self, path: str | Target) -> None:
        """Empty the value at a path in every occurrence it addresses (absent segments stay absent)."""
        t = target(path) if isinstance(path, str) else path
        for seg in self.occurrences(t):
            self.set(t, "", raw=True, segment=seg)

    def add_segment(self, segment_id: str, fields: list[str] | None = None) -> MutableSegment:
        """Append a segment (fields are raw texts from field 1 on)."""
        raw = self.separators.field.join([segment_id, *(fields or [])])
        seg = MutableSegment(raw, self.separators)
        seg.dirty = True
        self.segments.append(seg)
        return seg

    def remove_segments(self, keep: Callable[[MutableSegment], bool]) -> int:
        """Keep only segments for which keep() is true (MSH always stays); returns how many were removed."""
        before = len(self.segments)
        self.segments = [s for i, s in enumerate(self.segments) if i == 0 or keep(s)]
        return before - len(self.segments)


def _rep(t: Target) -> int | None:
    return None if t.whole_field else t.path.repetition
