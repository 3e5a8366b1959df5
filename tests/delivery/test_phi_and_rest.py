"""No PHI in Temporal history (only the codec client can read payloads), and REST ingress end to end:
accept, reject with findings, content type and channel errors, message detail and audited body reads."""

from __future__ import annotations

import asyncpg
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from infra.crypto import ENCRYPTED_ENCODING, Cipher
from tests.delivery.harness import (
    Engine,
    Peer,
    adt,
    api_client,
    bearer,
    closed_workflow,
    config_for,
    running,
    send_mllp,
    wait_for,
)
from workflows.contract import DeliveryInput, delivery_workflow_id

SECRETS = ["ZZSECRETFAMILY", "PHIGIVENNAME", "MRN7654321", "1 MAIN ST", "EVN|A08", "PID|1", "peer says no"]


def address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def test_history_holds_no_phi_without_the_codec(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str) -> None:
    peer = Peer(answers={"PHI2": "AR"})
    port = await peer.start()
    config = config_for(port, retry={"initial_interval": "100ms", "maximum_attempts": 3})
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    name = "ZZSECRETFAMILY^PHIGIVENNAME"
    async with running(engine):
        await send_mllp(engine.mllp_port, [adt("PHI1", "MRN7654321", name=name), adt("PHI2", "MRN7654321", name=name)])

        async def settled() -> bool:
            return int(await pool.fetchval(
                "select count(*) from deliveries where status in ('delivered', 'dead_lettered')")) == 2

        await wait_for(settled, timeout=20)
        ids = {r["control_id"]: r["id"] for r in await pool.fetch("select id, control_id from messages")}
        # The store records the outcome inside the last activity; the workflow closes on its next task, which needs
        # the worker: wait for both to close before stopping the engine.
        for control in ("PHI1", "PHI2"):
            await closed_workflow(temporal_client, delivery_workflow_id(ids[control], "lab"))
    await peer.stop()
    plain = await Client.connect(address(temporal_env))  # no codec: what an operator of Temporal sees
    for control in ("PHI1", "PHI2"):
        wf_id = delivery_workflow_id(ids[control], "lab")
        history = await plain.get_workflow_handle(wf_id).fetch_history()
        raw = History(events=history.events).SerializeToString()
        as_json = history.to_json()
        for secret in SECRETS:
            assert secret.encode() not in raw and secret not in as_json, (control, secret)
        started = history.events[0].workflow_execution_started_event_attributes
        payload = started.input.payloads[0]
        assert payload.metadata["encoding"] == ENCRYPTED_ENCODING
        assert ids[control].encode() not in payload.data  # even the ids are sealed inside payloads
        # The codec client reads the same payload.
        (decoded,) = await temporal_client.data_converter.decode([payload], [DeliveryInput])
        assert isinstance(decoded, DeliveryInput)
        assert decoded.message_id == ids[control] and decoded.destination == "lab"
    failed = await plain.get_workflow_handle(delivery_workflow_id(ids["PHI2"], "lab")).fetch_history()
    assert any(e.HasField("workflow_execution_failed_event_attributes") for e in failed.events)


async def test_rest_ingress_accepts_rejects_and_audits_body_reads(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    config = config_for(port)
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    text = adt("REST1", "MRNR1")
    async with running(engine), api_client(db_url, address(temporal_env), task_queue, config) as api:
        plain = {"Content-Type": "text/plain", **bearer("sender")}
        r = await api.post("/api/channels/adt-in/messages", content=text, headers=plain)
        assert r.status_code == 202, r.text
        body = r.json()
        mid = body["message_id"]
        assert body["ack_code"] == "AA" and body["status"] == "accepted" and "MSA|AA|REST1" in body["ack"]
        await wait_for(lambda: peer.control_ids() == ["REST1"], timeout=15)

        bad = await api.post("/api/channels/adt-in/messages", content=adt("", "MRNR2"), headers=plain)
        assert bad.status_code == 422, bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")
        problem = bad.json()
        assert problem["status"] == 422 and problem["ack_code"] in ("AR", "AE")
        assert f"MSA|{problem['ack_code']}" in problem["ack"] and "ERR|" in problem["ack"]
        assert any(f["segment"] == "MSH" and f["field"] == 10 for f in problem["findings"])
        assert problem["field"] == "MSH-10"
        assert await pool.fetchval("select status from messages where id = $1", problem["message_id"]) == "rejected"

        wrong_type = await api.post("/api/channels/adt-in/messages", content=text,
                                    headers={"Content-Type": "application/json", **bearer("sender")})
        assert wrong_type.status_code == 415 and wrong_type.json()["field"] == "content-type"
        unknown = await api.post("/api/channels/nope/messages", content=text, headers=plain)
        assert unknown.status_code == 404 and unknown.json()["field"] == "channel"
        assert "nope" in unknown.json()["detail"]
        viewer_post = await api.post("/api/channels/adt-in/messages", content=text,
                                     headers={"Content-Type": "text/plain", **bearer("viewer")})
        assert viewer_post.status_code == 403

        async def delivered() -> bool:
            d = await api.get(f"/api/messages/{mid}", headers=bearer("viewer"))
            return d.status_code == 200 and d.json()["deliveries"][0]["status"] == "delivered"

        await wait_for(delivered, timeout=15)
        detail = (await api.get(f"/api/messages/{mid}", headers=bearer("viewer"))).json()
        assert "body" not in detail and detail["source"] == "rest" and detail["status"] == "routed"
        (dest,) = detail["deliveries"]
        assert dest["destination"] == "lab" and dest["attempts"] == 1
        assert dest["workflow_id"] == delivery_workflow_id(mid, "lab") and dest["workflow_url"].endswith(
            dest["workflow_id"])
        assert [a["outcome"] for a in dest["attempt_history"]] == ["delivered"]

        assert await pool.fetchval("select count(*) from audit_log where action = 'message.read_body'") == 0
        denied = await api.get(f"/api/messages/{mid}", params={"include": "body"}, headers=bearer("viewer"))
        assert denied.status_code == 403 and denied.json()["field"] == "include"
        allowed = await api.get(f"/api/messages/{mid}", params={"include": "body"}, headers=bearer("operator"))
        assert allowed.status_code == 200 and allowed.json()["body"] == text
        row = await pool.fetchrow("select * from audit_log where action = 'message.read_body'")
        assert row is not None and row["subject"] == mid and row["actor"] == "tester" and row["role"] == "operator"
        missing = await api.get("/api/messages/NOPE", headers=bearer("viewer"))
        assert missing.status_code == 404 and missing.json()["field"] == "message_id"
    await peer.stop()
    assert peer.control_ids() == ["REST1"]
