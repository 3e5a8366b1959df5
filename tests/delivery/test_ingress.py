"""Ingress edges: the MLLP listener over TLS (with and without client certificates) and at its limits (frame
size, idle timeout, 1,000 concurrent connections, connection cap); routing conditions and unrouted messages;
a resend end to end; the remote codec endpoints the Temporal Web UI and CLI call."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import resource
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from infra.config import Channel, validate_config
from infra.crypto import Cipher, payloads_to_json
from interop.ack import AckInfo, parse_ack
from interop.mllp import FrameDecoder, encode, read_frame
from tests.delivery.harness import (
    Engine,
    Peer,
    adt,
    api_client,
    bearer,
    closed_workflow,
    config_for,
    make_pki,
    running,
    send_mllp,
    wait_for,
)
from workers.listener import ChannelListener
from workflows.contract import delivery_workflow_id

WEB_UI_ORIGIN = "http://localhost:8233"


def channel(**mllp: Any) -> Channel:
    return validate_config({"channels": [{"name": "adt-in", "mllp": {"port": 2575, **mllp}}]}, "test").channels[0]


@contextlib.asynccontextmanager
async def listening(pool: asyncpg.Pool, cipher: Cipher, ch: Channel) -> AsyncIterator[ChannelListener]:
    listener = ChannelListener(ch, pool, cipher)
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        await listener.close()


class MllpClient:
    """A bare MLLP client over asyncio streams (optionally TLS) for ingress tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.decoder = reader, writer, FrameDecoder()

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> MllpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        return cls(reader, writer)

    async def write(self, *texts: str) -> None:
        self.writer.write(b"".join(encode(t) for t in texts))
        await self.writer.drain()

    async def ack(self, timeout: float = 10) -> AckInfo:
        frame = await asyncio.wait_for(read_frame(self.reader, self.decoder), timeout)
        assert frame is not None, "connection closed instead of an ACK"
        return parse_ack(frame.decode())

    async def send(self, text: str) -> AckInfo:
        await self.write(text)
        return await self.ack()

    async def closed(self, timeout: float = 5) -> bool:
        """True when the listener ends the connection (EOF or reset) within `timeout`."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def count(pool: asyncpg.Pool, where: str = "true") -> int:
    return int(await pool.fetchval(f"select count(*) from messages where {where}"))


# --- TLS on the listener -------------------------------------------------------------------------------------


def client_tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


async def test_tls_listener_requires_a_client_certificate_signed_by_client_ca(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    pki = make_pki(tmp_path)
    ch = channel(tls={"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)})
    async with listening(pool, store_cipher, ch) as listener:
        ok = await MllpClient.connect(listener.port, client_tls(pki.ca, pki.client_cert, pki.client_key))
        try:
            ack = await ok.send(adt("TLSIN1", "MRN1"))
        finally:
            await ok.close()
        assert ack.code == "AA" and ack.control_id == "TLSIN1"

        # No client certificate. Over TLS 1.2 the handshake itself fails ...
        tls12 = client_tls(pki.ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await MllpClient.connect(listener.port, tls12)
        # ... over TLS 1.3 the client finishes its side first, then the server's alert ends the connection.
        anon = await MllpClient.connect(listener.port, client_tls(pki.ca))
        try:
            await anon.write(adt("TLSIN2", "MRN2"))
            assert await anon.closed()
        finally:
            await anon.close()
        # Nor does a plain-TCP client get anything stored.
        plain = await MllpClient.connect(listener.port)
        try:
            await plain.write(adt("TLSIN3", "MRN3"))
            assert await plain.closed()
        finally:
            await plain.close()
    assert await count(pool) == 1
    assert await count(pool, "control_id = 'TLSIN1' and status = 'accepted'") == 1


async def test_tls_listener_without_client_ca_accepts_a_plain_tls_client(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    pki = make_pki(tmp_path)
    ch = channel(tls={"cert": str(pki.server_cert), "key": str(pki.server_key)})
    async with listening(pool, store_cipher, ch) as listener:
        client = await MllpClient.connect(listener.port, client_tls(pki.ca))
        try:
            assert (await client.send(adt("TLSIN4", "MRN4"))).code == "AA"
        finally:
            await client.close()
    assert await count(pool, "control_id = 'TLSIN4'") == 1


# --- listener limits -----------------------------------------------------------------------------------------


async def test_oversized_frame_is_answered_ar_and_the_connection_goes_on(
        pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    async with listening(pool, store_cipher, channel(max_message_bytes=2048)) as listener:
        big = adt("BIG1", "MRN1") + "\rNTE|1||" + "X" * 5000
        client = await MllpClient.connect(listener.port)
        try:
            ack = await client.send(big)
            assert ack.code == "AR"
            assert any("2048 bytes" in t and "larger" in t for t in ack.error_texts), ack.error_texts
            assert (await client.send(adt("SMALL1", "MRN1"))).code == "AA"
            # Pipelined: the oversized frame and the next message in one write still get two answers, in order.
            await client.write(big, adt("SMALL2", "MRN1"))
            first, second = await client.ack(), await client.ack()
            assert first.code == "AR" and (second.code, second.control_id) == ("AA", "SMALL2")
        finally:
            await client.close()
    assert await count(pool) == 2 and await count(pool, "control_id like 'SMALL%'") == 2


async def test_idle_connection_is_closed_after_idle_timeout(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    async with listening(pool, store_cipher, channel(idle_timeout="1s")) as listener:
        client = await MllpClient.connect(listener.port)
        try:
            assert (await client.send(adt("IDLE1", "MRN1"))).code == "AA"
            assert not await client.closed(timeout=0.5)  # still open while under the timeout
            assert await client.closed(timeout=3)
        finally:
            await client.close()
        await wait_for(lambda: listener.connections == 0, timeout=5)


async def test_thousand_concurrent_connections_each_get_aa(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * n + 512  # both ends live in this process
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    try:
        async with listening(pool, store_cipher, channel()) as listener:
            clients = await asyncio.gather(*(MllpClient.connect(listener.port) for _ in range(n)))
            try:
                await wait_for(lambda: listener.connections == n, timeout=30)  # all open at once
                await asyncio.gather(*(c.write(adt(f"CC{i:04d}", f"MRN{i}")) for i, c in enumerate(clients)))
                acks = await asyncio.gather(*(c.ack(timeout=60) for c in clients))
            finally:
                await asyncio.gather(*(c.close() for c in clients))
        assert [a.code for a in acks] == ["AA"] * n
        assert [a.control_id for a in acks] == [f"CC{i:04d}" for i in range(n)]
        assert await count(pool, "status = 'accepted'") == n
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connection_over_max_connections_is_refused(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    async with listening(pool, store_cipher, channel(max_connections=2)) as listener:
        first, second = await MllpClient.connect(listener.port), await MllpClient.connect(listener.port)
        try:
            assert (await first.send(adt("MAX1", "MRN1"))).code == "AA"
            assert (await second.send(adt("MAX2", "MRN2"))).code == "AA"
            extra = await MllpClient.connect(listener.port)
            try:
                await extra.write(adt("MAX3", "MRN3"))
                assert await extra.closed()
            finally:
                await extra.close()
            await first.close()
            await wait_for(lambda: listener.connections == 1, timeout=5)
            again = await MllpClient.connect(listener.port)  # a freed slot is usable again
            try:
                assert (await again.send(adt("MAX4", "MRN4"))).code == "AA"
            finally:
                await again.close()
        finally:
            await first.close()
            await second.close()
    assert await count(pool, "control_id = 'MAX3'") == 0 and await count(pool) == 3


# --- routing, unrouted, resend -------------------------------------------------------------------------------


def adt_from(control: str, app: str, facility: str, patient_class: str) -> str:
    return (adt(control, f"MRN-{control}").replace("|EPIC|GENHOSP|", f"|{app}|{facility}|", 1)
            .replace("PV1|1|I|", f"PV1|1|{patient_class}|", 1))


async def test_routes_by_sender_and_field_and_unrouted_messages_stay_put(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    lab, pharmacy = Peer(), Peer()
    lab_port, pharmacy_port = await lab.start(), await pharmacy.start()
    extra = [{"name": "pharmacy", "mllp": {"host": "127.0.0.1", "port": pharmacy_port, "ack_timeout": "5s"},
              "retry": {"initial_interval": "200ms"}}]
    routes = [{"to": "lab", "when": {"sending_application": "EPIC", "fields": {"PV1-2": ["I"]}}},
              {"to": "pharmacy", "when": {"sending_facility": ["NORTH*"]}}]
    config = config_for(lab_port, extra_dests=extra, routes=routes)
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    messages = {
        "RT1": adt_from("RT1", "EPIC", "GENHOSP", "I"),  # lab
        "RT2": adt_from("RT2", "EPIC", "GENHOSP", "O"),  # outpatient from EPIC: nowhere
        "RT3": adt_from("RT3", "CERNER", "NORTHCLINIC", "O"),  # pharmacy
        "RT4": adt_from("RT4", "EPIC", "NORTHCLINIC", "I"),  # both
        "RT5": adt_from("RT5", "CERNER", "SOUTHCLINIC", "I"),  # inpatient, but not from EPIC: nowhere
    }
    async with running(engine):
        assert await send_mllp(engine.mllp_port, list(messages.values())) == ["AA"] * 5

        async def settled() -> bool:
            pending = await count(pool, "status = 'accepted'")
            delivered = await pool.fetchval("select count(*) from deliveries where status = 'delivered'")
            return pending == 0 and delivered == 4

        await wait_for(settled, timeout=30)
        await asyncio.sleep(0.5)
    await lab.stop()
    await pharmacy.stop()
    assert sorted(lab.control_ids()) == ["RT1", "RT4"]
    assert sorted(pharmacy.control_ids()) == ["RT3", "RT4"]
    status = {r["control_id"]: r["status"] for r in await pool.fetch("select control_id, status from messages")}
    assert status == {"RT1": "routed", "RT2": "unrouted", "RT3": "routed", "RT4": "routed", "RT5": "unrouted"}
    assert await pool.fetchval(
        "select count(*) from deliveries d join messages m on m.id = d.message_id where m.status = 'unrouted'") == 0
    acks = await pool.fetch("select ack_code from messages")
    assert {r["ack_code"] for r in acks} == {"AA"}


async def test_resent_message_is_acked_twice_and_delivered_once(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    engine = Engine(pool, temporal_client, config_for(port), store_cipher, task_queue, db_url)
    text = adt("DUP1", "MRND1")
    async with running(engine):
        assert await send_mllp(engine.mllp_port, [text]) == ["AA"]
        await wait_for(lambda: len(peer.received) == 1, timeout=20)
        # The sender missed our ACK and sends again, on a new connection, after delivery already happened.
        assert await send_mllp(engine.mllp_port, [text, text]) == ["AA", "AA"]
        await asyncio.sleep(1.5)  # three dispatcher sweeps: a second delivery would have started
    await peer.stop()
    assert peer.control_ids() == ["DUP1"]
    assert await count(pool) == 1
    assert await pool.fetchval("select count(*) from deliveries") == 1


# --- remote codec endpoints ----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_codec_endpoints_round_trip_decode_history_and_guard_access(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    config = config_for(port)
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    address = temporal_env.client.service_client.config.target_host
    async with running(engine):
        assert await send_mllp(engine.mllp_port, [adt("CODEC1", "MRNC1")]) == ["AA"]
        await wait_for(lambda: len(peer.received) == 1, timeout=20)
        message_id = await pool.fetchval("select id from messages where control_id = 'CODEC1'")
        wf_id = delivery_workflow_id(message_id, "lab")
        await closed_workflow(temporal_client, wf_id)  # closing takes one more workflow task: the worker must run
    await peer.stop()
    plain = await Client.connect(address)  # no codec: the raw, sealed payloads
    history = await plain.get_workflow_handle(wf_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    sealed = payloads_to_json(started.input.payloads)

    operator, viewer = bearer("operator"), bearer("viewer")
    async with api_client(db_url, address, task_queue, config) as api:
        original = [{"metadata": {"encoding": b64(b"json/plain")}, "data": b64(b'{"hello": "world"}')}]
        enc = await api.post("/api/codec/encode", json={"payloads": original}, headers=operator)
        assert enc.status_code == 200, enc.text
        encoded = enc.json()["payloads"]
        assert base64.b64decode(encoded[0]["metadata"]["encoding"]) == b"binary/encrypted"
        assert b"hello" not in base64.b64decode(encoded[0]["data"])
        dec = await api.post("/api/codec/decode", json={"payloads": encoded}, headers=operator)
        assert dec.status_code == 200 and dec.json()["payloads"] == original

        # The real workflow input, as fetched from Temporal without the codec, decodes to the DeliveryInput JSON.
        dec = await api.post("/api/codec/decode", json={"payloads": sealed}, headers=operator)
        assert dec.status_code == 200, dec.text
        (payload,) = dec.json()["payloads"]
        assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain"
        body = json.loads(base64.b64decode(payload["data"]))
        assert body["message_id"] == message_id and body["destination"] == "lab" and body["channel"] == "adt-in"

        raw = bytearray(base64.b64decode(sealed[0]["data"]))
        raw[-1] ^= 0x01
        tampered = [{**sealed[0], "data": b64(bytes(raw))}]
        bad = await api.post("/api/codec/decode", json={"payloads": tampered}, headers=operator)
        assert bad.status_code == 400 and bad.json()["field"] == "payloads", bad.text
        for path in ("/api/codec/decode", "/api/codec/encode"):
            for junk in ({"data": "not base64!"}, {"metadata": ["encoding"], "data": ""}):
                garbage = await api.post(path, json={"payloads": [junk]}, headers=operator)
                assert garbage.status_code == 400 and garbage.json()["field"] == "payloads", (path, garbage.text)

        for path in ("/api/codec/decode", "/api/codec/encode"):
            denied = await api.post(path, json={"payloads": sealed}, headers=viewer)
            assert denied.status_code == 403, (path, denied.text)
            assert (await api.post(path, json={"payloads": sealed})).status_code == 401

        preflight = {"Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type,x-namespace"}
        allowed = await api.options("/api/codec/decode", headers={"Origin": WEB_UI_ORIGIN, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == WEB_UI_ORIGIN
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = await api.options("/api/codec/decode", headers={"Origin": "http://evil.example", **preflight})
        assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers
        # The Web UI's actual request carries its origin and gets it echoed back.
        cross = await api.post("/api/codec/decode", json={"payloads": sealed},
                               headers={"Origin": WEB_UI_ORIGIN, **operator})
        assert cross.status_code == 200 and cross.headers["access-control-allow-origin"] == WEB_UI_ORIGIN
