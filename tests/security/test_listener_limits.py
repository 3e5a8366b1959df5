"""Finding 7 (listener and body limits): per-peer connection caps, an aggregate cap on buffered partial frames, a
timeout on drain(), and a streaming size limit on REST bodies; each a clear error, none crashing the process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import mint_token
from infra.config import EXAMPLE_CONFIG, load_config
from infra.crypto import Cipher
from interop.mllp import SB, encode
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.delivery.harness import adt
from tests.delivery.test_ingress import MllpClient, channel, listening
from workers.listener import ChannelListener


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def closed(client: MllpClient) -> bool:
    """True when the server closed the connection (EOF), False if it answered something."""
    data = await asyncio.wait_for(client.reader.read(1), 10)
    return data == b""


async def test_one_peer_cannot_take_every_connection(app_pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    async with listening(app_pool, store_cipher, channel(max_connections_per_peer=2)) as listener:
        first, second = await MllpClient.connect(listener.port), await MllpClient.connect(listener.port)
        assert (await first.send(adt("P1", "M1"))).code == "AA"
        assert (await second.send(adt("P2", "M2"))).code == "AA"
        third = await MllpClient.connect(listener.port)
        assert await closed(third)
        first.writer.close()
        await wait_until(lambda: listener.per_peer.get("127.0.0.1") == 1)
        fourth = await MllpClient.connect(listener.port)
        assert (await fourth.send(adt("P3", "M3"))).code == "AA"
        for c in (second, third, fourth):
            c.writer.close()
        await wait_until(lambda: listener.connections == 0 and listener.budget is not None
                         and listener.budget.used == 0)


async def test_partial_frames_share_one_budget(app_pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    async with listening(app_pool, store_cipher, channel(max_buffered_bytes=4096)) as listener:
        slow = await MllpClient.connect(listener.port)
        text = adt("B1", "M1")
        slow.writer.write(bytes([SB]) + text.encode()[:10] + b"X" * 2500)  # a partial frame of ~2.5 KB
        await slow.writer.drain()
        await wait_until(lambda: listener.budget is not None and listener.budget.used >= 2500)
        greedy = await MllpClient.connect(listener.port)
        greedy.writer.write(bytes([SB]) + b"Y" * 3000)
        await greedy.writer.drain()
        nak = await greedy.ack()
        assert nak.code == "AR" and "listener busy" in nak.errors[0].text
        assert await closed(greedy)
        # The slow sender is unaffected; a fresh connection with a normal message still gets its AA.
        fresh = await MllpClient.connect(listener.port)
        assert (await fresh.send(adt("B2", "M2"))).code == "AA"
        slow.writer.close()
        fresh.writer.close()
        await wait_until(lambda: listener.budget is not None and listener.budget.used == 0)


class _StuckWriter:
    """A peer that never reads: drain() never completes."""

    def __init__(self) -> None:
        self.aborted = asyncio.Event()
        self.transport = self
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return ("10.0.0.9", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        await asyncio.Event().wait()

    def abort(self) -> None:
        self.aborted.set()

    def close(self) -> None:
        pass


async def test_a_peer_that_never_reads_its_ack_is_dropped(app_pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    listener = ChannelListener(channel(write_timeout="200ms"), app_pool, store_cipher)
    reader = asyncio.StreamReader()
    reader.feed_data(encode(adt("D1", "M1")))
    writer = _StuckWriter()
    await asyncio.wait_for(listener._handle(reader, writer), 10)  # type: ignore[arg-type]
    assert writer.aborted.is_set() and writer.written  # the ACK was written, the connection then dropped
    assert listener.connections == 0 and listener.per_peer == {}


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(make_settings(database_url=db_url, max_request_bytes=4096), load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


async def test_rest_bodies_are_limited_while_streaming(api: httpx.AsyncClient) -> None:
    token = mint_token(TEST_JWT_SECRET, subject="t", org="default", roles=["viewer"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    declared = await api.post("/api/hl7/validate", content=b"M" * 5000, headers=headers)
    assert declared.status_code == 413 and declared.json()["field"] == "body"
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 1 MB offered in 1 KB chunks, without a Content-Length
            sent += 1
            yield b"M" * 1024

    streamed = await api.post("/api/hl7/validate", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and streamed.headers["content-type"].startswith("application/problem+json")
    assert streamed.json()["field"] == "body"
    ok = await api.post("/api/hl7/validate", content=adt("R1", "M1"), headers=headers)
    assert ok.status_code == 200
