"""Tolerant and strict validation: header rules, structures, required fields, data types, tables."""

from __future__ import annotations

import pytest

from interop.message import parse
from interop.structures import compile_structure, required_next, step
from interop.validate import Finding, check_type, validate
from tests.fixtures import load

BASE = "MSH|^~\\&|A|B|C|D|20240101120000||ADT^A01^ADT_A01|C1|P|2.5.1"
BODY = "EVN||20240101120000\rPID|1||123^^^H^MR||DOE^JOHN||19700101|M\rPV1|1|I"


def _msg(msh: str = BASE, body: str = BODY) -> str:
    return msh + "\r" + body


def _codes(text: str, level: str = "strict") -> set[tuple[str, str, int | None]]:
    return {(f.code, f.segment, f.field) for f in validate(text, level).errors}  # type: ignore[arg-type]


def test_clean_message_is_ok_and_keeps_the_parsed_message() -> None:
    report = validate(_msg(), "strict")
    assert report.ok and report.findings == [] and report.message is not None


def test_accepts_a_parsed_message_or_bytes() -> None:
    assert validate(parse(_msg())).ok
    assert validate(_msg().encode()).ok


def test_unknown_level_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        validate(_msg(), "lenient")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        (9, "", "101"), (9, "ADT", "101"), (9, "AD^A01", "200"), (9, "ADT^A1", "201"),
        (10, "", "101"), (11, "", "101"), (11, "X", "202"), (12, "", "101"), (12, "2.9", "203"),
        (12, "3.0", "203"), (12, "two", "203"),
    ],
)
def test_tolerant_header_rules(field: int, value: str, code: str) -> None:
    parts = BASE.split("|")
    parts[field - 1] = value
    report = validate(_msg("|".join(parts)))
    assert [(f.code, f.field) for f in report.errors] == [(code, field)]


@pytest.mark.parametrize("version", ["2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1",
                                     "2.8", "2.8.2"])
def test_every_supported_version_passes(version: str) -> None:
    assert validate(_msg(BASE.replace("2.5.1", version))).ok


def test_ack_message_needs_no_trigger() -> None:
    assert validate("MSH|^~\\&|A|B|C|D|20240101||ACK|C1|P|2.3\rMSA|AA|X", "strict").ok


def test_unparseable_text_becomes_a_finding() -> None:
    report = validate("hello world")
    assert not report.ok and report.message is None
    assert report.errors[0].code == "100"


def test_non_segment_lines_are_warnings_only() -> None:
    report = validate(_msg() + "\r@@garbage@@")
    assert report.ok and report.warnings[0].code == "100"


def test_bad_accept_ack_value_is_a_warning() -> None:
    report = validate(_msg(BASE + "|||XX|NE"))
    assert report.ok and report.warnings[0].field == 15


def test_strict_reports_wrong_segment_order_with_location() -> None:
    errors = validate(_msg(body="PID|1||1^^^H^MR||DOE^J\rEVN||20240101\rPV1|1|I"), "strict").errors
    assert errors[0].code == "100" and errors[0].segment == "PID"
    assert "expected" in errors[0].text


def test_strict_reports_missing_required_segment() -> None:
    errors = validate(_msg(body="EVN||20240101\rPID|1||1^^^H^MR||DOE^J"), "strict").errors
    assert [(e.code, e.segment) for e in errors] == [("100", "PV1")]


def test_strict_counts_occurrences_of_repeated_segments() -> None:
    body = BODY + "\rOBX|1|NM|X^x^L||1||||||F\rOBX|2|NM|X^x^L||abc||||||F"
    (error,) = validate(_msg(body=body), "strict").errors
    assert (error.segment, error.occurrence, error.field, error.code) == ("OBX", 2, 5, "102")


def test_strict_skips_z_segments_and_warns_about_unknown_ones() -> None:
    report = validate(_msg(body=BODY + "\rZPI|1|x\rQQQ|1"), "strict")
    assert report.ok
    assert [f.segment for f in report.warnings] == ["QQQ"]


def test_prt_in_251_is_accepted_with_a_warning() -> None:
    report = validate(load("adt_a01_251_prt"), "strict")
    assert report.ok
    assert [(w.segment, w.code) for w in report.warnings] == [("PRT", "100")]


def test_unknown_structure_is_a_warning() -> None:
    report = validate("MSH|^~\\&|A|B|C|D|20240101||QRY^Q01|C1|P|2.4\rQRD|x", "strict")
    assert report.ok and report.warnings[0].code == "200"


def test_strict_field_rules() -> None:
    body = "EVN||20241301\rPID|x||||DOE^J||19701301|Q\rPV1|1|Z\rOBX|1|NM|X||12a||||||Y"
    codes = _codes(_msg(body=body))
    assert ("102", "EVN", 2) in codes  # month 13
    assert ("102", "PID", 1) in codes  # SI
    assert ("101", "PID", 3) in codes
    assert ("102", "PID", 7) in codes
    assert ("103", "PID", 8) in codes  # table 0001
    assert ("103", "PV1", 2) in codes  # table 0004
    assert ("102", "OBX", 5) in codes  # NM value
    assert ("103", "OBX", 11) in codes  # table 0085


def test_strict_checks_msa_and_err_by_version() -> None:
    ack = "MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|C1|P|2.5.1\rMSA|XX|C0\rERR||PID^1|101^x^HL70357|Q"
    codes = _codes(ack)
    assert ("103", "MSA", 1) in codes and ("103", "ERR", 4) in codes
    old = "MSH|^~\\&|A|B|C|D|20240101||ACK^A01|C1|P|2.4\rMSA|AE|C0\rERR|PID^1^3^101&x&HL70357"
    assert validate(old, "strict").ok


def test_unlisted_abnormal_flag_is_only_a_warning() -> None:
    body = BODY + "\rOBX|1|NM|X^x^L||5|||ZZ|||F"
    report = validate(_msg(body=body), "strict")
    assert report.ok and report.warnings[0].field == 8


def test_obx_value_needs_a_value_type() -> None:
    codes = _codes(_msg(body=BODY + "\rOBX|1||X^x^L||5||||||F"))
    assert codes == {("101", "OBX", 2)}


@pytest.mark.parametrize(
    ("vtype", "value", "ok"),
    [
        ("SN", ">^60", True), ("SN", "^1^:^160", True), ("SN", "=>^60", False), ("SN", "^abc", False),
        ("SN", "^^-", False), ("DT", "20240229", True), ("DT", "20230229", False), ("DT", "202401011200", False),
        ("TS", "20240101123000+0100", True), ("TS", "20240101126000", False), ("DTM", "2024", True),
        ("TS", "20240101^S", True), ("TM", "1230", True), ("TM", "12:30", False), ("NM", "-0.5", True),
        ("NM", ".5", True), ("NM", "1e5", False), ("NM", "\u0661", False), ("ST", "anything", True),
    ],
)
def test_obx_value_types(vtype: str, value: str, ok: bool) -> None:
    text = _msg(body=BODY + f"\rOBX|1|{vtype}|X^x^L||{value}||||||F")
    assert validate(text, "strict").ok is ok


def test_check_type_rejects_bad_timezones_and_hours() -> None:
    assert check_type("202401011200+1500", "DTM") is not None
    assert check_type("2024010124", "DTM") is not None
    assert check_type("20240101", "DTM") is None
    assert check_type("12345", "SI") is not None


def test_strict_is_skipped_when_the_header_is_broken() -> None:
    report = validate(_msg(BASE.replace("|P|", "|X|"), body="PV1|1|Z"), "strict")
    assert [f.code for f in report.findings] == ["202"]


def test_finding_renders_a_readable_location() -> None:
    f = Finding(code="102", severity="error", text="bad", segment="OBX", occurrence=2, field=5, repetition=2,
                component=1)
    assert f.location == "OBX[2]-5[2].1"
    assert f.code_text == "Data type error"
    assert str(f) == "error 102 at OBX[2]-5[2].1: bad"


def test_structure_notation_supports_choice_and_groups() -> None:
    node, alphabet = compile_structure("MSH <A01|B01 [C01]> {D01 [E01]}")
    assert alphabet == {"MSH", "A01", "B01", "C01", "D01", "E01"}
    state = node
    for seg in ("MSH", "B01", "C01", "D01", "D01", "E01"):
        state = step(state, seg)
    assert state.nullable
    assert required_next(step(node, "MSH")) == "A01 or B01"
