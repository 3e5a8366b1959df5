"""HL7 v2 batch files: split a file into messages (streaming), and write batch envelopes.

A file is either an HL7 batch (FHS / BHS ... messages ... BTS / FTS, HL7 v2 chapter 2.10.3) or plain messages one
after another (MSH to MSH). Segments end with CR, LF or CRLF (mixed is tolerated); a UTF-8 byte order mark at the
start, blank lines and stray MLLP framing bytes (VT, FS) are ignored.

The splitter is a push parser (`BatchSplitter.feed` / `close`) so a 100 MB file never needs 100 MB of memory:
at most one message plus one read chunk is held. Each message comes out with its index in the file (0-based,
envelope segments not counted) and the byte offset of its first byte, so a reader can resume after a crash
with `iter_messages(stream, start_offset=..., start_index=...)`.

Text between messages that is neither an envelope segment nor part of a message (garbage before the first MSH,
a segment with no MSH before it) comes out as its own item with `malformed` set, so the caller can store it as a
rejected message at its position instead of silently dropping it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

BOM = b"\xef\xbb\xbf"
ENVELOPE_SEGMENTS = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_FRAMING = b"\x0b\x1c"
CHUNK_SIZE = 64 * 1024
NEWLINES = {"cr": "\r", "lf": "\n", "crlf": "\r\n"}


@dataclass(frozen=True)
class BatchItem:
    """One message of a file: its position and its segments joined with CR (the HL7 segment terminator)."""

    index: int
    offset: int  # byte offset of the message's first segment in the file
    end: int  # byte offset just past the message's last segment terminator
    raw: bytes
    malformed: str | None = None  # why this is not a message (text outside any message), else None


@dataclass
class Envelope:
    """What the file's envelope said: header segments and trailer counts (None when absent)."""

    fhs: bytes | None = None
    bhs: list[bytes] = field(default_factory=list)
    bts_counts: list[int | None] = field(default_factory=list)
    fts_count: int | None = None

    def problems(self, messages: int) -> list[str]:
        """Trailer counts that disagree with what the file held (reported, never a reason to drop messages)."""
        out: list[str] = []
        declared = [c for c in self.bts_counts if c is not None]
        if declared and len(declared) == len(self.bts_counts) and sum(declared) != messages:
            out.append(f"BTS-1 declares {sum(declared)} message(s), the file holds {messages}")
        if self.fts_count is not None and self.bhs and self.fts_count != len(self.bhs):
            out.append(f"FTS-1 declares {self.fts_count} batch(es), the file holds {len(self.bhs)}")
        return out


def _count(segment: bytes) -> int | None:
    parts = segment.split(segment[3:4], 2) if len(segment) > 3 else []
    if len(parts) < 2:
        return None
    try:
        return int(parts[1].strip() or b"x")
    except ValueError:
        return None


class BatchSplitter:
    """Push bytes in, get complete messages out; `close()` flushes the last one."""

    def __init__(self, *, start_offset: int = 0, start_index: int = 0) -> None:
        self.envelope = Envelope()
        self._buf = b""
        self._pos = start_offset  # file offset of _buf[0]
        self._first = start_offset == 0
        self._index = start_index
        self._segments: list[bytes] = []
        self._msg_start = 0
        self._msg_end = 0
        self._msg_malformed: str | None = None

    def feed(self, data: bytes) -> list[BatchItem]:
        out: list[BatchItem] = []
        buf = self._buf + data if self._buf else data
        if self._first and buf:
            if len(buf) < 3 and BOM.startswith(buf):
                self._buf = buf
                return out
            self._first = False
            if buf.startswith(BOM):
                buf = buf[3:]
                self._pos += 3
        start = 0
        n = len(buf)
        while True:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < n:
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                break  # a CR as the last byte may be the first half of a CRLF: wait for more
            self._line(buf[start:end], self._pos + start, self._pos + nxt, out)
            start = nxt
        self._buf = buf[start:]
        self._pos += start
        return out

    def close(self) -> list[BatchItem]:
        out: list[BatchItem] = []
        if self._buf:
            if self._first and self._buf.startswith(BOM):
                self._buf, self._pos = self._buf[3:], self._pos + 3
            end = self._pos + len(self._buf)
            line = self._buf[:-1] if self._buf.endswith(b"\r") else self._buf
            self._line(line, self._pos, end, out)
            self._buf = b""
        self._flush(out)
        return out

    def _line(self, line: bytes, start: int, end: int, out: list[BatchItem]) -> None:
        stripped = line.strip(_FRAMING)
        if stripped != line:
            start += len(line) - len(line.lstrip(_FRAMING))
            line = stripped
        if not line.strip():
            return
        tag = line[:3]
        if tag in ENVELOPE_SEGMENTS and (len(line) == 3 or line[3:4] in b"|^~\\&#"):
            self._flush(out)
            if tag == b"FHS":
                self.envelope.fhs = line
            elif tag == b"BHS":
                self.envelope.bhs.append(line)
            elif tag == b"BTS":
                self.envelope.bts_counts.append(_count(line))
            else:
                self.envelope.fts_count = _count(line)
            return
        if tag == b"MSH":
            self._flush(out)
            self._begin(start, None)
        elif not self._segments:
            self._begin(start, "text outside any message (no MSH segment before it)")
        self._segments.append(line)
        self._msg_end = end

    def _begin(self, start: int, malformed: str | None) -> None:
        self._msg_start = start
        self._msg_malformed = malformed

    def _flush(self, out: list[BatchItem]) -> None:
        if not self._segments:
            return
        out.append(BatchItem(self._index, self._msg_start, self._msg_end, b"\r".join(self._segments),
                             self._msg_malformed))
        self._index += 1
        self._segments = []


def iter_messages(stream: BinaryIO, *, start_offset: int = 0, start_index: int = 0,
                  chunk_size: int = CHUNK_SIZE) -> Iterator[BatchItem]:
    """Yield the messages of a binary stream one by one; with start_offset, seek there first (resume)."""
    if start_offset:
        stream.seek(start_offset)
    splitter = BatchSplitter(start_offset=start_offset, start_index=start_index)
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        yield from splitter.feed(chunk)
    yield from splitter.close()


def split_bytes(data: bytes) -> list[BatchItem]:
    """All messages of an in-memory file (small files and tests)."""
    splitter = BatchSplitter()
    return [*splitter.feed(data), *splitter.close()]


@dataclass(frozen=True)
class BatchHeader:
    """Values for the FHS/BHS header of a written batch file (MSH-3/4/5/6 style names)."""

    sending_application: str = "LIFELINE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    comment: str = ""


def _header(tag: str, h: BatchHeader, at: datetime) -> str:
    ts = at.strftime("%Y%m%d%H%M%S")
    fields = [tag, "^~\\&", h.sending_application, h.sending_facility, h.receiving_application,
              h.receiving_facility, ts, "", "", h.comment, h.control_id]
    return "|".join(fields).rstrip("|")


def batch_open(h: BatchHeader, at: datetime, newline: str = "\r") -> str:
    """FHS and BHS segments, each terminated."""
    return _header("FHS", h, at) + newline + _header("BHS", h, at) + newline


def batch_close(messages: int, newline: str = "\r") -> str:
    """BTS (message count) and FTS (one batch) segments, each terminated."""
    return f"BTS|{messages}{newline}FTS|1{newline}"


def message_lines(er7: str, newline: str = "\r") -> str:
    """One message with every segment terminated by `newline` (whatever its own segment separators were)."""
    segments = [s for s in er7.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    return "".join(s + newline for s in segments)


def write_batch(messages: Iterable[str], h: BatchHeader, at: datetime, newline: str = "\r") -> Iterator[str]:
    """The text of a batch file, piece by piece: FHS, BHS, each message, BTS with the count, FTS."""
    yield batch_open(h, at, newline)
    count = 0
    for er7 in messages:
        count += 1
        yield message_lines(er7, newline)
    yield batch_close(count, newline)
