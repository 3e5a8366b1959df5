"""The step language, one kind at a time: pure, no servers."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest
from pydantic import ValidationError

from interop.message import parse
from interop.transform import Filter, MutableMessage, Step, TransformError, parse_csv_table, run_steps
from interop.transform import plugins as plugin_mod
from tests.fixtures import load

MSG = "\r".join([
    "MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|C1|P|2.5.1",
    "EVN|A08|20260101120000",
    "PID|1||MRN1^^^GENHOSP^MR~ALT9^^^OTHER^PI||DOE^JANE||19800101|F|||1 MAIN ST^^BOSTON^MA^02118",
    "PV1|1|I|4W^12^1",
    "OBX|1|NM|HR^Heart rate||72|bpm",
    "OBX|2|ST|NOTE^Note||ok||||||W",
    "ZPI|custom|stuff",
    "ZXX|more",
])


def steps(*raw: dict[str, Any]) -> list[Step]:
    return [Step.model_validate(r) for r in raw]


def run(*raw: dict[str, Any], text: str = MSG, tables: dict[str, dict[str, str]] | None = None) -> str:
    out = run_steps(text, steps(*raw), tables or {})
    assert out.filtered is None
    return out.text


def seg(text: str, seg_id: str, occ: int = 1) -> str:
    found = [line for line in text.split("\r") if line.startswith(seg_id)]
    return found[occ - 1] if occ <= len(found) else ""


def test_no_steps_is_the_message_unchanged() -> None:
    assert run_steps(MSG, []).text == MSG


def test_set_literal_escapes_delimiters_and_leaves_other_segments_byte_identical() -> None:
    out = run({"set": "MSH-5", "value": "LIS"}, {"set": "MSH-6", "value": "MAIN"},
              {"set": "PID-5.1", "value": "O'NEIL|SMITH"})
    assert parse(out).get("MSH-5") == "LIS" and parse(out).get("MSH-6") == "MAIN"
    assert seg(out, "PID").split("|")[5] == "O'NEIL\\F\\SMITH^JANE"
    assert parse(out).get("PID-5.1") == "O'NEIL|SMITH"
    assert seg(out, "EVN") == seg(MSG, "EVN") and seg(out, "ZPI") == seg(MSG, "ZPI")


def test_set_template_reads_other_fields_and_literal_braces() -> None:
    out = run({"set": "PV1-3.1", "template": "{PV1-3.1}-{PV1-3.2} {{x}}"})
    assert parse(out).get("PV1-3.1") == "4W-12 {x}"


def test_set_creates_a_missing_segment_and_pads_components() -> None:
    out = run({"set": "ZLL-2.3", "value": "v"})
    assert seg(out, "ZLL") == "ZLL||^^v"


def test_set_applies_to_every_occurrence_with_when_read_from_that_occurrence() -> None:
    out = run({"set": "OBX-11", "value": "F", "when": {"OBX-2": "NM"}})
    assert parse(out).get("OBX[1]-11") == "F" and parse(out).get("OBX[2]-11") == "W"
    out = run({"set": "OBX[2]-3.1", "value": "TEXT"})
    assert parse(out).get("OBX[1]-3.1") == "HR" and parse(out).get("OBX[2]-3.1") == "TEXT"


def test_copy_is_raw_so_components_travel() -> None:
    out = run({"copy": "PV1-3", "to": "ZLL-1"})
    assert seg(out, "ZLL") == "ZLL|4W^12^1"
    out = run({"copy": "PID-3[2].1", "to": "PID-2"})
    assert parse(out).get("PID-2") == "ALT9"


def test_clear_and_delete_field_and_repetition() -> None:
    out = run({"clear": "PID-11"}, {"delete": "PID-3[1]"})
    assert parse(out).get("PID-11") == ""
    assert parse(out).get("PID-3.1") == "ALT9"  # the second repetition moved up
    assert seg(out, "PID").endswith("|F")  # trailing empty fields are trimmed from a changed segment


def test_delete_segment_every_occurrence_or_one() -> None:
    assert "OBX" not in run({"delete": "OBX"})
    out = run({"delete": "OBX[1]"})
    assert seg(out, "OBX").startswith("OBX|2|")
    out = run({"delete": "OBX", "when": {"OBX-11": "W"}})
    assert seg(out, "OBX", 1).startswith("OBX|1|") and seg(out, "OBX", 2) == ""


def test_drop_and_keep_segments_by_glob() -> None:
    out = run({"drop_segments": ["Z*"]})
    assert "ZPI" not in out and "ZXX" not in out and "PV1|" in out
    out = run({"keep_segments": ["PID", "PV1"]})
    assert [s[:3] for s in out.split("\r")] == ["MSH", "PID", "PV1"]  # MSH always stays


def test_map_through_a_code_table_with_each_default() -> None:
    tables = {"wards": {"4W": "WARD4", "5E": "WARD5"}}
    assert parse(run({"map": "PV1-3.1", "table": "wards"}, tables=tables)).get("PV1-3.1") == "WARD4"
    other = MSG.replace("4W^12", "9Z^12")
    assert parse(run({"map": "PV1-3.1", "table": "wards"}, text=other, tables=tables)).get("PV1-3.1") == "9Z"
    out = run({"map": "PV1-3.1", "table": "wards", "default": {"value": "UNKNOWN"}}, text=other, tables=tables)
    assert parse(out).get("PV1-3.1") == "UNKNOWN"
    out = run({"map": "PV1-3.1", "table": "wards", "default": "clear"}, text=other, tables=tables)
    assert parse(out).get("PV1-3.1") == "" and parse(out).get("PV1-3.2") == "12"
    with pytest.raises(TransformError) as err:
        run({"set": "MSH-5", "value": "X"}, {"map": "PV1-3.1", "table": "wards", "default": "reject"},
            text=other, tables=tables)
    assert err.value.index == 1 and err.value.step == "map PV1-3.1 (wards)" and "not in table" in str(err.value)


def test_map_into_another_field() -> None:
    out = run({"map": "PV1-3.1", "table": "wards", "to": "PV1-3.4"}, tables={"wards": {"4W": "WARD4"}})
    assert parse(out).get("PV1-3.1") == "4W" and parse(out).get("PV1-3.4") == "WARD4"


def test_split_and_merge_repetitions() -> None:
    text = MSG.replace("PV1|1|I|4W^12^1", "PV1|1|I|4W^12^1||||A1,B2,C3")
    out = run({"split": "PV1-7", "separator": ","}, text=text)
    assert seg(out, "PV1").split("|")[7] == "A1~B2~C3"
    out = run({"merge": "PID-3", "separator": " / "})
    assert seg(out, "PID").split("|")[3] == "MRN1^^^GENHOSP^MR / ALT9^^^OTHER^PI"
    # split then merge is a round trip
    assert seg(run({"split": "PV1-7", "separator": ","}, {"merge": "PV1-7", "separator": ","}, text=text),
               "PV1") == seg(text, "PV1")


def test_filter_stops_with_its_reason_only_when_its_condition_holds() -> None:
    s = steps({"set": "MSH-5", "value": "LIS"},
              {"filter": "outpatients are not sent to the lab", "when": {"PV1-2": ["O", "E"]}},
              {"set": "MSH-6", "value": "MAIN"})
    out = run_steps(MSG.replace("PV1|1|I|", "PV1|1|O|"), s)
    assert out.filtered == "outpatients are not sent to the lab" and out.filtered_by == "steps[1] filter " \
        "outpatients are not sent to the lab"
    out = run_steps(MSG, s)
    assert out.filtered is None and parse(out.text).get("MSH-6") == "MAIN"


def test_when_tests_in_not_in_glob_matches_exists() -> None:
    def applied(when: dict[str, Any]) -> bool:
        return parse(run({"set": "ZLL-1", "value": "y", "when": when})).get("ZLL-1") == "y"

    assert applied({"MSH-9": {"glob": "ADT^A0*"}})
    assert not applied({"MSH-9": {"glob": ["ORU^*"]}})
    assert applied({"PV1-2": {"not_in": ["O"]}})
    assert applied({"PID-7": {"matches": r"^19\d{6}$"}})
    assert applied({"PID-19": {"exists": False}}) and applied({"PID-19": False})
    assert not applied({"PID-8": "M"})
    assert applied({"PID-8": "F", "PV1-2": "I"})


def test_trace_gives_a_diff_per_step() -> None:
    out = run_steps(MSG, steps({"set": "MSH-5", "value": "LIS"}, {"drop_segments": "Z*"},
                               {"clear": "PID-99", "when": {"PV1-2": "O"}}), trace=True)
    first, second, third = out.steps
    assert first.applied and first.diff[0].startswith("-MSH|")
    assert first.diff[1].startswith("+MSH|^~\\&|EPIC|GENHOSP|LIS")
    assert second.diff == ["-ZPI|custom|stuff", "-ZXX|more"]
    assert not third.applied and third.diff == []


def test_a_plugin_from_the_entry_point_group_edits_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [EntryPoint("upper-name", "tests.transform.test_steps:upper_name_plugin", plugin_mod.GROUP),
           EntryPoint("explode", "tests.transform.test_steps:failing_plugin", plugin_mod.GROUP),
           EntryPoint("no-test", "tests.transform.test_steps:filter_plugin", plugin_mod.GROUP)]
    from importlib import metadata

    real = metadata.entry_points

    def fake(**kw: Any) -> Any:
        if kw.get("group") == plugin_mod.GROUP:
            return metadata.EntryPoints(eps)
        return real(**kw)

    monkeypatch.setattr(plugin_mod, "entry_points", fake)
    plugin_mod.forget_plugins()
    out = run({"plugin": "upper-name", "options": {"field": "PID-5.2"}})
    assert parse(out).get("PID-5.2") == "JANE!"
    with pytest.raises(TransformError) as err:
        run({"set": "MSH-5", "value": "X"}, {"plugin": "explode"})
    assert err.value.where == "steps[1] plugin explode" and "RuntimeError: boom" in str(err.value)
    filtered = run_steps(MSG, steps({"plugin": "no-test"}))
    assert filtered.filtered == "test patient"
    with pytest.raises(TransformError, match="no plugin named 'nope' is installed"):
        run({"plugin": "nope"})
    plugin_mod.forget_plugins()


def upper_name_plugin(message: MutableMessage, options: dict[str, Any]) -> None:
    message.set(options["field"], message.get(options["field"]) + "!")


def failing_plugin(message: MutableMessage, options: dict[str, Any]) -> None:
    raise RuntimeError("boom")


def filter_plugin(message: MutableMessage, options: dict[str, Any]) -> None:
    raise Filter("test patient")


def test_a_step_on_msh_separators_is_a_typed_failure() -> None:
    with pytest.raises(TransformError, match="separators"):
        run({"set": "MSH-2", "value": "x"})


@pytest.mark.parametrize("raw, reason", [
    ({"set": "PID-5"}, "exactly one of value or template"),
    ({"set": "PID-5", "value": "a", "copy": "PID-3", "to": "PID-2"}, "found set, copy"),
    ({}, "a step needs exactly one of"),
    ({"map": "PV1-3.1"}, "needs table"),
    ({"copy": "PID-3"}, "needs to"),
    ({"clear": "PID-3", "table": "x"}, "'table' does not belong to a clear step"),
    ({"set": "PID", "value": "x"}, "names a segment"),
    ({"set": "PID-5", "template": "{NOT A PATH}"}, "is not an HL7 path"),
    ({"set": "PID-5", "template": "{PID-5.1"}, "brace is not closed"),
    ({"split": "PID-3.1", "separator": ","}, "whole field"),
    ({"drop_segments": ["Z*", "bad segment"]}, "not a segment id or glob"),
    ({"clear": "PID-3", "when": {"PID-8": {"matches": "("}}}, "not a regular expression"),
    ({"clear": "PID-3", "frobnicate": 1}, "Extra inputs are not permitted"),
])
def test_invalid_steps_are_refused_with_a_reason(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(")):
        Step.model_validate(raw)


def test_csv_code_tables() -> None:
    assert parse_csv_table("from,to\n4W,WARD4\n\n5E, WARD5\n") == {"4W": "WARD4", "5E": "WARD5"}
    assert parse_csv_table("A,1\nB,2") == {"A": "1", "B": "2"}
    with pytest.raises(ValueError, match="line 2"):
        parse_csv_table("A,1\nB\n")
    # A bare CR ends a line (it was a csv.Error, a 500 from PUT /api/config/tables/{name}; found by Schemathesis).
    assert parse_csv_table("A,1\rB,2\r") == {"A": "1", "B": "2"}
    with pytest.raises(ValueError, match="line 1"):
        parse_csv_table("x\ry,z")


def test_fixture_with_z_segments() -> None:
    text = load("adt_a01_251_zsegments")
    out = run({"drop_segments": "Z*"}, text=text)
    assert not any(line.startswith("Z") for line in out.split("\r"))
    assert parse(out).control_id == parse(text).control_id
