"""MLLP framing: the incremental decoder and the asyncio helpers, driven through a StreamReader."""

from __future__ import annotations

import asyncio

import pytest

from interop.errors import FramingError
from interop.mllp import CR, EB, SB, FrameDecoder, FrameTooLarge, encode, read_frame, write_frame

MSG = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5.1\rPID|1"


def test_constants_and_encode() -> None:
    assert (SB, EB, CR) == (0x0B, 0x1C, 0x0D)
    assert encode("MSH|é") == b"\x0bMSH|\xc3\xa9\x1c\r"
    assert encode(MSG) == b"\x0b" + MSG + b"\x1c\r"


@pytest.mark.parametrize("bad", [b"a\x0bb", b"a\x1cb"])
def test_encode_refuses_framing_bytes(bad: bytes) -> None:
    with pytest.raises(FramingError):
        encode(bad)


def test_partial_frames_across_feeds() -> None:
    decoder = FrameDecoder()
    data = encode(MSG)
    assert decoder.feed(data[:5]) == []
    assert decoder.in_frame and decoder.buffered == 4
    assert decoder.feed(data[5:-1]) == [MSG]
    assert decoder.feed(data[-1:]) == []  # the trailing CR
    assert decoder.dropped_bytes == 0


def test_byte_by_byte() -> None:
    decoder = FrameDecoder()
    frames = [f for b in encode(MSG) + encode(b"x") for f in decoder.feed(bytes([b]))]
    assert frames == [MSG, b"x"] and decoder.dropped_bytes == 0


def test_several_frames_in_one_read_and_missing_cr() -> None:
    decoder = FrameDecoder()
    data = encode(b"one") + b"\x0btwo\x1c" + encode(b"three")
    assert decoder.feed(data) == [b"one", b"two", b"three"]
    assert decoder.dropped_bytes == 0


def test_bytes_outside_frames_are_dropped_and_counted() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"noise" + encode(b"a") + b"\n\njunk" + encode(b"b") + b"tail") == [b"a", b"b"]
    assert decoder.dropped_bytes == len(b"noise") + len(b"\n\njunk") + len(b"tail")


def test_start_block_inside_a_frame_abandons_the_unfinished_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bhalf a frame" + encode(b"whole")) == [b"whole"]
    assert decoder.abandoned_frames == 1 and decoder.dropped_bytes == len(b"half a frame")


def test_empty_frame() -> None:
    assert FrameDecoder().feed(b"\x0b\x1c\r") == [b""]


def test_too_large_frame_raises_and_resynchronises() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    data = encode(b"ok") + encode(b"x" * 50) + encode(b"next")
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(data)
    assert info.value.limit == 10 and info.value.size > 10
    assert isinstance(info.value, FramingError)
    assert decoder.pending() == 1
    assert decoder.feed(b"") == [b"ok", b"next"]
    assert decoder.oversized_frames == 1


def test_too_large_frame_detected_before_its_end_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x0b" + b"y" * 11)
    assert decoder.feed(b"y" * 1000) == []  # still inside the oversized frame: discarded
    assert decoder.feed(b"\x1c\r" + encode(b"fine")) == [b"fine"]
    assert decoder.buffered == 0


def test_max_frame_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=0)


def _reader(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def test_read_frame_returns_frames_one_by_one_then_none() -> None:
    reader = _reader(encode(b"a") + encode(b"b")[:3], encode(b"b")[3:] + b"junk")
    decoder = FrameDecoder()
    assert await read_frame(reader, decoder) == b"a"
    assert await read_frame(reader, decoder) == b"b"
    assert await read_frame(reader, decoder) is None
    assert decoder.dropped_bytes == 4


async def test_read_frame_drops_an_unfinished_frame_at_eof() -> None:
    decoder = FrameDecoder()
    assert await read_frame(_reader(b"\x0bpartial"), decoder) is None
    assert decoder.dropped_bytes == len(b"partial")


async def test_read_frame_raises_on_too_large_and_continues() -> None:
    decoder = FrameDecoder(max_frame_size=8)
    reader = _reader(encode(b"first") + encode(b"z" * 20) + encode(b"last"))
    assert await read_frame(reader, decoder) == b"first"
    with pytest.raises(FrameTooLarge):
        await read_frame(reader, decoder)
    assert await read_frame(reader, decoder) == b"last"
    assert await read_frame(reader, decoder) is None


async def test_read_frame_waits_for_data() -> None:
    reader = _reader(b"\x0bMSH", eof=False)
    decoder = FrameDecoder()
    task = asyncio.ensure_future(read_frame(reader, decoder))
    await asyncio.sleep(0)
    assert not task.done()
    reader.feed_data(b"|x\x1c\r")
    assert await asyncio.wait_for(task, 1) == b"MSH|x"


class _Writer:
    """Enough of a StreamWriter to capture what write_frame sends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.drained = 0

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        self.drained += 1


async def test_write_frame_frames_and_drains() -> None:
    writer = _Writer()
    await write_frame(writer, "MSH|1")  # type: ignore[arg-type]
    assert bytes(writer.data) == b"\x0bMSH|1\x1c\r" and writer.drained == 1
    reader = _reader(bytes(writer.data))
    assert await read_frame(reader, FrameDecoder()) == b"MSH|1"
