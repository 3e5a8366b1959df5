"""Property-based tests: framing round-trips, nothing but InteropError on any input, every ACK well formed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interop.ack import build_ack, build_nak_for_unparseable, parse_ack
from interop.errors import InteropError
from interop.message import Message, parse, parse_batch
from interop.mllp import EB, SB, FrameDecoder, encode
from interop.validate import validate

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

payloads = st.binary(max_size=300).map(lambda b: b.replace(bytes([SB]), b"").replace(bytes([EB]), b""))
# Text biased towards HL7 shapes so the generator reaches deep into the parser, not just "no MSH".
hl7_chars = st.sampled_from(list("MSHPIDOBXEVN|^~\\&#$%!@\r\n 0123456789.AZTRF\x0b\x1c\ufeff\u00e9\u0661\u00b2"))
fragments = st.text(hl7_chars, max_size=80)
headers = st.sampled_from([
    "MSH|^~\\&|A|B|C|D|2024||ADT^A01|ID1|P|2.5.1",
    "MSH|^~\\&|A|B|C|D|2024||ORU^R01^ORU_R01||T|2.3|||AL|NE",
    "MSH$%*!@$A$B$C$D$2024$$ADT%A08$X9$P$2.4",
    "MSH|^~\\&#|A|B|C|D|2024||ACK|Z|D|2.7",
    "MSH|^^\\&|A|B",
    "FHS|^~\\&|A\rBHS|^~\\&|A\rMSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5",
])
hl7ish = st.one_of(
    st.text(max_size=300),
    fragments,
    st.builds(lambda h, a, b: h + a + "\r" + b, headers, fragments, fragments),
    st.builds(lambda h, a: h + "\rPID|1||" + a + "\rOBX|1|NM|X||" + a + "||||||F", headers, fragments),
)


@SETTINGS
@given(st.lists(payloads, max_size=5), st.integers(min_value=1, max_value=40))
def test_framing_round_trips_for_any_payload_and_chunking(frames: list[bytes], chunk: int) -> None:
    data = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    out = [f for i in range(0, len(data), chunk) for f in decoder.feed(data[i:i + chunk])]
    assert out == frames
    assert decoder.dropped_bytes == 0 and not decoder.in_frame


@SETTINGS
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=50))
def test_decoder_only_raises_framing_errors(data: bytes, chunk: int, limit: int) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    total = 0
    for i in range(0, len(data), chunk):
        try:
            frames = decoder.feed(data[i:i + chunk])
        except InteropError:
            frames = []
        total += sum(len(f) for f in frames)
        assert all(len(f) <= limit for f in frames)
    assert total <= len(data)


@SETTINGS
@given(st.one_of(hl7ish, st.binary(max_size=200)))
def test_parse_and_validate_raise_only_interop_errors(text: str | bytes) -> None:
    for call in (parse, parse_batch):
        try:
            call(text)
        except InteropError:
            pass
    for level in ("tolerant", "strict"):
        report = validate(text, level)  # type: ignore[arg-type]
        assert report.ok or report.errors


def _check_ack(ack_text: str, acknowledged: str) -> None:
    assert "\x0b" not in ack_text and "\x1c" not in ack_text
    info = parse_ack(ack_text)
    assert info.control_id == acknowledged
    report = validate(ack_text)
    assert report.ok, [str(f) for f in report.errors]
    if not info.is_positive:
        assert info.errors


@SETTINGS
@given(hl7ish)
def test_every_ack_parses_and_echoes_the_control_id(text: str) -> None:
    try:
        message: Message = parse(text)
    except InteropError as exc:
        nak = build_nak_for_unparseable(text, exc)
        _check_ack(nak, parse_ack(nak).control_id)
        assert parse_ack(nak).is_reject
        return
    report = validate(message, "strict")
    _check_ack(build_ack(message, findings=report.findings), message.control_id)


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300), hl7ish), st.text(max_size=40))
def test_nak_for_garbage_is_always_a_well_formed_reject(raw: str | bytes, reason: str) -> None:
    nak = build_nak_for_unparseable(raw, reason)
    info = parse_ack(nak)
    assert info.is_reject and info.errors
    assert validate(nak).ok
