"""One dispatcher routes at a time. With two routing at once, a patient's message n+1 could be routed (its delivery
row committed) by one dispatcher while n is still being routed by the other; the lane rule — start a delivery when
no earlier one of its lane is pending or started — would then start n+1 before n exists. The scale-out benchmark
caught this (21 of 50 lanes out of order in one run of 10,000)."""

from __future__ import annotations

import asyncpg
from temporalio.client import Client

from infra.crypto import Cipher
from infra.db import create_pool
from infra.store import deliveries
from tests.delivery.harness import adt, config_for, send_mllp
from workers.dispatcher import Dispatcher
from workers.listener import ChannelListener


async def test_a_dispatcher_leaves_routing_to_the_one_already_routing(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    config = config_for(9, ordering={"key": "PID-3.1"})
    app_pool = await create_pool(db_url, min_size=1, max_size=4, role="lifeline_app")
    listener = ChannelListener(config.channels[0], app_pool, store_cipher)
    await listener.start("127.0.0.1", 0)
    other = await pool.acquire()
    try:
        assert await send_mllp(listener.port, [adt("RL1", "MRN1")]) == ["AA"]
        dispatcher = Dispatcher(app_pool, temporal_client, config, store_cipher, task_queue)
        undispatched = "select count(*) from messages where control_id = 'RL1' and dispatched_at is null"
        async with other.transaction():
            assert await deliveries.lock_routing(other)  # another dispatcher is routing
            assert await dispatcher.route_batch() == 0
            assert await pool.fetchval(undispatched) == 1
        # It has finished: the next pass routes.
        assert await dispatcher.route_batch() >= 1
        assert await pool.fetchval(undispatched) == 0
        assert await pool.fetchval("select count(*) from deliveries d join messages m on m.id = d.message_id"
                                   " where m.control_id = 'RL1'") == 1
    finally:
        await pool.release(other)
        await listener.close()
        await app_pool.close()
