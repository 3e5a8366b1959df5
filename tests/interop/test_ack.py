"""ACK / NAK building (original and enhanced mode, ERR by version) and reading peers' ACKs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from interop.ack import AckInfo, build_ack, build_nak_for_unparseable, parse_ack, resolve_code, should_send_ack
from interop.errors import HL7ParseError
from interop.message import parse
from interop.validate import Finding, validate
from tests.fixtures import load

NOW = datetime(2024, 3, 12, 8, 30, 15, tzinfo=UTC)
MSG = ("MSH|^~\\&|EPIC|NORTH^1.2.3^ISO|LIFELINE|HUB|20240312||ADT^A01^ADT_A01|CTRL-1|T|2.5.1\r"
       "EVN||20240312\rPID|1||1^^^H^MR||DOE^J\rPV1|1|I")


def _missing_pid3() -> Finding:
    return Finding(code="101", severity="error", text="PID-3 is required", segment="PID", field=3)


def test_positive_ack_swaps_sender_and_receiver_and_keeps_version() -> None:
    ack = build_ack(MSG, control_id="ACK1", now=NOW)
    assert ack == ("MSH|^~\\&|LIFELINE|HUB|EPIC|NORTH^1.2.3^ISO|20240312083015+0000||ACK^A01^ACK|ACK1|T|2.5.1\r"
                   "MSA|AA|CTRL-1\r")
    assert validate(ack, "strict").ok


def test_generated_control_ids_are_fresh() -> None:
    first, second = parse(build_ack(MSG)), parse(build_ack(MSG))
    assert first.control_id and first.control_id != second.control_id


def test_naive_now_has_no_offset() -> None:
    assert "|20240312083015||" in build_ack(MSG, now=datetime(2024, 3, 12, 8, 30, 15))
    assert "20240312033015-0500" in build_ack(MSG, now=NOW.astimezone(timezone(timedelta(hours=-5))))


def test_error_finding_gives_ae_with_err_location_code_and_severity() -> None:
    ack = build_ack(MSG, findings=[_missing_pid3()], now=NOW)
    segments = ack.split("\r")
    assert segments[1] == "MSA|AE|CTRL-1|PID-3 is required"
    assert segments[2] == "ERR||PID^1^3^1|101^Required field missing^HL70357|E||||PID-3 is required"
    info = parse_ack(ack)
    assert info.is_error and info.error_codes == ["101"] and info.errors[0].location == "PID-1-3"
    assert validate(ack, "strict").ok


@pytest.mark.parametrize("code", ["200", "201", "202", "203"])
def test_envelope_errors_reject(code: str) -> None:
    finding = Finding(code=code, severity="error", text="no", field=9)
    assert parse_ack(build_ack(MSG, findings=[finding])).code == "AR"


def test_warnings_alone_stay_positive_but_are_reported_from_25() -> None:
    warning = Finding(code="103", severity="warning", text="local flag", segment="OBX", field=8, component=1)
    ack = build_ack(MSG, findings=[warning])
    assert parse_ack(ack).code == "AA"
    assert "ERR||OBX^1^8^1^1|103^Table value not found^HL70357|W||||local flag" in ack


def test_explicit_code_without_findings_still_says_why() -> None:
    info = parse_ack(build_ack(MSG, code="AE", text="database unavailable"))
    assert info.code == "AE" and info.error_codes == ["207"]
    assert "database unavailable" in info.error_texts


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        build_ack(MSG, code="OK")


def test_enhanced_mode_when_accept_ack_is_requested() -> None:
    text = load("adt_a04_251_enhanced_ack")
    assert parse_ack(build_ack(text)).code == "CA"
    assert parse_ack(build_ack(text, findings=[_missing_pid3()])).code == "CE"
    assert parse_ack(build_ack(text, code="AR", text="no")).code == "CR"
    assert parse_ack(build_ack(text)).is_enhanced


def test_should_send_ack_follows_msh15() -> None:
    assert should_send_ack(parse(MSG), "AA")
    assert not should_send_ack(parse(load("adt_a04_251_enhanced_ack").replace("|AL|NE", "|NE|NE")), "CA")
    error_only = parse(load("adt_a08_25_enhanced_error_only"))
    assert not should_send_ack(error_only, "CA") and should_send_ack(error_only, "CE")
    success_only = parse(MSG + "\r").msh.raw + "|||SU"
    assert should_send_ack(parse(success_only), "CA") and not should_send_ack(parse(success_only), "CE")


def test_resolve_code_maps_between_modes() -> None:
    assert resolve_code("CA", [], enhanced=False) == "AA"
    assert resolve_code("ae", [], enhanced=True) == "CE"


def test_versions_before_25_use_err1_and_msa3() -> None:
    old = MSG.replace("2.5.1", "2.4")
    ack = build_ack(old, findings=[_missing_pid3(), Finding(code="103", severity="warning", text="w")])
    segments = ack.split("\r")
    assert segments[1] == "MSA|AE|CTRL-1|PID-3 is required"
    assert segments[2] == "ERR|PID^1^3^101&PID-3 is required&HL70357"
    assert parse_ack(ack).errors[0].code == "101"
    assert validate(ack, "strict").ok


def test_23_ack_has_a_two_part_message_type() -> None:
    assert parse(build_ack(load("adt_a01_23_basic"))).msh.field(9) == "ACK^A01"


def test_27_ack_drops_msa3() -> None:
    ack = build_ack(MSG.replace("2.5.1", "2.7"), findings=[_missing_pid3()])
    assert ack.split("\r")[1] == "MSA|AE|CTRL-1"


def test_custom_separators_are_kept_and_texts_escaped() -> None:
    text = load("edge_custom_encoding")
    finding = Finding(code="102", severity="error", text="bad $ value % here", segment="PID", field=5)
    ack = build_ack(text, findings=[finding])
    assert ack.startswith("MSH$%*!@$LIFELINE$HUB$LEGACY$OLDHOSP$")
    assert parse_ack(ack).errors[0].text == "bad $ value % here"


def test_unsupported_inbound_version_is_answered_in_the_default_version() -> None:
    ack = build_ack(load("bad_version"), findings=validate(load("bad_version")).findings)
    assert parse(ack).version == "2.5.1" and parse_ack(ack).is_reject


def test_text_input_that_does_not_parse_becomes_a_nak() -> None:
    info = parse_ack(build_ack("garbage"))
    assert info.is_reject and info.control_id == ""


def test_nak_for_unparseable_reads_what_it_can() -> None:
    raw = load("bad_separators")
    try:
        parse(raw)
    except HL7ParseError as exc:
        nak = build_nak_for_unparseable(raw, exc, now=NOW)
    info = parse_ack(nak)
    assert info.code == "AR" and info.control_id == "BAD-0003"
    assert info.errors[0].location == "MSH-1-2"
    header = parse(nak)
    assert header.sending_application == "LIFELINE" and header.receiving_application == "EHR"
    assert header.trigger_event == "A08"


def test_nak_for_unparseable_with_usable_separators_and_enhanced_mode() -> None:
    raw = "MSH|^~\\&|A^x|B|C|D|2024||ADT^A01|ID\\F\\1|P|2.4|||AL\rMSH|^~\\&|dup"
    nak = build_nak_for_unparseable(raw, RuntimeError("boom"))
    info = parse_ack(nak)
    assert info.code == "CR" and info.control_id == "ID|1" and info.error_codes == ["207"]
    assert parse(nak).version == "2.4"


def test_nak_strips_control_characters() -> None:
    nak = build_nak_for_unparseable("MSH|^^^^|A\x0bB|\x1c", "bad")
    assert "\x0b" not in nak and "\x1c" not in nak
    assert parse_ack(nak.encode()).is_reject


def test_parse_ack_reads_peer_acks() -> None:
    aa = parse_ack(load("ack_a01_251_aa"))
    assert aa == AckInfo(code="AA", control_id="MSG00001", ack_control_id="ACK-0001", version="2.5.1",
                         sending_application="LIFELINE")
    ae = parse_ack(load("ack_r01_24_ae_err"))
    assert ae.is_error and ae.error_codes == ["101"] and "Missing patient identifier" in ae.error_texts
    ar = parse_ack(load("ack_o21_251_ar_err"))
    assert ar.is_reject and ar.errors[0].text == "Version 2.9 is not supported"


def test_parse_ack_reads_msa6() -> None:
    info = parse_ack("MSH|^~\\&|A|B|C|D|2003||ACK|1|P|2.3\rMSA|AE|X||||204^Unknown key identifier")
    assert info.errors[0].code == "204"


@pytest.mark.parametrize(
    "text", ["MSH|^~\\&|A|B|C|D|2003||ADT^A01|1|P|2.3", "MSH|^~\\&|A|B|C|D||ACK|1|P|2.3\rMSA|ZZ|1"]
)
def test_parse_ack_rejects_non_acks(text: str) -> None:
    with pytest.raises(HL7ParseError):
        parse_ack(text)
