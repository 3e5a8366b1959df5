"""Run a route's steps over one message: pure, deterministic, and every failure names its step."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from interop.message import escape
from interop.transform.message import MutableMessage, MutableSegment, Target, target
from interop.transform.plugins import Filter, PluginFn, load_plugin
from interop.transform.steps import _PLACEHOLDER, Condition, MapDefault, Step


class TransformError(Exception):
    """A step could not be applied: a permanent failure of this message for this route, naming the step."""

    def __init__(self, index: int, step: str, reason: str) -> None:
        self.index = index
        self.step = step
        self.reason = reason
        super().__init__(f"steps[{index}] {step}: {reason}")

    @property
    def where(self) -> str:
        return f"steps[{self.index}] {self.step}"


@dataclass
class StepResult:
    index: int
    step: str
    applied: bool  # false when its `when` did not hold anywhere
    diff: list[str] = field(default_factory=list)  # '-old segment' / '+new segment' lines (dry run only)


@dataclass
class TransformOutcome:
    text: str  # the message after the steps (ER7, CR-separated)
    filtered: str | None = None  # the filter's reason when a filter step stopped the message
    filtered_by: str | None = None
    steps: list[StepResult] = field(default_factory=list)


Tables = Mapping[str, Mapping[str, str]]


def run_steps(text: str, steps: Sequence[Step], tables: Tables | None = None, *, trace: bool = False,
              plugins: Callable[[str], PluginFn] = load_plugin) -> TransformOutcome:
    """Apply steps in order; a filter step stops with its reason; any failure raises TransformError."""
    msg = MutableMessage(text)
    if not steps:
        return TransformOutcome(text=msg.to_er7())
    tables = tables or {}
    results: list[StepResult] = []
    for i, step in enumerate(steps):
        label = step.describe()
        before = msg.lines() if trace else []
        try:
            applied = _apply(msg, step, tables, plugins)
        except Filter as f:
            return _filtered(msg, results, i, label, f.reason)
        except TransformError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; it becomes a typed step failure
            raise TransformError(i, label, f"{type(exc).__name__}: {exc}") from exc
        results.append(StepResult(i, label, applied, _diff(before, msg.lines()) if trace else []))
    return TransformOutcome(text=msg.to_er7(), steps=results)


def _filtered(msg: MutableMessage, results: list[StepResult], i: int, label: str, reason: str) -> TransformOutcome:
    results.append(StepResult(i, label, True))
    return TransformOutcome(text=msg.to_er7(), filtered=reason, filtered_by=f"steps[{i}] {label}", steps=results)


def _diff(before: list[str], after: list[str]) -> list[str]:
    return [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
            if not line.startswith(("---", "+++", "@@"))]


def holds(msg: MutableMessage, when: Condition | None, context: MutableSegment | None = None) -> bool:
    """Every field test of a condition holds (read from the context segment where the ids match)."""
    if not when:
        return True
    for path, test in when.items():
        value = msg.get(path, context)
        if test.in_ is not None and value not in test.in_:
            return False
        if test.not_in is not None and value in test.not_in:
            return False
        if test.glob is not None and not any(fnmatch.fnmatchcase(value, g) for g in test.glob):
            return False
        if test.matches is not None and re.search(test.matches, value) is None:
            return False
        if test.exists is not None and bool(value) != test.exists:
            return False
    return True


def render_template(msg: MutableMessage, template: str, context: MutableSegment | None = None) -> str:
    """Substitute {PATH} placeholders with field values; {{ and }} are literal braces."""
    parts = template.split("{{")
    out = []
    for part in parts:
        pieces = part.split("}}")
        out.append("}".join(_PLACEHOLDER.sub(lambda m: msg.get(m.group(1), context), p) for p in pieces))
    return "{".join(out)


def _apply(msg: MutableMessage, step: Step, tables: Tables, plugins: Callable[[str], PluginFn]) -> bool:
    kind = step.kind
    if kind == "filter":
        if holds(msg, step.when):
            assert step.filter is not None
            raise Filter(step.filter)
        return False
    if kind == "plugin":
        if not holds(msg, step.when):
            return False
        assert step.plugin is not None
        plugins(step.plugin)(msg, dict(step.options))
        return True
    if kind in ("keep_segments", "drop_segments"):
        globs = step.keep_segments if kind == "keep_segments" else step.drop_segments
        assert globs is not None
        keep_match = kind == "keep_segments"

        def keep(seg: MutableSegment) -> bool:
            hit = any(fnmatch.fnmatchcase(seg.id, g) for g in globs)
            if not holds(msg, step.when, seg):
                return True
            return hit if keep_match else not hit

        return msg.remove_segments(keep) > 0
    if kind == "delete":
        assert step.delete is not None
        return _delete(msg, target(step.delete), step)
    # Field steps: each occurrence the path addresses, with `when` read from that occurrence.
    path = step.set or step.copy_ or step.clear or step.map or step.split or step.merge
    assert path is not None
    t = target(step.to if kind == "copy" and step.to else path)
    segments = msg.occurrences(t)
    if not segments and kind in ("set", "copy") and holds(msg, step.when):
        segments = [msg.add_segment(t.path.segment)]
    applied = False
    for seg in segments:
        if not holds(msg, step.when, seg):
            continue
        applied = _field_step(msg, step, kind, t, seg, tables) or applied
    return applied


def _field_step(msg: MutableMessage, step: Step, kind: str, t: Target, seg: MutableSegment, tables: Tables) -> bool:
    if kind == "set":
        value = step.value if step.value is not None else render_template(msg, step.template or "", seg)
        msg.set(t, value, segment=seg)
        return True
    if kind == "copy":
        assert step.copy_ is not None
        msg.set(t, msg.get_raw(step.copy_, seg), raw=True, segment=seg)
        return True
    if kind == "clear":
        msg.set(t, "", raw=True, segment=seg)
        return True
    if kind == "map":
        return _map(msg, step, t, seg, tables)
    field_no = t.path.field
    seps = msg.separators
    if kind == "split":
        sep = escape(step.separator or "", seps)
        reps = [piece for rep in seg.repetitions(field_no) for piece in rep.split(sep) if piece != ""]
        if reps == seg.repetitions(field_no):
            return False
        seg.set_repetitions(field_no, reps)
        return True
    # merge
    reps = seg.repetitions(field_no)
    if len(reps) < 2:
        return False
    seg.set_raw(field_no, None, None, None, escape(step.separator or "", seps).join(r for r in reps if r))
    return True


def _map(msg: MutableMessage, step: Step, source: Target, seg: MutableSegment, tables: Tables) -> bool:
    assert step.table is not None
    table = tables.get(step.table)
    if table is None:
        raise ValueError(f"no code table named {step.table!r}")
    code = msg.get(source, seg)
    dest = target(step.to) if step.to else source
    if code in table:
        msg.set(dest, table[code], segment=_dest_segment(msg, dest, seg))
        return True
    if code == "":
        return False
    miss = step.default
    if miss == "reject":
        raise ValueError(f"code {code[:40]!r} is not in table {step.table!r}")
    if isinstance(miss, MapDefault):
        msg.set(dest, miss.value, segment=_dest_segment(msg, dest, seg))
        return True
    if miss == "clear":
        msg.set(dest, "", raw=True, segment=_dest_segment(msg, dest, seg))
        return True
    if step.to:  # keep: the original code goes to the target
        msg.set(dest, code, segment=_dest_segment(msg, dest, seg))
        return True
    return False


def _dest_segment(msg: MutableMessage, dest: Target, seg: MutableSegment) -> MutableSegment | None:
    if dest.path.segment == seg.id and dest.every_occurrence:
        return seg
    return None


def _delete(msg: MutableMessage, t: Target, step: Step) -> bool:
    if t.segment_only:
        chosen = set(map(id, msg.occurrences(t)))
        if t.path.segment == "MSH":
            raise ValueError("the MSH segment cannot be deleted")
        return msg.remove_segments(lambda s: id(s) not in chosen or not holds(msg, step.when, s)) > 0
    applied = False
    for seg in msg.occurrences(t):
        if not holds(msg, step.when, seg):
            continue
        if t.whole_field or t.path.component is not None:
            msg.set(t, "", raw=True, segment=seg)
        else:  # an explicit repetition: remove it, later ones move up
            reps = seg.repetitions(t.path.field)
            if t.path.repetition <= len(reps):
                del reps[t.path.repetition - 1]
                seg.set_repetitions(t.path.field, reps)
        applied = True
    return applied
