"""MLLP framing (``<SB> payload <EB><CR>``): an incremental decoder and asyncio stream helpers."""

from __future__ import annotations

import asyncio
from collections import deque

from interop.errors import FrameTooLarge, FramingError

SB = 0x0B
EB = 0x1C
CR = 0x0D
START = bytes([SB])
END = bytes([EB, CR])
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024

__all__ = [
    "CR", "EB", "SB", "FrameDecoder", "FrameTooLarge", "FramingError", "encode", "read_frame", "write_frame",
]


def encode(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """Frame one message; raise :class:`FramingError` if it contains a framing byte."""
    payload = message.encode(encoding) if isinstance(message, str) else bytes(message)
    if START in payload or bytes([EB]) in payload:
        raise FramingError("the payload contains an MLLP start (0x0b) or end (0x1c) byte")
    return START + payload + END


class FrameDecoder:
    """Incremental MLLP decoder: feed it bytes as they arrive, get whole frames (payloads) back.

    Bytes outside frames are dropped and counted; a missing CR after EB is tolerated; a start block inside
    an unfinished frame abandons that frame (the peer restarted). A frame over ``max_frame_size`` raises
    :class:`FrameTooLarge` as soon as it is detected; frames decoded before it in the same call are kept and
    returned by the next ``feed`` call (``feed(b"")`` is fine), and decoding resumes at the next SB.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self.dropped_bytes = 0
        self.oversized_frames = 0
        self.abandoned_frames = 0
        self._buffer = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversized frame: discard up to the next SB
        self._after_end = False  # just saw EB: a CR here belongs to the trailer
        self._ready: deque[bytes] = deque()  # decoded before a FrameTooLarge, returned by the next feed
        self._unread = b""  # input not yet consumed when FrameTooLarge was raised
        self._queue: deque[bytes] = deque()  # frames read_frame has decoded but not yet returned
        self._deferred: FrameTooLarge | None = None  # raised by read_frame once the frames before it are out

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not yet ended."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes of the current partial frame."""
        return len(self._buffer)

    def pending(self) -> int:
        """Decoded frames not yet handed out (after a :class:`FrameTooLarge`, or queued by ``read_frame``)."""
        return len(self._ready) + len(self._queue)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes and return every frame they complete, in order."""
        if self._unread:
            data = self._unread + bytes(data)
            self._unread = b""
        out: list[bytes] = list(self._ready)
        self._ready.clear()
        pos, n = 0, len(data)
        while pos < n:
            if self._after_end:
                self._after_end = False
                if data[pos] == CR:
                    pos += 1
                    continue
            if not self._in_frame:
                start = data.find(START, pos)
                if start == -1:
                    self.dropped_bytes += n - pos
                    break
                self.dropped_bytes += start - pos
                self._in_frame = True
                self._skipping = False
                pos = start + 1
                continue
            end = data.find(EB, pos)
            stop = end if end != -1 else n
            restart = data.find(START, pos, stop)
            if restart != -1:
                # A new frame began before this one ended (the peer restarted): drop the unfinished one.
                self.dropped_bytes += len(self._buffer) + restart - pos
                self.abandoned_frames += 0 if self._skipping else 1
                self._buffer.clear()
                self._skipping = False
                pos = restart + 1
                continue
            if self._skipping:
                self.dropped_bytes += stop - pos
            else:
                self._buffer += data[pos:stop]
                if len(self._buffer) > self.max_frame_size:
                    size = len(self._buffer)
                    self.dropped_bytes += size
                    self._buffer.clear()
                    self._skipping = True
                    self.oversized_frames += 1
                    # Keep what is decoded and what is unread, so the next feed resumes exactly here.
                    self._ready.extend(out)
                    self._unread = data[stop:]
                    raise FrameTooLarge(size, self.max_frame_size)
            if end == -1:
                break
            if self._skipping:
                self._skipping = False
                self.dropped_bytes += 1
            else:
                out.append(bytes(self._buffer))
            self._buffer.clear()
            self._in_frame = False
            self._after_end = True
            pos = end + 1
        return out

    def frames(self) -> list[bytes]:
        """Frames decoded but not yet handed out, then cleared."""
        return self.feed(b"")


async def read_frame(reader: asyncio.StreamReader, decoder: FrameDecoder) -> bytes | None:
    """The next frame from a stream, or None at end of stream (an unfinished frame at EOF is dropped).

    Frames arriving together are queued in the decoder and handed out one per call; a too-large frame
    raises :class:`FrameTooLarge` and the next call continues after it.
    """
    while True:
        if decoder._queue:
            return decoder._queue.popleft()
        if decoder._deferred is not None:
            error, decoder._deferred = decoder._deferred, None
            raise error
        if decoder._unread or decoder._ready:
            chunk = b""
        else:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                decoder.dropped_bytes += decoder.buffered
                return None
        try:
            decoder._queue.extend(decoder.feed(chunk))
        except FrameTooLarge as exc:
            # Frames that arrived before the oversized one are handed out first, in order.
            decoder._queue.extend(decoder._ready)
            decoder._ready.clear()
            decoder._deferred = exc


async def write_frame(writer: asyncio.StreamWriter, payload: str | bytes) -> None:
    """Frame and send one message, waiting until the transport accepts it."""
    writer.write(encode(payload))
    await writer.drain()
