"""Acceptance (issue 11): a webhook subscription receives signed events for deliveries and for a remediation case
opening and resolving, and the receiver being down for a while loses none of them. Real components only: the
listener, dispatcher and worker with every workflow, the flow monitor, a downstream MLLP peer that is down and comes
back, the drainer as a worker runs it, and an HTTP receiver that answers 503 until the case has resolved."""

from __future__ import annotations

import json

import asyncpg
from temporalio.client import Client

from infra.crypto import Cipher
from infra.devstack import free_port
from tests.delivery.harness import Peer, adt, bearer, send_mllp, wait_for
from tests.healing.e2e import e2e_config, lifeline
from tests.webhooks.conftest import Receiver, api, draining, verify
from workflows.contract import case_workflow_id


async def test_delivery_and_case_events_survive_a_receiver_outage(
        temporal_client: Client, task_queue: str, pool: asyncpg.Pool, db_url: str, store_cipher: Cipher) -> None:
    port = free_port()  # the MLLP destination is down at first: deliveries retry, a case opens
    config = e2e_config(port, mode="semi-auto", settle="2s",
                        retry={"initial_interval": "300ms", "backoff": 5.0, "maximum_interval": "30s",
                               "maximum_attempts": 50})
    case_id = case_workflow_id("default", "destination_down", "destination:lab")
    receiver = Receiver(503).start()  # the subscriber is down too
    peer = Peer()
    try:
        async with api(db_url, allow=["127.0.0.1/32"]) as c:
            r = await c.post("/api/webhooks", json={
                "url": receiver.url, "events": ["message.*", "delivery.*", "case.opened", "case.resolved"],
                "initial_interval_s": 0.2, "maximum_interval_s": 1.0, "max_attempts": 100}, headers=bearer("admin"))
            assert r.status_code == 201, r.text
            sub = r.json()
        async with lifeline(temporal_client, pool, db_url, store_cipher, task_queue, config,
                            clear_ids=[case_id]) as ll, draining(db_url, store_cipher):
            assert await send_mllp(ll.mllp_port, [adt(f"WH{i}", f"MRNWH{i}") for i in range(5)]) == ["AA"] * 5
            await wait_for(lambda: pool.fetchval(
                "select count(*) >= 10 from delivery_attempts where error_class = 'refused'"), timeout=90)
            await peer.start(port)
            ll.monitor.start()
            await ll.wait_case(case_id, lambda s: True, timeout=120)
            final = await ll.case_result(case_id, timeout=180)
            assert final.stage == "resolved", final.history
            assert len(receiver.hits) >= 2 and receiver.accepted() == []  # tried while down, nothing accepted
            receiver.status = 200  # back up: everything queued arrives, in order

            async def everything() -> bool:
                types = [e["type"] for e in receiver.accepted()]
                return types.count("delivery.delivered") == 5 and "case.resolved" in types

            await wait_for(everything, timeout=120)
    finally:
        await peer.stop()
        receiver.stop()

    got = receiver.accepted()
    assert [e["sequence"] for e in got] == list(range(1, len(got) + 1))  # no gap: nothing dead-lettered or lost
    assert all(verify(sub["secret"], h) for h in receiver.hits)
    types = [e["type"] for e in got]
    assert types.count("message.received") == 5 and types.count("delivery.delivered") == 5
    for mid in {e["data"]["message_id"] for e in got if e["type"] == "message.received"}:  # causal order kept
        of_message = [e["type"] for e in got if e["data"].get("message_id") == mid]
        assert of_message.index("message.received") < of_message.index("delivery.delivered"), of_message
    case_events = [e for e in got if e["type"].startswith("case.")]
    assert [e["type"] for e in case_events] == ["case.opened", "case.resolved"]
    assert {e["subject"] for e in case_events} == {case_id}
    assert case_events[0]["links"]["workflow"].endswith("case%3Adefault%3Adestination_down%3Adestination%3Alab")
    delivered = [e for e in got if e["type"] == "delivery.delivered"]
    assert all(e["data"]["destination"] == "lab" and e["links"]["message"] for e in delivered)
    # Ids, never content: no patient identifier or name reaches the subscriber.
    text = json.dumps(got)
    assert "MRNWH" not in text and "DOE" not in text and "JANE" not in text
