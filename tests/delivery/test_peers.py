"""Real third-party peers and tools around delivery: hl7apy's one-message-per-connection MLLPServer downstream,
a TLS MLLP destination trusted through `ca_file`, and the `temporal` CLI reading a delivered workflow with and
without Lifeline's remote codec endpoint."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.mllp import MllpSender, SendError
from infra.config import ConfigError, MllpOut, validate_config
from infra.crypto import Cipher
from infra.devstack import find_binary, free_port
from tests.delivery.harness import (
    Engine,
    Hl7apyPeer,
    Peer,
    adt,
    bearer,
    closed_workflow,
    config_for,
    make_pki,
    running,
    send_mllp,
    wait_for,
)
from workflows.contract import delivery_workflow_id

N_HL7APY = 50


async def _attempt_counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow("select count(*) filter (where outcome = 'delivered') as ok,"
                              " count(*) filter (where outcome <> 'delivered') as failed from delivery_attempts")
    return int(row["ok"]), int(row["failed"])


@pytest.mark.parametrize("ordering", ["destination", "none"])
async def test_hl7apy_server_that_closes_after_each_message_gets_each_once(
        ordering: str, pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str,
        db_url: str) -> None:
    peer = Hl7apyPeer()
    port = peer.start()
    try:
        engine = Engine(pool, temporal_client, config_for(port, ordering=ordering), store_cipher, task_queue, db_url)
        controls = [f"H{i:03d}" for i in range(N_HL7APY)]
        async with running(engine):
            codes = await send_mllp(engine.mllp_port, [adt(c, f"MRN{i % 3}", seq=i) for i, c in enumerate(controls)])
            assert codes == ["AA"] * N_HL7APY
            await wait_for(lambda: len(peer.received) >= N_HL7APY, timeout=40)

            async def all_recorded() -> bool:
                return (await _attempt_counts(pool))[0] >= N_HL7APY

            await wait_for(all_recorded, timeout=10)
            await asyncio.sleep(0.5)  # a late resend would show up now
    finally:
        peer.stop()
    assert sorted(peer.received) == controls  # every message, exactly once
    if ordering == "destination":
        assert peer.received == controls  # one lane: in send order
    # The peer closing the connection after every ACK is normal for it, not a failed attempt.
    assert await _attempt_counts(pool) == (N_HL7APY, 0)
    assert await pool.fetchval("select count(*) from deliveries where status = 'delivered'") == N_HL7APY


async def test_sender_reconnects_without_a_failure_when_the_peer_closed_the_pooled_connection() -> None:
    """Back to back sends race hl7apy's close: the pooled connection is often still open when the next send
    starts and closed by the time it is written; that must cost neither an error nor a duplicate."""
    peer = Hl7apyPeer()
    port = peer.start()
    sender = MllpSender()
    cfg = MllpOut(host="127.0.0.1", port=port)
    controls = [f"B{i:03d}" for i in range(100)]
    try:
        for c in controls:
            assert (await sender.send(cfg, adt(c, "MRN1"), c)).startswith("AA")
    finally:
        await sender.close()
        peer.stop()
    assert peer.received == controls


async def test_tls_destination_trusted_through_ca_file(
        tmp_path: Path, pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str,
        db_url: str) -> None:
    import ssl

    pki = make_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    peer = Peer()
    port = await peer.start(ssl=server_ctx)
    base = config_for(port, retry={"initial_interval": "100ms", "maximum_attempts": 1}, on_dead_letter="skip")
    lab = base.destinations[0].model_dump()
    lab["mllp"].update(tls=True, ca_file=str(pki.ca))
    untrusted = {**lab, "name": "lab-untrusted", "mllp": {**lab["mllp"], "ca_file": None}}
    config = validate_config({"channels": [{"name": "adt-in", "mllp": {"port": 2575},
                                            "routes": [{"to": "lab"}, {"to": "lab-untrusted"}]}],
                              "destinations": [lab, untrusted]}, "test")
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    async with running(engine):
        assert await send_mllp(engine.mllp_port, [adt("TLS1", "MRNT1")]) == ["AA"]

        async def settled() -> bool:
            return int(await pool.fetchval(
                "select count(*) from deliveries where status in ('delivered', 'dead_lettered')")) == 2

        await wait_for(settled, timeout=20)
    # A connection verified with one destination's ca_file is not pooled for another one at the same address.
    sender = MllpSender()
    trusted = MllpOut(host="127.0.0.1", port=port, tls=True, ca_file=pki.ca)
    try:
        assert (await sender.send(trusted, adt("TLS2", "MRNT1"), "TLS2")).startswith("AA")
        with pytest.raises(SendError) as err:
            await sender.send(MllpOut(host="127.0.0.1", port=port, tls=True), adt("TLS3", "MRNT1"), "TLS3")
        assert err.value.error_class == "tls"
    finally:
        await sender.close()
        await peer.stop()
    assert peer.control_ids() == ["TLS1", "TLS2"]
    rows = {r["destination"]: r for r in await pool.fetch(
        "select destination, outcome, error_class from delivery_attempts")}
    assert rows["lab"]["outcome"] == "delivered"
    # tls: true alone trusts the system store only, which does not know the test CA.
    assert rows["lab-untrusted"]["error_class"] == "tls"
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.mllp: ca_file is only used with tls: true"):
        validate_config({"destinations": [{"name": "x", "mllp": {"host": "h", "port": 1, "ca_file": "ca.pem"}}]},
                        "test")


@pytest.fixture
def served_api(db_url: str, temporal_env: WorkflowEnvironment, task_queue: str) -> Iterator[str]:
    """The REST API under uvicorn in a background thread on a free port; yields its base URL."""
    from api.app import create_app
    from tests.conftest import make_settings

    address = temporal_env.client.service_client.config.target_host
    app = create_app(make_settings(database_url=db_url, temporal_address=address, task_queue=task_queue),
                     config_for(1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _temporal_show(address: str, workflow_id: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [find_binary("temporal"), "workflow", "show", "--workflow-id", workflow_id, "--address", address,
         "--output", "json", *extra],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def _started_input(history: dict[str, Any]) -> dict[str, Any]:
    for event in history["events"]:
        attrs = event.get("workflowExecutionStartedEventAttributes")
        if attrs:
            payload: dict[str, Any] = attrs["input"]["payloads"][0]
            return payload
    raise AssertionError("no WorkflowExecutionStarted event")


async def test_temporal_cli_shows_no_phi_and_decodes_with_the_codec_endpoint(
        served_api: str, pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment,
        store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    import base64

    peer = Peer()
    port = await peer.start()
    engine = Engine(pool, temporal_client, config_for(port), store_cipher, task_queue, db_url)
    name, mrn = "ZZCLIFAMILY^CLIGIVEN", "MRN5550123"
    async with running(engine):
        assert await send_mllp(engine.mllp_port, [adt("CLI1", mrn, name=name)]) == ["AA"]
        await wait_for(lambda: len(peer.received) == 1, timeout=20)
        message_id = await pool.fetchval("select id from messages where control_id = 'CLI1'")
        wf_id = delivery_workflow_id(message_id, "lab")
        await closed_workflow(temporal_client, wf_id)  # closing takes one more workflow task: the worker must run
    await peer.stop()
    address = temporal_env.client.service_client.config.target_host

    plain = await asyncio.to_thread(_temporal_show, address, wf_id)
    text = json.dumps(plain)
    for secret in ("ZZCLIFAMILY", "CLIGIVEN", mrn, "PID|", "EVN|", "1 MAIN ST"):
        assert secret not in text, secret
    sealed = _started_input(plain)
    assert message_id.encode() not in base64.b64decode(sealed["data"])  # the input itself is sealed

    auth = bearer("operator")["Authorization"]
    decoded = await asyncio.to_thread(_temporal_show, address, wf_id, "--codec-endpoint", f"{served_api}/api/codec",
                                      "--codec-auth", auth)
    payload = _started_input(decoded)
    data = payload["data"]
    body = json.loads(base64.b64decode(data)) if isinstance(data, str) else data
    assert body["message_id"] == message_id and body["destination"] == "lab"
    # With the codec the input is readable, but the history still carries no message content.
    for secret in ("ZZCLIFAMILY", mrn, "PID|"):
        assert secret not in json.dumps(decoded), secret
