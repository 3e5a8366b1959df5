"""Connection reuse that cannot duplicate: peers that close after each answer, `mllp: {reuse: false}`, and a
message the peer may have read is never written again within the same attempt."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from activities import mllp as mllp_mod
from activities.mllp import MllpSender, SendError
from infra.config import MllpOut
from interop.mllp import FrameDecoder, encode
from tests.delivery.harness import Hl7apyPeer, adt

RUNS, MESSAGES, CONCURRENCY = 5, 100, 8


def _ack(frame: bytes) -> bytes:
    msh = frame.decode().split("\r")[0].split("|")
    return encode("\r".join([f"MSH|^~\\&|LAB|LABFAC|EPIC|GENHOSP|20260101120000||ACK|A{msh[9]}|P|2.5.1",
                             f"MSA|AA|{msh[9]}"]))


def _control(frame: bytes) -> str:
    return frame.decode().split("\r")[0].split("|")[9]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_peer(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """An asyncio MLLP peer with a custom per-connection behaviour; yields (port, connection numbers seen)."""
    conns: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(conns)
        conns.append(n)
        try:
            await handler(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), conns
    finally:
        server.close()


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    decoder = FrameDecoder()
    while True:
        data = await reader.read(65536)
        if not data:
            return
        for frame in decoder.feed(data):
            yield frame


async def _drain(sender: MllpSender, cfg: MllpOut, queue: list[str]) -> None:
    while queue:
        c = queue.pop()
        assert (await sender.send(cfg, adt(c, "MRN1"), c)).startswith("AA")


async def test_no_duplicate_to_hl7apy_server_that_closes_after_each_answer() -> None:
    """hl7apy's MLLPServer answers one message per connection and closes: over several runs of concurrent
    sends every message arrives exactly once, with no failed send, and the sender stops keeping connections."""
    for run in range(RUNS):
        peer = Hl7apyPeer()
        port = peer.start()
        sender = MllpSender()
        cfg = MllpOut(host="127.0.0.1", port=port, connect_timeout="5s", ack_timeout="10s")
        controls = [f"R{run}M{i:04d}" for i in range(MESSAGES)]
        queue = list(reversed(controls))

        try:
            await asyncio.gather(*(_drain(sender, cfg, queue) for _ in range(CONCURRENCY)))
            assert not sender.reuses(cfg)  # learnt: this peer closes after each answer
        finally:
            await sender.close()
            peer.stop()
        counts = collections.Counter(peer.received)
        assert sorted(counts) == sorted(controls), f"run {run}: lost {set(controls) - set(counts)}"
        assert [c for c, n in counts.items() if n > 1] == [], f"run {run}: duplicates"


async def test_reuse_false_opens_one_connection_per_message() -> None:
    async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        async for frame in _frames(reader):
            writer.write(_ack(frame))
            await writer.drain()

    async with raw_peer(answer_all) as (port, conns):
        sender = MllpSender()
        try:
            kept = MllpOut(host="127.0.0.1", port=port)
            for i in range(5):
                await sender.send(kept, adt(f"K{i}", "MRN1"), f"K{i}")
            assert len(conns) == 1 and sender.reuses(kept)  # a peer that keeps connections gets one connection
            fresh = MllpOut(host="127.0.0.1", port=port, reuse=False)
            for i in range(5):
                await sender.send(fresh, adt(f"F{i}", "MRN1"), f"F{i}")
            assert len(conns) == 6
        finally:
            await sender.close()


async def test_a_message_the_peer_may_have_read_is_not_written_again_in_the_same_attempt() -> None:
    """The peer answers the first message, then reads the second on the kept connection and closes without an
    answer: it may have processed it, so the attempt fails (the retry policy decides) instead of an instant resend."""
    seen: list[str] = []

    async def read_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        async for frame in _frames(reader):
            seen.append(_control(frame))
            if len(seen) == 1:
                writer.write(_ack(frame))
                await writer.drain()
            else:
                return  # read, no answer, close

    async with raw_peer(read_then_drop) as (port, conns):
        sender = MllpSender()
        cfg = MllpOut(host="127.0.0.1", port=port, ack_timeout="5s")
        try:
            await sender.send(cfg, adt("D1", "MRN1"), "D1")
            with pytest.raises(SendError) as err:
                await sender.send(cfg, adt("D2", "MRN1"), "D2")
            assert err.value.error_class == "reset"
        finally:
            await sender.close()
    assert seen == ["D1", "D2"] and len(conns) == 1


async def test_a_kept_connection_closed_as_we_write_carries_the_message_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer closed the kept connection before our bytes arrived, and the idle check missed it (the close
    crossed the write): the reset proves the peer never read them, so the message goes once on a new connection,
    with no failure; and the sender learns to stop keeping connections to that peer."""
    seen: list[str] = []
    closed = asyncio.Event()

    async def answer_one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        async for frame in _frames(reader):
            seen.append(_control(frame))
            writer.write(_ack(frame))
            await writer.drain()
            if n == 0:
                writer.close()
                await writer.wait_closed()
                closed.set()
                return

    async with raw_peer(answer_one_then_close) as (port, conns):
        sender = MllpSender()
        cfg = MllpOut(host="127.0.0.1", port=port, ack_timeout="5s")
        try:
            await sender.send(cfg, adt("C1", "MRN1"), "C1")
            await asyncio.wait_for(closed.wait(), 10)
            monkeypatch.setattr(mllp_mod._Conn, "idle_and_open", lambda self: True)
            assert (await sender.send(cfg, adt("C2", "MRN1"), "C2")).startswith("AA")
            assert not sender.reuses(cfg)
        finally:
            await sender.close()
    assert seen == ["C1", "C2"] and len(conns) == 2
