"""The step language: declarative transform steps and their conditions, as validated configuration models.

A step is a mapping with exactly one action key (``set``, ``copy``, ``clear``, ``delete``, ``keep_segments``,
``drop_segments``, ``map``, ``split``, ``merge``, ``filter``, ``plugin``), that action's options, and an optional
``when``. Nothing in a step is evaluated as code: templates only substitute ``{PATH}`` placeholders.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from interop.errors import PathError
from interop.message import parse_path

ACTIONS = ("set", "copy", "clear", "delete", "keep_segments", "drop_segments", "map", "split", "merge",
           "filter", "plugin")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SEGMENT_GLOB = re.compile(r"^[A-Z0-9*?\[\]!]{1,3}$|^[A-Z0-9*?]{1,3}$")


def _path(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parse_path(value)
    except PathError as exc:
        raise ValueError(str(exc)) from exc
    return value.strip()


def _field_path(value: Any) -> Any:
    value = _path(value)
    if isinstance(value, str) and parse_path(value).field == 0:
        raise ValueError(f"{value!r} names a segment; give a field such as {value}-1")
    return value


StepPath = Annotated[str, BeforeValidator(_path)]
FieldPath = Annotated[str, BeforeValidator(_field_path)]


def _listify(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


def template_paths(template: str) -> list[str]:
    """The HL7 paths a template reads (``{PID-5.1}``); ``{{`` and ``}}`` are literal braces."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template.replace("{{", "").replace("}}", ""))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FieldTest(_Model):
    """Tests on one field's value; every test given must hold."""

    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None
    glob: list[str] | None = None  # fnmatch patterns: ADT^A0*, Z??
    matches: str | None = None  # a regular expression searched in the value
    exists: bool | None = None  # true: the value is not empty; false: it is empty

    @field_validator("in_", "not_in", "glob", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _listify(v)

    @field_validator("matches")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v


def _test(v: Any) -> Any:
    if isinstance(v, str | list):
        return {"in": _listify(v)}
    if isinstance(v, bool):
        return {"exists": v}
    return v


Condition = dict[StepPath, Annotated[FieldTest, BeforeValidator(_test)]]


class MapDefault(_Model):
    value: str


MapMiss = Literal["keep", "reject", "clear"] | MapDefault


class Step(_Model):
    """One transform step (exactly one action key plus its options)."""

    when: Condition | None = None
    # set: a literal value, or a template reading other fields ("{PID-5.1}, {PID-5.2}")
    set: FieldPath | None = None
    value: str | None = None
    template: str | None = None
    # copy: from one path to another (raw, so components travel along)
    copy_: FieldPath | None = Field(default=None, alias="copy")
    to: FieldPath | None = None
    clear: FieldPath | None = None
    delete: StepPath | None = None  # a segment (ZPI, OBX[2]) or a field / repetition
    keep_segments: list[str] | None = None  # segment id globs; MSH always stays
    drop_segments: list[str] | None = None
    # map: a value through a code table; `to` writes the result elsewhere; default when the code is not in it
    map: FieldPath | None = None
    table: str | None = None
    default: MapMiss = "keep"
    split: FieldPath | None = None  # one value -> repetitions, on `separator`
    merge: FieldPath | None = None  # repetitions -> one value, joined with `separator`
    separator: str | None = None
    filter: str | None = None  # the reason recorded when `when` holds (or always, without `when`)
    plugin: str | None = None  # an entry point name in group lifeline.transforms
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("keep_segments", "drop_segments", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _listify(v)

    @field_validator("keep_segments", "drop_segments")
    @classmethod
    def _globs(cls, v: list[str] | None) -> list[str] | None:
        for g in v or []:
            if not _SEGMENT_GLOB.match(g):
                raise ValueError(f"{g!r} is not a segment id or glob such as 'Z*' or 'OBX'")
        return v

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [a for a in ACTIONS if self._action_value(a) is not None]
        if len(given) != 1:
            raise ValueError(f"a step needs exactly one of {', '.join(ACTIONS)}"
                             + (f"; found {', '.join(given)}" if given else ""))
        kind = given[0]
        allowed = {"set": {"value", "template"}, "copy": {"to"}, "map": {"table", "default", "to"},
                   "split": {"separator"}, "merge": {"separator"}, "plugin": {"options"}}.get(kind, set())
        for opt in ("value", "template", "to", "table", "separator"):
            if getattr(self, opt) is not None and opt not in allowed:
                raise ValueError(f"{opt!r} does not belong to a {kind} step")
        if self.options and "options" not in allowed:
            raise ValueError(f"'options' does not belong to a {kind} step")
        if self.default != "keep" and kind != "map":
            raise ValueError(f"'default' does not belong to a {kind} step")
        if kind == "set":
            if (self.value is None) == (self.template is None):
                raise ValueError("a set step needs exactly one of value or template")
            for p in template_paths(self.template or ""):
                _field_path(p)
            rest = _PLACEHOLDER.sub("", (self.template or "").replace("{{", "").replace("}}", ""))
            if "{" in rest or "}" in rest:
                raise ValueError("a template brace is not closed; write {{ or }} for a literal brace")
        if kind == "copy" and self.to is None:
            raise ValueError("a copy step needs to: <path>")
        if kind == "map" and not self.table:
            raise ValueError("a map step needs table: <code table name>")
        if kind in ("split", "merge"):
            if not self.separator:
                raise ValueError(f"a {kind} step needs separator: <text>")
            t = self._action_value(kind)
            assert isinstance(t, str)
            if parse_path(t).component is not None:
                raise ValueError(f"{kind} works on a whole field such as PID-3, not a component")
        return self

    def _action_value(self, action: str) -> Any:
        return self.copy_ if action == "copy" else getattr(self, action)

    @property
    def kind(self) -> str:
        return next(a for a in ACTIONS if self._action_value(a) is not None)

    def describe(self) -> str:
        """A short label for errors and dry-run output: 'map PV1-3.1 (wards)'."""
        kind = self.kind
        arg = self._action_value(kind)
        if isinstance(arg, list):
            arg = ",".join(arg)
        extra = f" ({self.table})" if kind == "map" else f" -> {self.to}" if kind == "copy" else ""
        return f"{kind} {arg}{extra}"


class CodeTable(_Model):
    """A named code table: inline `values`, or a two-column CSV file (`from,to`, header optional)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    org: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "default"
    values: dict[str, str] = Field(default_factory=dict)
    csv: str | None = None  # read once when the configuration is loaded; the version keeps the values

    @field_validator("values", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): "" if val is None else str(val) for k, val in v.items()}
        return v


def parse_csv_table(text: str) -> dict[str, str]:
    """Two columns, `from,to`; a first row `from,to` (any case) is a header; blank lines are skipped."""
    import csv
    import io

    out: dict[str, str] = {}
    # newline="": the csv module reads CR, LF and CRLF line ends itself (a bare CR was a csv.Error, an API 500).
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for i, row in enumerate(reader):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2:
                raise ValueError(f"line {i + 1}: expected two columns, from and to")
            if i == 0 and [c.strip().lower() for c in row[:2]] == ["from", "to"]:
                continue
            out[row[0].strip()] = row[1].strip()
    except csv.Error as exc:
        raise ValueError(f"line {reader.line_num}: {exc}") from None
    return out
