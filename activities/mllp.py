"""MLLP sender: pooled persistent connections per destination, reconnect, ACK timeout, ACK interpretation."""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass

from infra.config import MllpOut
from interop.ack import parse_ack
from interop.errors import InteropError
from interop.mllp import FrameDecoder, encode


class SendError(Exception):
    """A send that failed; error_class is one of the diagnosable signatures, permanent means do not retry."""

    def __init__(self, error_class: str, text: str, *, permanent: bool = False, peer_answer: str = "") -> None:
        super().__init__(text)
        self.error_class = error_class
        self.text = text
        self.permanent = permanent
        self.peer_answer = peer_answer


class _PeerClosedIdle(Exception):
    """A reused connection turned out closed by the peer with no byte of an answer: it closed the idle
    connection as we wrote (else it would be the peer dropping a message unanswered, which a resend covers too)."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder
    created: float

    @property
    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing() or self.reader.exception() is not None)

    def idle_and_open(self) -> bool:
        """True if a pooled connection can carry the next message: open, and nothing arrived while it sat idle.

        A peer that closes after each ACK (hl7apy's MLLPServer) or after its own idle timeout leaves a FIN (or a
        TLS close_notify) that the event loop may not have read yet; an idle socket that is readable is exactly
        that (or stray bytes), so it is not reused.
        """
        if not self.usable:
            return False
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, OSError) and exc.errno is None and "Name or service" in str(exc) or (
            isinstance(exc, OSError) and getattr(exc, "errno", None) in (-2, -3, -5)):
        return "dns"
    return "connection"


def _pool_key(cfg: MllpOut) -> tuple[str, int, bool, str]:
    # The trust settings are part of the key: a connection verified against one destination's ca_file must not
    # carry another destination's messages to the same host and port (nor a plain one a TLS destination's).
    return cfg.host, cfg.port, cfg.tls, str(cfg.ca_file or "")


class MllpSender:
    """One per worker process; keeps up to `pool_size` idle connections per peer."""

    def __init__(self, pool_size: int = 4, max_frame: int = 16 * 1024 * 1024) -> None:
        self.pool_size = pool_size
        self.max_frame = max_frame
        self._idle: dict[tuple[str, int, bool, str], list[_Conn]] = defaultdict(list)

    async def _connect(self, cfg: MllpOut) -> _Conn:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port, ssl=ctx, limit=self.max_frame),
            timeout=cfg.connect_timeout.total_seconds())
        return _Conn(reader, writer, FrameDecoder(max_frame_size=self.max_frame), time.monotonic())

    async def _take(self, cfg: MllpOut) -> tuple[_Conn, bool]:
        """A pooled connection (reused=True) that the peer has not closed, else a new one."""
        idle = self._idle[_pool_key(cfg)]
        while idle:
            conn = idle.pop()
            if conn.idle_and_open():
                return conn, True
            conn.close()
        return await self._connect(cfg), False

    def _give_back(self, cfg: MllpOut, conn: _Conn) -> None:
        idle = self._idle[_pool_key(cfg)]
        if conn.usable and len(idle) < self.pool_size:
            idle.append(conn)
        else:
            conn.close()

    async def send(self, cfg: MllpOut, payload: str, control_id: str) -> str:
        """Send one message and wait for its ACK; return the peer's answer summary on AA/CA."""
        try:
            conn, reused = await self._take(cfg)
            try:
                frame = await self._exchange(cfg, conn, payload, reused=reused)
            except _PeerClosedIdle:
                # The peer closed the pooled connection as we wrote (it closes idle connections, or after every
                # message): its normal behaviour, not a failed attempt, so send again on a new connection now.
                conn = await self._connect(cfg)
                frame = await self._exchange(cfg, conn, payload, reused=False)
        except (OSError, TimeoutError) as exc:
            raise SendError(_classify(exc), f"connect to {cfg.host}:{cfg.port} failed: {type(exc).__name__}") from exc
        self._give_back(cfg, conn)
        try:
            ack = parse_ack(frame.decode("utf-8", errors="replace"))
        except InteropError as exc:
            raise SendError("bad_ack", f"peer answered with something that is not an ACK: {exc}") from exc
        # The ERR codes (table 0357) lead the summary: diagnosis keys its signatures on them (ack_reject:207).
        answer = (f"{ack.code}" + (f" ERR {','.join(ack.error_codes)}" if ack.error_codes else "")
                  + (f" {'; '.join(ack.error_texts)}" if ack.error_texts else ""))
        if ack.control_id and ack.control_id != control_id:
            raise SendError("ack_mismatch", f"ACK for control id {ack.control_id!r}, expected "
                            f"{control_id!r}", peer_answer=answer)
        if ack.is_reject:
            raise SendError("ack_reject", f"peer rejected the message ({answer})", permanent=True,
                            peer_answer=answer)
        if ack.is_error:
            raise SendError("ack_error", f"peer answered {answer}", peer_answer=answer)
        return answer

    async def _exchange(self, cfg: MllpOut, conn: _Conn, payload: str, *, reused: bool) -> bytes:
        """Write one frame and read the answer frame; connection failures become SendError."""
        try:
            conn.writer.write(encode(payload))
            await conn.writer.drain()
            return await asyncio.wait_for(self._read_frame(conn), timeout=cfg.ack_timeout.total_seconds())
        except (OSError, TimeoutError, asyncio.IncompleteReadError, InteropError) as exc:
            conn.close()
            closed = isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError)
            if reused and closed and not conn.decoder.in_frame and not conn.decoder.buffered:
                raise _PeerClosedIdle from exc
            if isinstance(exc, asyncio.IncompleteReadError):
                raise SendError("reset", "peer closed the connection before sending an ACK") from exc
            if isinstance(exc, TimeoutError):
                raise SendError("timeout", f"no ACK within {cfg.ack_timeout.total_seconds():g}s") from exc
            raise SendError(_classify(exc), f"send failed: {type(exc).__name__}") from exc
        except BaseException:
            conn.close()
            raise

    async def _read_frame(self, conn: _Conn) -> bytes:
        while True:
            data = await conn.reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            frames = conn.decoder.feed(data)
            if frames:
                return frames[0]

    async def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
