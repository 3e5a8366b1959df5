"""MLLP listeners: one asyncio server per channel; frame → check → store → commit → ACK."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from dataclasses import dataclass, field

import asyncpg
from opentelemetry.trace import Span, SpanKind

from activities.store import DEFAULT_LIMITS, accept
from infra import tracing
from infra.config import Channel, LifelineConfig
from infra.crypto import Cipher
from infra.db import create_pool
from infra.live import start_source
from infra.production import plaintext_channels
from infra.settings import Settings
from interop.ack import build_nak_for_unparseable
from interop.errors import APPLICATION_INTERNAL_ERROR, FramingError, HL7ParseError
from interop.message import Limits
from interop.mllp import FrameDecoder, FrameTooLarge, encode, read_frame

log = logging.getLogger("lifeline.listener")


def tls_context(channel: Channel) -> ssl.SSLContext | None:
    assert channel.mllp is not None
    tls = channel.mllp.tls
    if not tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.client_ca is not None:
        ctx.load_verify_locations(str(tls.client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class BufferBudgetExceeded(FramingError):
    """The listener's partial frames together would exceed max_buffered_bytes."""


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class BudgetedDecoder(FrameDecoder):
    """A frame decoder whose partial frame counts against a budget shared by every connection of a listener."""

    def __init__(self, budget: _Budget, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.budget = budget
        self._held = 0

    def feed(self, data: bytes) -> list[bytes]:
        # Refuse before consuming: the chunk could all become partial-frame bytes.
        if data and self.budget.used - self._held + self.buffered + len(data) > self.budget.limit:
            raise BufferBudgetExceeded(f"buffered partial frames would exceed {self.budget.limit} bytes")
        out = super().feed(data)
        self.budget.used += self.buffered - self._held
        self._held = self.buffered
        return out

    def release(self) -> None:
        self.budget.used -= self._held
        self._held = 0


@dataclass
class ChannelListener:
    channel: Channel
    pool: asyncpg.Pool
    cipher: Cipher
    limits: Limits = DEFAULT_LIMITS
    server: asyncio.Server | None = None
    connections: int = 0
    per_peer: dict[str, int] = field(default_factory=dict)
    budget: _Budget | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, host: str | None = None, port: int | None = None) -> asyncio.Server:
        cfg = self.channel.mllp
        assert cfg is not None
        self.server = await asyncio.start_server(
            self._handle, host or cfg.host, port if port is not None else cfg.port,
            ssl=tls_context(self.channel), limit=cfg.max_message_bytes + 1024, backlog=1024, reuse_address=True)
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.channel.mllp
        assert cfg is not None
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        if self.connections >= cfg.max_connections:
            log.warning("channel %s: connection limit %d reached, refusing %s", self.channel.name,
                        cfg.max_connections, peer_text)
            writer.close()
            return
        host = peer[0] if isinstance(peer, tuple) else ""
        if self.per_peer.get(host, 0) >= cfg.max_connections_per_peer:
            log.warning("channel %s: %s already has %d connections (max_connections_per_peer), refusing another",
                        self.channel.name, host, cfg.max_connections_per_peer)
            writer.close()
            return
        self.connections += 1
        self.per_peer[host] = self.per_peer.get(host, 0) + 1
        if self.budget is None:
            self.budget = _Budget(cfg.max_buffered_bytes)
        decoder = BudgetedDecoder(self.budget, max_frame_size=cfg.max_message_bytes)
        idle = cfg.idle_timeout.total_seconds()
        drain = cfg.write_timeout.total_seconds()
        try:
            while True:
                # read_frame hands out frames that arrived together one at a time, and those before an oversized
                # frame before its FrameTooLarge, so a pipelining sender gets every answer, in order.
                try:
                    frame = await asyncio.wait_for(read_frame(reader, decoder), timeout=idle)
                except TimeoutError:
                    log.info("channel %s: closing idle connection from %s", self.channel.name, peer_text)
                    break
                except FrameTooLarge as exc:
                    nak = build_nak_for_unparseable(
                        "", HL7ParseError(f"message larger than {cfg.max_message_bytes} bytes", code="100"))
                    log.warning("channel %s: frame too large from %s: %s", self.channel.name, peer_text, exc)
                    writer.write(encode(nak))
                    await asyncio.wait_for(writer.drain(), drain)
                    continue
                except BufferBudgetExceeded:
                    nak = build_nak_for_unparseable("", HL7ParseError(
                        "listener busy: too many partial messages buffered; resend later", code="207"))
                    log.warning("channel %s: buffered-bytes budget (%d) reached; closing %s", self.channel.name,
                                cfg.max_buffered_bytes, peer_text)
                    writer.write(encode(nak))
                    await asyncio.wait_for(writer.drain(), drain)
                    break
                if frame is None:
                    break
                writer.write(encode(await self._accept(frame, peer_text)))
                await asyncio.wait_for(writer.drain(), drain)
        except TimeoutError:
            log.warning("channel %s: %s did not read its ACK within %gs (write_timeout); closing", self.channel.name,
                        peer_text, drain)
            writer.transport.abort()
        except (ConnectionError, OSError) as exc:
            log.info("channel %s: connection from %s ended: %s", self.channel.name, peer_text, type(exc).__name__)
        finally:
            decoder.release()
            self.per_peer[host] -= 1
            if not self.per_peer[host]:
                del self.per_peer[host]
            self.connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _accept(self, frame: bytes, peer: str | None) -> str:
        with tracing.tracer().start_as_current_span("mllp.accept", kind=SpanKind.SERVER, attributes={
                "lifeline.channel": self.channel.name, "lifeline.org": self.channel.org,
                "messaging.message.body.size": len(frame)}) as span:
            ack = await self._accept_traced(frame, peer, span)
            return ack

    async def _accept_traced(self, frame: bytes, peer: str | None, span: Span) -> str:
        try:
            result = await accept(self.pool, self.cipher, self.channel, frame, source="mllp", peer=peer,
                                  limits=self.limits)
            if span.is_recording():  # ids and types only
                span.set_attributes({"lifeline.message_id": result.message_id, "lifeline.status": result.status,
                                     "hl7.ack_code": result.ack_code, "lifeline.duplicate": result.duplicate})
            return result.ack
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Not stored, so not acknowledged: AE tells the sender to send it again.
            log.error("channel %s: cannot store message (%s); answering AE", self.channel.name, type(exc).__name__)
            err = HL7ParseError("message not stored (store unavailable); resend", code=APPLICATION_INTERNAL_ERROR)
            try:
                from interop.ack import build_ack
                from interop.message import parse

                return build_ack(parse(frame.decode("utf-8", errors="replace")), code="AE", text=err.reason)
            except HL7ParseError:
                return build_nak_for_unparseable(frame.decode("utf-8", errors="replace"), err)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


def _binding(channel: Channel) -> tuple[object, ...]:
    assert channel.mllp is not None
    return channel.mllp.host, channel.mllp.port, channel.mllp.tls


@dataclass
class ListenerSet:
    """The MLLP servers of every channel in the current configuration version: a new channel's port opens, a
    removed one closes, a changed host/port/TLS re-binds; any other change (routes, validation, limits) applies
    to the next message without touching the socket, so unchanged channels never refuse a connection."""

    pool: asyncpg.Pool
    cipher: Cipher
    only: list[str] | None = None
    limits: Limits = DEFAULT_LIMITS
    listeners: dict[str, ChannelListener] = field(default_factory=dict)

    async def apply(self, config: LifelineConfig) -> None:
        wanted = {c.name: c for c in config.channels if c.mllp and (not self.only or c.name in self.only)}
        for name in [n for n in self.listeners if n not in wanted]:
            await self.listeners.pop(name).close()
            log.info("channel %s removed; its port is closed", name)
        for name, channel in wanted.items():
            current = self.listeners.get(name)
            if current is not None and _binding(current.channel) == _binding(channel):
                current.channel = channel
                continue
            if current is not None:
                await self.listeners.pop(name).close()
            lst = ChannelListener(channel, self.pool, self.cipher, self.limits)
            try:
                await lst.start()
            except OSError as exc:
                assert channel.mllp is not None
                log.error("channel %s cannot listen on %s:%d: %s", name, channel.mllp.host, channel.mllp.port,
                          exc.strerror or exc)
                continue
            self.listeners[name] = lst
            assert channel.mllp is not None
            log.info("channel %s listening on %s:%d%s", name, channel.mllp.host, lst.port,
                     " (TLS)" if channel.mllp.tls else "")

    async def close(self) -> None:
        for lst in self.listeners.values():
            await lst.close()
        self.listeners.clear()


async def run_listeners(settings: Settings, config: LifelineConfig, only: list[str] | None = None) -> None:
    # min_size=0: the listener listens (and answers AE "not stored; resend") even while PostgreSQL is down; the
    # file's channels serve until the stored configuration versions can be read.
    pool = await create_pool(settings.database_url, min_size=0, max_size=settings.database_pool_max,
                             role=settings.database_role)
    cipher = settings.cipher("store")
    stop = asyncio.Event()
    source, following = await start_source(config, pool, settings.database_url, stop)
    if settings.environment == "production":
        for name in plaintext_channels(source.current):
            log.warning("channel %s: MLLP listener is plaintext (tls: off) in production: messages and ACKs cross "
                        "the network unencrypted", name)
    listeners = ListenerSet(pool, cipher, only, settings.message_limits())
    await listeners.apply(source.current)
    if not listeners.listeners:
        log.warning("no MLLP channel configured; listener idle")
    source.subscribe(listeners.apply)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await following
    await listeners.close()
    await pool.close()
