"""Ordered lanes keep progressing while unordered deliveries saturate the workers: deliveries to ordered
destinations run on their own task queue (`<task_queue>-ordered`) with their own worker slots, so a lane's
hand-off does not wait a whole turn of the shared queue behind unordered work."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import httpx
from temporalio.client import Client

from activities.delivery import DeliveryActivities
from activities.mllp import MllpSender
from bench.peers import RecordingPeer
from infra.config import validate_config
from infra.crypto import Cipher
from infra.db import create_pool
from infra.settings import Settings
from tests.delivery.harness import adt, send_mllp, wait_for
from workers.dispatcher import Dispatcher
from workers.listener import ChannelListener
from workers.worker import build_worker
from workflows.contract import ordered_task_queue

N = 20
SATURATED = {"max_concurrent_activities": 2, "max_concurrent_local_activities": 2,
             "max_concurrent_workflow_tasks": 2}


def test_settings_name_the_ordered_queue() -> None:
    s = Settings(task_queue="lifeline")
    assert s.ordered_task_queue == ordered_task_queue("lifeline") == "lifeline-ordered"
    assert Settings(task_queue="lifeline", ordered_queue=False).ordered_task_queue == ""


async def test_an_ordered_lane_keeps_progressing_while_unordered_deliveries_saturate(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    bulk, lab = RecordingPeer(delay=3.0), RecordingPeer()
    bulk_port, lab_port = await bulk.start(), await lab.start()
    retry = {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s", "maximum_attempts": 50}
    config = validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "bulk"}, {"to": "lab"}]}],
        "destinations": [
            {"name": "bulk", "mllp": {"host": "127.0.0.1", "port": bulk_port, "ack_timeout": "10s"}, "retry": retry},
            {"name": "lab", "mllp": {"host": "127.0.0.1", "port": lab_port}, "ordering": "destination",
             "retry": retry}],
    }, "test")
    ordered_tq = ordered_task_queue(task_queue)
    app_pool = await create_pool(db_url, min_size=1, max_size=10, role="lifeline_app")
    stop = asyncio.Event()
    listener = ChannelListener(config.channels[0], app_pool, store_cipher)
    await listener.start("127.0.0.1", 0)
    dispatcher = Dispatcher(app_pool, temporal_client, config, store_cipher, task_queue,
                            ordered_task_queue=ordered_tq)
    http, mllp = httpx.AsyncClient(), MllpSender()
    acts = DeliveryActivities(app_pool, store_cipher, config, mllp, http, handoff=dispatcher.start_next)
    # The shared worker is saturated by slow unordered sends (2 slots, each send 3 s: 30 s for all); the ordered
    # worker is not.
    shared = build_worker(temporal_client, task_queue, acts, **SATURATED)
    ordered = build_worker(temporal_client, ordered_tq, acts, **SATURATED)
    tasks = [asyncio.create_task(dispatcher.run(db_url, 0.5, stop))]
    try:
        async with shared, ordered:
            texts = [adt(f"OQ{i:03d}", "MRN1", seq=i) for i in range(N)]
            assert await send_mllp(listener.port, texts) == ["AA"] * N
            # Every ordered delivery arrives, in order, while most unordered ones still wait for a slot.
            await wait_for(lambda: len(lab.controls) == N, timeout=120, interval=0.2)
            assert lab.controls == [f"OQ{i:03d}" for i in range(N)]
            assert len(bulk.controls) < N, "the ordered lane finished only after the unordered backlog"
            wid = await pool.fetchval("select d.workflow_id from deliveries d join messages m on m.id = d.message_id"
                                      " where d.destination = 'lab' and m.control_id = 'OQ000'")
            assert (await temporal_client.get_workflow_handle(wid).describe()).task_queue == ordered_tq
            # The unordered ones are not lost, only slower.
            await wait_for(lambda: len(set(bulk.controls)) == N, timeout=180, interval=0.5)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await listener.close()
        await mllp.close()
        await http.aclose()
        await app_pool.close()
        await bulk.stop()
        await lab.stop()
