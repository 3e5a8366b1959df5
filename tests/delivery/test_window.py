"""The unordered delivery window (`max_in_flight`): an unordered destination has at most that many deliveries
started and unfinished; the rest wait in the outbox and start as those finish — handed on by the worker, or by the
dispatcher when it runs elsewhere. A destination that is down keeps its backlog in PostgreSQL, not as thousands of
retrying workflows, and drains it when it comes back."""

from __future__ import annotations

import contextlib

import asyncpg
import pytest
from temporalio.client import Client

from bench.peers import RecordingPeer
from infra.crypto import Cipher
from infra.db import create_pool
from infra.devstack import free_port
from infra.store import deliveries
from tests.delivery.harness import Engine, Peer, adt, config_for, running, send_mllp, wait_for
from workers.dispatcher import Dispatcher
from workers.listener import ChannelListener

N = 15
STATUS = "select status, count(*) from deliveries where destination = 'lab' group by status"


async def _statuses(pool: asyncpg.Pool) -> dict[str, int]:
    return {r["status"]: r["count"] for r in await pool.fetch(STATUS)}


@pytest.mark.parametrize("handoff", [True, False], ids=["worker-hand-off", "dispatcher-woken"])
async def test_an_unordered_destination_never_has_more_than_its_window_in_flight(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str,
        handoff: bool) -> None:
    peer = RecordingPeer(delay=0.3)
    port = await peer.start()
    engine = Engine(pool, temporal_client, config_for(port, max_in_flight=3), store_cipher, task_queue, db_url,
                    handoff=handoff)
    most_started = 0
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt(f"W{i:02d}", f"MRN{i}") for i in range(N)]) == ["AA"] * N

            async def all_delivered() -> bool:
                nonlocal most_started
                counts = await _statuses(pool)
                most_started = max(most_started, counts.get("started", 0))
                return counts.get("delivered", 0) == N

            await wait_for(all_delivered, timeout=60, interval=0.05)
    finally:
        await peer.stop()
    # The window was used to the full and never overfilled, at the peer and in the store; nothing was sent twice.
    assert peer.peak == 3
    assert most_started <= 3
    assert sorted(peer.controls) == [f"W{i:02d}" for i in range(N)]
    assert peer.duplicates == 0


async def test_a_down_destination_keeps_its_backlog_in_the_outbox_and_drains_it_when_back(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    port = free_port()
    retry = {"initial_interval": "200ms", "backoff": 1.0, "maximum_interval": "200ms", "maximum_attempts": 1000}
    engine = Engine(pool, temporal_client, config_for(port, retry=retry, max_in_flight=2), store_cipher, task_queue,
                    db_url)
    peer = Peer()
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt(f"D{i}", f"MRN{i}") for i in range(6)]) == ["AA"] * 6
            # Both deliveries in the window have failed several times: the others have had every chance to start.
            failing = ("select count(distinct message_id) from delivery_attempts where destination = 'lab'"
                       " and attempt >= 3")
            await wait_for(lambda: _at_least(pool, failing, 2), timeout=30)
            assert await _statuses(pool) == {"started": 2, "pending": 4}
            tried = await pool.fetchval("select count(distinct message_id) from delivery_attempts"
                                        " where destination = 'lab'")
            assert tried == 2
            await peer.start(port)
            await wait_for(lambda: len(peer.received) >= 6, timeout=30)
            await wait_for(lambda: _at_least(pool, "select count(*) from deliveries where destination = 'lab'"
                                                   " and status = 'delivered'", 6), timeout=30)
    finally:
        await peer.stop()
    assert sorted(peer.control_ids()) == [f"D{i}" for i in range(6)]


async def _at_least(pool: asyncpg.Pool, sql: str, n: int) -> bool:
    return int(await pool.fetchval(sql)) >= n


async def test_one_claimer_fills_a_window_at_a_time(pool: asyncpg.Pool) -> None:
    first, second = await pool.acquire(), await pool.acquire()
    try:
        t1, t2 = first.transaction(), second.transaction()
        await t1.start()
        await t2.start()
        assert await deliveries.claim_unordered(first, "default", "lab-window-lock", 5, 4) == []
        # Held by the first: the second does not wait for it, it leaves the window to the first.
        assert await deliveries.claim_unordered(second, "default", "lab-window-lock", 5, 4) is None
        assert await deliveries.claim_ready(second, 10, [], [("default", "lab-window-lock", 5)]) == []
        # Another destination's window is free.
        assert await deliveries.claim_unordered(second, "default", "lab-window-other", 5, 4) == []
        await t1.commit()
        assert await deliveries.claim_unordered(second, "default", "lab-window-lock", 5, 4) == []
        await t2.rollback()
    finally:
        with contextlib.suppress(Exception):
            await pool.release(first)
            await pool.release(second)


async def test_a_paused_destination_starts_nothing_from_its_window_until_resumed(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    config = config_for(9, max_in_flight=2)
    app_pool = await create_pool(db_url, min_size=1, max_size=4, role="lifeline_app")
    listener = ChannelListener(config.channels[0], app_pool, store_cipher)
    await listener.start("127.0.0.1", 0)
    try:
        await deliveries.set_destination_paused(app_pool, "default", "lab", True, "test", "maintenance")
        assert await send_mllp(listener.port, [adt(f"P{i}", f"MRN{i}") for i in range(3)]) == ["AA"] * 3
        dispatcher = Dispatcher(app_pool, temporal_client, config, store_cipher, task_queue)
        assert await dispatcher.route_batch() == 3
        assert await dispatcher.start_ready() == 0
        assert await _statuses(pool) == {"pending": 3}
        await deliveries.set_destination_paused(app_pool, "default", "lab", False, "test", None)
        # Resumed: the window's room (2) starts, oldest first; the third waits for one of them to finish.
        assert await dispatcher.start_ready() == 2
        started = await pool.fetch("select m.control_id from deliveries d join messages m on m.id = d.message_id"
                                   " where d.destination = 'lab' and d.status = 'started' order by d.seq")
        assert [r["control_id"] for r in started] == ["P0", "P1"]
        assert await dispatcher.start_ready() == 0
    finally:
        await listener.close()
        await app_pool.close()
