"""End to end against real third-party peers: python-hl7's MLLP client in, python-hl7's asyncio MLLP server out."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

import asyncpg
import hl7
from hl7.mllp import open_hl7_connection
from temporalio.client import Client

from infra.crypto import Cipher
from tests.delivery.harness import Engine, Peer, adt, config_for, running, wait_for

N_MESSAGES = int(os.environ.get("LIFELINE_E2E_MESSAGES", "1000"))
N_CONNECTIONS = 10
PATIENTS_PER_CONNECTION = 3


async def _send_all(port: int, n: int, conns: int) -> tuple[dict[str, list[str]], list[str]]:
    """Each connection sends its share; a patient's messages always go over the same connection, in order."""
    sent: dict[str, list[str]] = defaultdict(list)
    acked: list[str] = []

    async def one_connection(c: int) -> None:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        try:
            for j, i in enumerate(range(c, n, conns)):
                # Each patient belongs to one connection, so its send order is well defined.
                mrn = f"MRN{c:02d}{j % PATIENTS_PER_CONNECTION}"
                control = f"C{i:05d}"
                writer.writemessage(hl7.parse(adt(control, mrn, seq=i)))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), 30)
                assert str(ack.segment("MSA")[1]) == "AA", str(ack)
                sent[mrn].append(control)
                acked.append(control)
        finally:
            writer.close()

    await asyncio.gather(*(one_connection(c) for c in range(conns)))
    return sent, acked


async def test_thousand_messages_each_once_in_patient_order(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    config = config_for(port, ordering={"key": "PID-3.1"})
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    async with running(engine):
        sent, acked = await _send_all(engine.mllp_port, N_MESSAGES, N_CONNECTIONS)
        assert len(acked) == N_MESSAGES
        await wait_for(lambda: len(peer.received) >= N_MESSAGES, timeout=240, interval=0.5)
        await asyncio.sleep(1)  # anything extra would arrive now
    await peer.stop()
    received = peer.control_ids()
    assert len(received) == N_MESSAGES and set(received) == set(acked)  # each exactly once
    by_patient: dict[str, list[str]] = defaultdict(list)
    for m in peer.received:
        by_patient[str(m.segment("PID")[3][0][0])].append(str(m.segment("MSH")[10]))
    assert len(sent) == N_CONNECTIONS * PATIENTS_PER_CONNECTION
    for mrn, controls in sent.items():
        assert by_patient[mrn] == controls, mrn  # per-patient send order
    counts = await pool.fetchrow(
        "select count(*) filter (where status = 'delivered') as delivered, count(*) as total from deliveries")
    assert counts["delivered"] == counts["total"] == N_MESSAGES
