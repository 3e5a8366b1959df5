"""Every fixture parses, validates tolerantly and gets an ACK that parses; bad_* fixtures are rejected."""

from __future__ import annotations

import pytest

from interop.ack import build_ack, build_nak_for_unparseable, parse_ack
from interop.errors import InteropError
from interop.message import Message, is_batch, parse, parse_batch
from interop.validate import validate
from tests.fixtures import MESSAGES_DIR, all_fixtures, bad_fixtures, good_fixtures, load, load_bytes, names

GOOD = good_fixtures()
BAD = bad_fixtures()
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8")


def _messages(text: str) -> list[Message]:
    return parse_batch(text).messages if is_batch(text) else [parse(text)]


def test_there_are_enough_fixtures_of_every_kind() -> None:
    assert len(GOOD) >= 40
    assert len(BAD) >= 5
    versions = {m.version for text in GOOD.values() for m in _messages(text)}
    assert set(VERSIONS) <= versions
    types = {m.message_type for text in GOOD.values() for m in _messages(text)}
    for adt in ("A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13", "A28", "A31", "A40"):
        assert f"ADT^{adt}" in types
    assert {"ORU^R01", "ORM^O01", "OML^O21", "VXU^V04", "RDE^O11", "SIU^S12", "MDM^T02"} <= types


def test_loader_reads_by_name_with_or_without_suffix() -> None:
    assert load("adt_a01_251_basic") == load("adt_a01_251_basic.hl7")
    assert load_bytes("edge_bom_crlf").startswith(b"\xef\xbb\xbf")
    assert "adt_a01_251_basic" in names("adt_")
    with pytest.raises(KeyError):
        load("no_such_fixture")


def test_loader_picks_up_files_other_suites_add() -> None:
    # map_* files are owned by the FHIR mapping suite; the loader globs every *.hl7 file.
    on_disk = {p.stem for p in MESSAGES_DIR.glob("*.hl7")}
    assert set(all_fixtures()) == on_disk


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_fixture_parses_validates_and_acks(name: str) -> None:
    for message in _messages(GOOD[name]):
        report = validate(message)
        assert report.ok, [str(f) for f in report.errors]
        ack = parse_ack(build_ack(message, findings=report.findings))
        assert ack.control_id == message.control_id
        assert ack.is_positive


@pytest.mark.parametrize("name", sorted(n for n in GOOD if not n.startswith(("map_", "edge_", "ack_"))))
def test_good_typed_fixture_is_strictly_valid(name: str) -> None:
    for message in _messages(GOOD[name]):
        report = validate(message, "strict")
        assert report.ok, [str(f) for f in report.errors]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixture_is_rejected_with_an_ack_that_says_why(name: str) -> None:
    text = BAD[name]
    report = validate(text, "strict")
    assert not report.ok
    try:
        parse(text)
    except InteropError as exc:
        ack_text = build_nak_for_unparseable(text, exc)
    else:
        ack_text = build_ack(text, findings=report.findings)
    ack = parse_ack(ack_text)
    assert not ack.is_positive
    assert ack.errors
    assert validate(ack_text).ok


def test_each_named_bad_fixture_fails_for_its_reason() -> None:
    codes = {name: {f.code for f in validate(BAD[name]).errors} for name in BAD}
    assert codes["bad_no_msh"] == {"100"}
    assert codes["bad_missing_msh9"] == {"101"}
    assert codes["bad_version"] == {"203"}
    assert codes["bad_separators"] == {"100"}
    assert codes["bad_missing_msh10"] == {"101"}
    assert codes["bad_processing_id"] == {"202"}
    assert validate(BAD["bad_strict_content"]).ok  # header fine: only strict finds its content errors


def test_edge_fixtures_parse_as_intended() -> None:
    assert parse(load("edge_bom_crlf")).get("PID-5.1") == "MÜLLER"
    assert parse(load("edge_lf_endings")).get("PID-5.1") == "WRIGHT"
    custom = parse(load("edge_custom_encoding"))
    # !S! is the component separator, which this message declares as %.
    assert custom.separators.field == "$" and custom.get("PID-5.1") == "O%NEIL"
    assert custom.get("PID-3[2].1") == "OH-1B"
    assert parse(load("edge_trailing_garbage")).ignored_lines
    esc = parse(load("edge_escapes_all"))
    assert esc.get("OBX-5") == "pipe | caret ^ amp & tilde ~ backslash \\ hex Hello line\nnext"
    assert esc.get("PID-5.1") == "O&BRIEN"
    batch = parse_batch(load("edge_batch_fhs_bhs"))
    assert [m.control_id for m in batch.messages] == ["B-MSG-1", "B-MSG-2"]
    assert batch.declared_count == 2
    assert parse(load("edge_truncation_char_27")).separators.truncation == "#"
    assert parse(load("oru_r01_251_subcomponents")).get("PID-3.4.2") == "1.2.840.114350.1.13"
