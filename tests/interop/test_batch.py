"""Batch file splitting (FHS/BHS envelopes, MSH-to-MSH, CR/LF/CRLF, BOM, streaming, resume) and the writer."""

from __future__ import annotations

import io
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interop.batch import BatchHeader, BatchSplitter, iter_messages, split_bytes, write_batch
from interop.message import parse


def msg(control: str, mrn: str = "123") -> str:
    return "\r".join([
        f"MSH|^~\\&|LAB|LABFAC|EHR|HOSP|20260101120000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{mrn}^^^HOSP^MR||DOE^JANE",
        "OBR|1||X1|CBC",
        "OBX|1|NM|WBC||7.5|10*3/uL",
    ])


def batch(controls: list[str], newline: str = "\r", bom: bool = False) -> bytes:
    text = "".join(write_batch((msg(c) for c in controls), BatchHeader(control_id="B1"), datetime(2026, 1, 1),
                               newline))
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize("bom", [False, True])
def test_enveloped_batch_any_line_ending_and_bom(newline: str, bom: bool) -> None:
    data = batch(["A1", "A2", "A3"], newline, bom)
    splitter = BatchSplitter()
    items = [*splitter.feed(data), *splitter.close()]
    assert [parse(i.raw.decode()).control_id for i in items] == ["A1", "A2", "A3"]
    assert [i.index for i in items] == [0, 1, 2]
    assert all(i.malformed is None for i in items)
    assert all(len(parse(i.raw.decode()).segments) == 4 for i in items)
    assert splitter.envelope.fhs is not None and splitter.envelope.fhs.startswith(b"FHS|^~\\&|LIFELINE")
    assert splitter.envelope.bts_counts == [3] and splitter.envelope.fts_count == 1
    assert splitter.envelope.problems(3) == []
    # Offsets point at each message's MSH in the original bytes; end is just past its last terminator.
    for item in items:
        assert data[item.offset:item.offset + 4] == b"MSH|"
        assert data[item.end - len(newline):item.end] == newline.encode()


def test_plain_msh_to_msh_with_mixed_endings_blank_lines_and_mllp_bytes() -> None:
    data = (msg("P1").replace("\r", "\n") + "\n\n" + "\x0b" + msg("P2") + "\x1c\r\n" + msg("P3").replace("\r", "\r\n"))
    items = split_bytes(data.encode())
    assert [parse(i.raw.decode()).control_id for i in items] == ["P1", "P2", "P3"]
    assert items[1].raw == msg("P2").encode()


def test_text_outside_a_message_is_its_own_malformed_item_at_its_position() -> None:
    data = ("garbage line\rmore garbage\r" + msg("G1") + "\r").encode()
    items = split_bytes(data)
    assert len(items) == 2
    assert items[0].malformed and items[0].index == 0 and items[0].offset == 0
    assert items[0].raw == b"garbage line\rmore garbage"
    assert items[1].malformed is None and items[1].index == 1 and parse(items[1].raw.decode()).control_id == "G1"


def test_trailer_count_mismatch_is_reported() -> None:
    data = batch(["C1", "C2"]).replace(b"BTS|2", b"BTS|5")
    splitter = BatchSplitter()
    items = [*splitter.feed(data), *splitter.close()]
    assert len(items) == 2
    assert splitter.envelope.problems(len(items)) == ["BTS-1 declares 5 message(s), the file holds 2"]


def test_no_final_terminator_and_empty_file() -> None:
    assert [i.raw for i in split_bytes(msg("E1").encode())] == [msg("E1").encode()]
    assert split_bytes(b"") == []
    assert split_bytes(b"\xef\xbb\xbf\r\n") == []


@settings(max_examples=60, deadline=None)
@given(newline=st.sampled_from(["\r", "\n", "\r\n"]), bom=st.booleans(),
       chunk=st.integers(min_value=1, max_value=97), n=st.integers(min_value=1, max_value=12))
def test_any_chunking_gives_the_same_messages(newline: str, bom: bool, chunk: int, n: int) -> None:
    data = batch([f"K{i}" for i in range(n)], newline, bom)
    whole = split_bytes(data)
    streamed = list(iter_messages(io.BytesIO(data), chunk_size=chunk))
    assert streamed == whole
    assert len(whole) == n


def test_resume_from_an_offset_yields_the_rest_with_their_indexes() -> None:
    data = batch([f"R{i}" for i in range(10)], "\r\n", bom=True)
    items = split_bytes(data)
    rest = list(iter_messages(io.BytesIO(data), start_offset=items[4].offset, start_index=4, chunk_size=50))
    assert rest == items[4:]


def test_streaming_holds_one_message_not_the_file() -> None:
    # 20,000 messages through a generator: the splitter's buffer never grows beyond a chunk plus a message.
    def gen() -> io.RawIOBase:
        body = b"".join(msg(f"S{i}").encode() + b"\r" for i in range(20000))
        return io.BytesIO(body)

    stream = gen()
    splitter = BatchSplitter()
    count = 0
    biggest = 0
    while chunk := stream.read(8192):
        count += len(splitter.feed(chunk))
        biggest = max(biggest, len(splitter._buf) + sum(len(s) for s in splitter._segments))
    count += len(splitter.close())
    assert count == 20000
    assert biggest < 8192 + 1024


def test_writer_envelope_roundtrip() -> None:
    text = "".join(write_batch([msg("W1"), msg("W2").replace("\r", "\n")], BatchHeader(
        sending_application="LIFELINE", sending_facility="HOSP", control_id="F9"), datetime(2026, 3, 4, 5, 6, 7)))
    lines = text.split("\r")
    assert lines[0] == "FHS|^~\\&|LIFELINE|HOSP|||20260304050607||||F9"
    assert lines[1].startswith("BHS|^~\\&|LIFELINE|HOSP")
    assert lines[-3:] == ["BTS|2", "FTS|1", ""]
    items = split_bytes(text.encode())
    assert [parse(i.raw.decode()).control_id for i in items] == ["W1", "W2"]
