"""MLLP sender: pooled persistent connections per destination, reconnect, ACK timeout, ACK interpretation."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
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


class _NotRead(Exception):
    """A reused connection the peer had already closed when our bytes reached it (its TCP stack answered with a
    reset): the peer cannot have read the message, so sending it again on a new connection cannot duplicate it."""


# A pooled connection the peer closed this soon after its answer: the peer closes after each answer (hl7apy's
# MLLPServer, many "one message per connection" systems) and gets one connection per message from then on.
CLOSE_AFTER_ANSWER_S = 2.0
# A peer found to close after each answer is tried with a kept connection again after this long (it may change).
REPROBE_AFTER_S = 600.0
# After an EOF on a reused connection, how long to wait for the reset that proves the peer never read our bytes.
RESET_WAIT_S = 0.25


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder
    created: float
    answered_at: float = 0.0

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

    def peer_reset(self) -> bool:
        """True if the peer's TCP stack answered our bytes with a reset (its socket was closed when they came)."""
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except (OSError, ValueError):
            return False
        return err in (errno.ECONNRESET, errno.EPIPE)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class _PeerState:
    """What the sender learnt about one peer: whether it closes the connection after each answer."""

    closes_after_answer_at: float | None = None

    def reusable(self, now: float) -> bool:
        return self.closes_after_answer_at is None or now - self.closes_after_answer_at > REPROBE_AFTER_S

    def saw_close_after_answer(self, conn: _Conn, now: float) -> None:
        if conn.answered_at and now - conn.answered_at <= CLOSE_AFTER_ANSWER_S:
            self.closes_after_answer_at = now


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
    """One per worker process; keeps up to `pool_size` idle connections per peer, unless the peer closes them.

    A message is written a second time within one attempt only when the peer provably did not read it (its TCP
    stack reset our bytes on a connection it had closed); any other failure after a write is a failed attempt,
    retried by the destination's retry policy and visible in the attempt history.
    """

    def __init__(self, pool_size: int = 4, max_frame: int = 16 * 1024 * 1024) -> None:
        self.pool_size = pool_size
        self.max_frame = max_frame
        self._idle: dict[tuple[str, int, bool, str], list[_Conn]] = defaultdict(list)
        self._peers: dict[tuple[str, int, bool, str], _PeerState] = defaultdict(_PeerState)

    def reuses(self, cfg: MllpOut) -> bool:
        """Whether the next message to this peer may go over a kept connection."""
        return cfg.reuse and self._peers[_pool_key(cfg)].reusable(time.monotonic())

    async def _connect(self, cfg: MllpOut) -> _Conn:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port, ssl=ctx, limit=self.max_frame),
            timeout=cfg.connect_timeout.total_seconds())
        return _Conn(reader, writer, FrameDecoder(max_frame_size=self.max_frame), time.monotonic())

    async def _take(self, cfg: MllpOut) -> tuple[_Conn, bool]:
        """A pooled connection (reused=True) that the peer has not closed, else a new one."""
        key = _pool_key(cfg)
        idle = self._idle[key]
        state = self._peers[key]
        while idle and self.reuses(cfg):
            conn = idle.pop()
            if conn.idle_and_open():
                return conn, True
            state.saw_close_after_answer(conn, time.monotonic())
            conn.close()
        return await self._connect(cfg), False

    def _give_back(self, cfg: MllpOut, conn: _Conn) -> None:
        key = _pool_key(cfg)
        idle = self._idle[key]
        now = time.monotonic()
        conn.answered_at = now
        if self.reuses(cfg) and not conn.idle_and_open():
            # The peer's close came right behind its answer.
            self._peers[key].saw_close_after_answer(conn, now)
        if self.reuses(cfg) and conn.idle_and_open() and len(idle) < self.pool_size:
            idle.append(conn)
            return
        conn.close()
        if not self.reuses(cfg):
            while idle:
                idle.pop().close()

    async def send(self, cfg: MllpOut, payload: str, control_id: str) -> str:
        """Send one message and wait for its ACK; return the peer's answer summary on AA/CA."""
        try:
            conn, reused = await self._take(cfg)
            try:
                frame = await self._exchange(cfg, conn, payload, reused=reused)
            except _NotRead:
                # The peer had closed the kept connection (after its last answer or when idle) and did not read
                # this message: learn that, and send it on a new connection now; not a failed attempt.
                self._peers[_pool_key(cfg)].saw_close_after_answer(conn, time.monotonic())
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
            try:
                nothing_back = not conn.decoder.in_frame and not conn.decoder.buffered
                if reused and nothing_back and await self._reset_by_peer(conn, exc):
                    raise _NotRead from exc
            finally:
                conn.close()
            if isinstance(exc, asyncio.IncompleteReadError):
                raise SendError("reset", "peer closed the connection before sending an ACK (the message may have"
                                " been read: it is sent again by the retry policy)") from exc
            if isinstance(exc, TimeoutError):
                raise SendError("timeout", f"no ACK within {cfg.ack_timeout.total_seconds():g}s") from exc
            raise SendError(_classify(exc), f"send failed: {type(exc).__name__}") from exc
        except BaseException:
            conn.close()
            raise

    @staticmethod
    async def _reset_by_peer(conn: _Conn, exc: BaseException) -> bool:
        """Whether the peer's TCP stack refused the bytes we wrote (so its application never read them).

        A reset seen directly proves it. A plain EOF does not: the peer may have read the message and closed
        without answering; but when its close crossed our write, a reset for our bytes follows within a round
        trip, so wait briefly for one.
        """
        if isinstance(exc, ConnectionResetError | BrokenPipeError):
            return True
        if not isinstance(exc, asyncio.IncompleteReadError):
            return False
        deadline = time.monotonic() + RESET_WAIT_S
        while True:
            if conn.peer_reset():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

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
