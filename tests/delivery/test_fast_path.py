"""The delivery fast path: attempt 1 as a local activity in the first workflow task (started eagerly), the
regular activity with the destination's full retry policy after a failure, and ordered lanes handed on by the
worker the moment a delivery is recorded (no dispatcher pass in between)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from infra.crypto import Cipher
from infra.devstack import free_port
from tests.delivery.harness import (
    Engine,
    Peer,
    adt,
    closed_workflow,
    config_for,
    running,
    send_mllp,
    wait_for,
)
from workers.dispatcher import K_STATUS
from workflows.contract import QUERY_STATUS, DeliveryStatus

FAST_RETRY = {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s", "maximum_attempts": 50}


async def _event_types(client: Client, workflow_id: str) -> list[int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [e.event_type for e in history.events]


async def _started_id(pool: asyncpg.Pool, control: str) -> str:
    """The delivery workflow id of a message once the dispatcher has started it."""
    sql = ("select d.workflow_id from deliveries d join messages m on m.id = d.message_id"
           " where m.control_id = $1 and d.status <> 'pending'")
    await wait_for(lambda: pool.fetchval(sql, control), timeout=30)
    return str(await pool.fetchval(sql, control))


async def test_a_delivery_that_succeeds_first_time_is_one_workflow_task_with_a_local_activity(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    engine = Engine(pool, temporal_client, config_for(port), store_cipher, task_queue, db_url)
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt("FP1", "MRN1")]) == ["AA"]
            wf_id = await _started_id(pool, "FP1")
            desc = await closed_workflow(temporal_client, wf_id)
            result = await temporal_client.get_workflow_handle(wf_id).result()
            status = await temporal_client.get_workflow_handle(wf_id).query(QUERY_STATUS,
                                                                             result_type=DeliveryStatus)
    finally:
        await peer.stop()
    assert peer.control_ids() == ["FP1"]
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert desc.typed_search_attributes.get(K_STATUS) == "delivered"
    assert result["state"] == "delivered" and status.state == "delivered" and status.attempts == 1
    events = await _event_types(temporal_client, wf_id)
    assert EventType.EVENT_TYPE_MARKER_RECORDED in events  # the local activity's result
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in events
    assert events.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1
    row = await pool.fetchrow("select status, attempts from deliveries")
    assert (row["status"], row["attempts"]) == ("delivered", 1)


async def test_a_failed_local_attempt_falls_back_to_the_regular_activity_and_its_retry_policy(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    """The peer is down: attempt 1 (local) fails, then regular activity attempts back off until it is up; the
    attempt numbers go on from the local one and the peer gets the message once."""
    port = free_port()
    peer = Peer()
    engine = Engine(pool, temporal_client, config_for(port, retry=FAST_RETRY), store_cipher, task_queue, db_url)
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt("FB1", "MRN1")]) == ["AA"]

            async def failed(n: int) -> bool:
                return int(await pool.fetchval(
                    "select count(*) from delivery_attempts where outcome = 'retryable'")) >= n

            await wait_for(lambda: failed(3), timeout=30)
            wf_id = await _started_id(pool, "FB1")
            running_status = await temporal_client.get_workflow_handle(wf_id).query(
                QUERY_STATUS, result_type=DeliveryStatus)
            assert running_status.state == "delivering"
            await peer.start(port)
            desc = await closed_workflow(temporal_client, wf_id, timeout=30)
    finally:
        await peer.stop()
    assert peer.control_ids() == ["FB1"]
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert desc.typed_search_attributes.get(K_STATUS) == "delivered"
    events = await _event_types(temporal_client, wf_id)
    assert EventType.EVENT_TYPE_MARKER_RECORDED in events and EventType.EVENT_TYPE_TIMER_STARTED in events
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED in events
    attempts = [r["attempt"] for r in await pool.fetch("select attempt from delivery_attempts order by id")]
    assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) >= 4
    row = await pool.fetchrow("select status, attempts from deliveries")
    assert row["status"] == "delivered" and row["attempts"] == len(attempts)


async def test_a_permanent_reject_on_the_local_attempt_dead_letters_at_once(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer(answer="AR")
    port = await peer.start()
    engine = Engine(pool, temporal_client, config_for(port, retry=FAST_RETRY, on_dead_letter="skip"), store_cipher,
                    task_queue, db_url)
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt("RJ1", "MRN1")]) == ["AA"]
            wf_id = await _started_id(pool, "RJ1")
            desc = await closed_workflow(temporal_client, wf_id)
    finally:
        await peer.stop()
    assert desc.status == WorkflowExecutionStatus.FAILED
    assert desc.typed_search_attributes.get(K_STATUS) == "dead_lettered"
    assert peer.seen == ["RJ1"]  # no retry of a permanent reject
    events = await _event_types(temporal_client, wf_id)
    scheduled = [e for e in events if e == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert len(scheduled) == 1  # dead_letter only; no regular `deliver`
    dl = await pool.fetchrow("select error_type, status from dead_letters")
    assert dl["status"] == "open" and dl["error_type"].startswith("PermanentReject")


async def test_the_worker_hands_an_ordered_lane_on_without_the_dispatcher(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    """Messages of three patients are routed and each lane's head started while no worker runs; then the
    dispatcher stops and a worker starts: every message is delivered, in patient order, by the hand-off alone."""
    peer = Peer()
    port = await peer.start()
    engine = Engine(pool, temporal_client, config_for(port, ordering={"key": "PID-3.1"}), store_cipher,
                    task_queue, db_url)
    sent: dict[str, list[str]] = defaultdict(list)
    texts = []
    for i in range(15):
        mrn, control = f"MRN{i % 3}", f"L{i:03d}"
        sent[mrn].append(control)
        texts.append(adt(control, mrn, seq=i))
    try:
        await engine.start(worker=False)
        assert await send_mllp(engine.mllp_port, texts) == ["AA"] * 15

        async def heads_started() -> bool:
            rows = {r["status"]: r["n"] for r in await pool.fetch(
                "select status, count(*) as n from deliveries group by 1")}
            return rows == {"started": 3, "pending": 12}

        await wait_for(heads_started, timeout=20)
        engine._stop.set()  # the dispatcher's loop ends; nothing else starts deliveries but the hand-off
        for t in engine._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 10)
        engine._tasks.clear()
        await engine.start_worker()
        await wait_for(lambda: len(peer.received) >= 15, timeout=60)
        await asyncio.sleep(0.5)  # anything extra would arrive now
    finally:
        await engine.stop()
        await peer.stop()
    by_patient: dict[str, list[str]] = defaultdict(list)
    for m in peer.received:
        by_patient[str(m.segment("PID")[3][0][0])].append(str(m.segment("MSH")[10]))
    assert by_patient == sent
    assert await pool.fetchval("select count(*) from deliveries where status = 'delivered'") == 15
