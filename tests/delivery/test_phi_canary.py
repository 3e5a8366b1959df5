"""Finding 9 (PHI canary): a message whose name, MRN and birth date are unique strings goes through accept, a failed
attempt, a dead letter, a replay and a remediation case; afterwards the canary appears in no log line, no Temporal
history read without the codec, no metric, no audit entry, no event log entry, no webhook request and no API
response to a viewer."""

from __future__ import annotations

import json
import logging

import asyncpg
import pytest
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.subscriptions import seal_secret
from infra.crypto import Cipher
from infra.store import webhooks
from tests.delivery.harness import Engine, Peer, api_client, bearer, config_for, running, send_mllp, wait_for
from tests.delivery.test_failures import replay_and_wait
from tests.webhooks.conftest import Receiver, draining
from workflows.contract import delivery_workflow_id

FAMILY, GIVEN, MRN, DOB = "QQCANARYFAMILY", "QQCANARYGIVEN", "QQMRN7319", "19310417"
CANARIES = [FAMILY, GIVEN, MRN, DOB]


def canary_message(control_id: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A08|20260101120000",
        f"PID|1||{MRN}^^^GENHOSP^MR||{FAMILY}^{GIVEN}||{DOB}|F|||1 MAIN ST^^BOSTON^MA^02118",
        "PV1|1|I|WARD^1^1",
    ])


def clean(where: str, text: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"{canary} in {where}"


async def test_canary_leaves_no_trace_outside_the_store(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    peer = Peer(answers={"CAN1": "AR"})  # the first attempt is rejected: a failed attempt, then a dead letter
    port = await peer.start()
    config = config_for(port, ordering={"key": "PID-3.1"}, retry={"initial_interval": "100ms", "maximum_attempts": 2})
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    address = temporal_env.client.service_client.config.target_host
    # A webhook subscriber to every event, served by the drainer as a worker runs it.
    receiver = Receiver(200).start()
    secret_enc, key_id = seal_secret(store_cipher, "wh_canary", "whsec_canary-secret-0123456789")
    await webhooks.create(pool, "default", sub_id="wh_canary", url=receiver.url, description="", events=["*"],
                          channels=[], destinations=[], message_types=[], secret_enc=secret_enc, key_id=key_id,
                          max_attempts=5, initial_interval_s=0.1, maximum_interval_s=1.0, created_by="test")
    async with running(engine), api_client(db_url, address, task_queue, config) as api, \
            draining(db_url, store_cipher):
        assert await send_mllp(engine.mllp_port, [canary_message("CAN1")]) == ["AA"]
        mid = await pool.fetchval("select id from messages where control_id = 'CAN1'")

        async def dead() -> bool:
            return bool(await pool.fetchval("select count(*) from dead_letters where message_id = $1", mid))

        await wait_for(dead, timeout=20)
        dl_id = await pool.fetchval("select id from dead_letters where message_id = $1", mid)
        peer.answers.clear()
        replay = await replay_and_wait(api, {"ids": [dl_id]}, 1)
        case = await api.post("/api/remediations", json={"kind": "lane_blocked", "subject": "destination:lab",
                                                         "reason": "canary walk"}, headers=bearer("operator"))
        assert case.status_code in (200, 201, 202), case.text
        case_id = case.json()["case_id"]

        # No API response to a viewer.
        for path in ("/api/messages", f"/api/messages/{mid}", "/api/dead-letters?status=replayed",
                     "/api/lanes/blocked", "/api/flow", "/api/remediations", f"/api/remediations/{case_id}",
                     f"/api/replays/{replay['workflow_id']}", "/metrics"):
            r = await api.get(path, headers=bearer("viewer"))
            assert r.status_code == 200, (path, r.status_code, r.text)
            clean(f"GET {path} as viewer", r.text)
        # The operator does read it (the canary is really there to be found).
        body = await api.get(f"/api/messages/{mid}?include=body", headers=bearer("operator"))
        assert MRN in body.text
        await temporal_client.get_workflow_handle(case_id).terminate("canary test done")

        def subscriber_saw_it_all() -> bool:
            types = {e["type"] for e in receiver.accepted()}
            return {"message.received", "delivery.dead_lettered", "delivery.delivered"} <= types

        await wait_for(subscriber_saw_it_all, timeout=30)
    await peer.stop()
    receiver.stop()
    # No webhook body (every request the subscriber got, headers included).
    clean("webhook requests", "\n".join(f"{h.path} {h.headers} {h.body.decode()}" for h in receiver.hits))

    # No Temporal history read without the codec: delivery (failed and replayed), replay, case.
    plain = await Client.connect(address)
    for wf_id in (delivery_workflow_id(mid, "lab"), replay["workflow_id"], case_id):
        history = await plain.get_workflow_handle(wf_id).fetch_history()
        clean(f"history of {wf_id}", History(events=history.events).SerializeToString().decode("latin-1"))
        clean(f"history of {wf_id} (json)", history.to_json())
    # No audit entry, no log line.
    rows = await pool.fetch("select actor, action, subject, detail from audit_log")
    assert rows, "the walk should have been audited (replay, case, body read)"
    clean("audit_log", json.dumps([dict(r) for r in rows], default=str))
    clean("log lines", "\n".join(r.getMessage() for r in caplog.records))
    clean("deliveries.lane", json.dumps([r["lane"] for r in await pool.fetch("select lane from deliveries")]))
    # No event log entry (what webhook subscriptions are sent): the walk logged receipt, dead letter and replay.
    events = await pool.fetch("select type, subject, channel, destination, message_type, data from events")
    assert {"message.received", "delivery.dead_lettered", "delivery.delivered"} <= {e["type"] for e in events}
    clean("event log", json.dumps([dict(e) for e in events], default=str))
