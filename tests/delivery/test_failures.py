"""Delivery failure paths against real peers: a destination that is down then back, down past its attempts
(dead letters, REST replay by ids and by filter), a rejecting peer at the head of an ordered lane (block /
skip), and double dispatch that must never start a second DeliveryWorkflow."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import defaultdict
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from infra.crypto import Cipher
from infra.devstack import free_port
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
from workers.dispatcher import K_CHANNEL, K_DESTINATION, K_STATUS, LANE_KEY_LABEL, Dispatcher
from workflows.contract import delivery_workflow_id

FAST = {"initial_interval": "100ms", "backoff": 1.5, "maximum_interval": "500ms"}


def address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def message_ids(pool: asyncpg.Pool) -> dict[str, str]:
    """control id -> message id."""
    return {r["control_id"]: r["id"] for r in await pool.fetch("select id, control_id from messages")}


async def at_least(pool: asyncpg.Pool, sql: str, want: int, *args: Any, timeout: float = 20) -> None:
    async def check() -> bool:
        return int(await pool.fetchval(sql, *args)) >= want

    await wait_for(check, timeout=timeout)


async def replay_and_wait(api: httpx.AsyncClient, body: dict[str, Any], total: int, *,
                          wait: bool = True) -> dict[str, Any]:
    """POST a replay (or, given a started replay, only wait) and wait until its progress shows all delivered."""
    if "workflow_id" in body:
        started = body
    else:
        r = await api.post("/api/dead-letters/replay", json=body, headers=bearer("operator"))
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["count"] == total and started["workflow_id"].startswith("replay:")
    if not wait:
        return started
    progress: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal progress
        p = await api.get(f"/api/replays/{started['workflow_id']}", headers=bearer("viewer"))
        if p.status_code != 200:
            return False
        progress = p.json()
        return bool(progress["delivered"] + progress["failed"] >= progress["total"] > 0)

    await wait_for(done, timeout=20, interval=0.2)
    assert progress["total"] == progress["delivered"] == total and progress["failed"] == 0, progress
    return started


async def test_destination_down_then_back_delivers_each_once_in_patient_order(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    port = free_port()
    peer = Peer()
    config = config_for(port, ordering={"key": "PID-3.1"},
                        retry={"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s",
                               "maximum_attempts": 50})
    sent: dict[str, list[str]] = defaultdict(list)
    texts = []
    for i in range(20):
        mrn, control = f"MRN{i % 3}", f"DOWN{i:03d}"
        sent[mrn].append(control)
        texts.append(adt(control, mrn, seq=i))
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    async with running(engine):
        assert await send_mllp(engine.mllp_port, texts) == ["AA"] * 20
        # Each lane's head fails a few times against the closed port; nothing behind a head starts.
        await at_least(pool, "select count(*) from delivery_attempts where outcome = 'retryable'", 9)
        states = {r["status"]: r["count"] for r in await pool.fetch(
            "select status, count(*) from deliveries group by status")}
        assert states == {"started": 3, "pending": 17}, states
        await peer.start(port)
        await wait_for(lambda: len(peer.received) >= 20, timeout=30)
        await asyncio.sleep(0.5)  # anything extra would arrive now
        ids = await message_ids(pool)
        head = await closed_workflow(temporal_client, delivery_workflow_id(ids["DOWN000"], "lab"))
        assert head.status == WorkflowExecutionStatus.COMPLETED
        assert head.typed_search_attributes.get(K_STATUS) == "delivered"
    await peer.stop()

    received = peer.control_ids()
    assert sorted(received) == sorted(c for cs in sent.values() for c in cs)  # each exactly once
    by_patient: dict[str, list[str]] = defaultdict(list)
    for m in peer.received:
        by_patient[str(m.segment("PID")[3][0][0])].append(str(m.segment("MSH")[10]))
    assert by_patient == sent  # per-patient order kept
    failures = await pool.fetch("select outcome, error_class, count(*) from delivery_attempts"
                                " where outcome <> 'delivered' group by 1, 2")
    assert [(f["outcome"], f["error_class"]) for f in failures] == [("retryable", "refused")]
    assert await pool.fetchval("select count(*) from delivery_attempts where outcome = 'delivered'") == 20
    rows = await pool.fetch("select d.status, d.attempts from deliveries d join messages m on m.id = d.message_id"
                            " where m.control_id = any($1::text[])", ["DOWN000", "DOWN001", "DOWN002"])
    assert all(r["status"] == "delivered" and r["attempts"] > 3 for r in rows), rows
    assert await pool.fetchval("select count(*) from deliveries where status = 'delivered'") == 20


async def test_down_past_max_attempts_dead_letters_then_rest_replay(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str) -> None:
    port = free_port()
    peer = Peer()
    config = config_for(port, retry={**FAST, "maximum_attempts": 2})
    controls = [f"DL{i}" for i in range(4)]
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    async with running(engine), api_client(db_url, address(temporal_env), task_queue, config) as api:
        await send_mllp(engine.mllp_port, [adt(c, f"MRN{i}") for i, c in enumerate(controls)])
        await at_least(pool, "select count(*) from dead_letters", 4)
        ids = await message_ids(pool)

        dls = await pool.fetch("select * from dead_letters order by id")
        for dl in dls:
            assert dl["status"] == "open" and dl["destination"] == "lab"
            assert [(a["attempt"], a["outcome"], a["error_class"]) for a in dl["attempts"]] == [
                (1, "retryable", "refused"), (2, "retryable", "refused")]
            assert "refused" in dl["error_type"] and "connect to 127.0.0.1" in dl["reason"]
        assert set(await pool.fetchval("select array_agg(distinct status) from deliveries")) == {"dead_lettered"}
        assert await pool.fetchval("select array_agg(distinct attempts) from deliveries") == [2]
        for c in controls:
            desc = await closed_workflow(temporal_client, delivery_workflow_id(ids[c], "lab"))
            assert desc.status == WorkflowExecutionStatus.FAILED
            assert desc.typed_search_attributes.get(K_STATUS) == "dead_lettered"
        listed = await api.get("/api/dead-letters", headers=bearer("viewer"))
        assert listed.status_code == 200 and len(listed.json()["items"]) == 4
        assert len(listed.json()["items"][0]["attempts"]) == 2

        await peer.start(port)
        by_ids = [dl["id"] for dl in dls if dl["message_id"] in (ids["DL0"], ids["DL1"])]
        # Submitted while no worker runs, and submitted twice (a double click): one ReplayWorkflow, both answered.
        await engine.stop_worker()
        started = await replay_and_wait(api, {"ids": by_ids, "reason": "peer back"}, 2, wait=False)
        again = await api.post("/api/dead-letters/replay", json={"ids": by_ids}, headers=bearer("operator"))
        assert again.status_code == 202, again.text
        assert again.json()["workflow_id"] == started["workflow_id"] and again.json()["ids"] == by_ids
        await engine.start_worker()
        await replay_and_wait(api, started, 2)
        assert sorted(peer.control_ids()) == ["DL0", "DL1"]
        await replay_and_wait(api, {"filter": {"destination": "lab"}}, 2)
        # Nothing left to replay: the filter matches no open dead letter.
        again = await api.post("/api/dead-letters/replay", json={"filter": {"destination": "lab"}},
                               headers=bearer("operator"))
        assert again.status_code == 404 and again.json()["field"] == "filter"
        denied = await api.post("/api/dead-letters/replay", json={"ids": by_ids}, headers=bearer("viewer"))
        assert denied.status_code == 403
        await asyncio.sleep(0.3)
    await peer.stop()

    assert sorted(peer.control_ids()) == controls  # each exactly once
    assert set(await pool.fetchval("select array_agg(distinct status) from dead_letters")) == {"replayed"}
    rows = await pool.fetch("select status, replay_count, workflow_id from deliveries")
    assert all(r["status"] == "delivered" and r["replay_count"] == 1 and r["workflow_id"].endswith(":replay-1")
               for r in rows), rows
    desc = await closed_workflow(temporal_client, rows[0]["workflow_id"])
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert desc.typed_search_attributes.get(K_STATUS) == "delivered"
    # Replays are found by the same searches as first deliveries.
    assert desc.typed_search_attributes.get(K_DESTINATION) == "lab"
    assert desc.typed_search_attributes.get(K_CHANNEL) == "adt-in"
    assert await pool.fetchval("select count(*) from audit_log where action = 'dead_letters.replay'") == 3


async def _rejected_head(pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str,
                         db_url: str, temporal_env: WorkflowEnvironment, policy: str) -> None:
    peer = Peer(answers={"A1": "AR"})
    port = await peer.start()
    config = config_for(port, ordering={"key": "PID-3.1"}, on_dead_letter=policy,
                        retry={**FAST, "maximum_attempts": 5})
    order = [("A1", "MRNA"), ("B1", "MRNB"), ("A2", "MRNA"), ("B2", "MRNB"), ("A3", "MRNA")]
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    async with running(engine), api_client(db_url, address(temporal_env), task_queue, config) as api:
        await send_mllp(engine.mllp_port, [adt(c, mrn) for c, mrn in order])
        await at_least(pool, "select count(*) from dead_letters", 1)
        ids = await message_ids(pool)
        dl = await pool.fetchrow("select * from dead_letters")
        assert dl is not None
        assert dl["message_id"] == ids["A1"] and len(dl["attempts"]) == 1
        assert dl["attempts"][0]["outcome"] == "permanent" and dl["attempts"][0]["error_class"] == "ack_reject"
        assert "PermanentReject" in dl["error_type"] and "peer says no" in dl["reason"], dl["reason"]
        desc = await closed_workflow(temporal_client, delivery_workflow_id(ids["A1"], "lab"))
        assert desc.status == WorkflowExecutionStatus.FAILED
        blocked = await api.get("/api/lanes/blocked", headers=bearer("viewer"))
        assert blocked.status_code == 200

        if policy == "skip":
            await wait_for(lambda: len(peer.received) >= 4, timeout=15)
            await asyncio.sleep(0.3)
            assert sorted(peer.control_ids()) == ["A2", "A3", "B1", "B2"]
            assert [c for c in peer.control_ids() if c.startswith("A")] == ["A2", "A3"]
            assert blocked.json()["items"] == []
            assert peer.seen.count("A1") == 1
        else:
            await wait_for(lambda: len(peer.received) >= 2, timeout=15)
            await asyncio.sleep(1.0)  # the lane behind the head must stay put
            assert peer.control_ids() == ["B1", "B2"] and peer.seen.count("A1") == 1
            states = {r["message_id"]: r["status"] for r in await pool.fetch("select * from deliveries")}
            assert states[ids["A2"]] == states[ids["A3"]] == "pending"
            items = blocked.json()["items"]
            # The lane is the keyed hash of PID-3.1 "MRNA", never the MRN itself.
            mrna = hmac.new(store_cipher.derive_key(LANE_KEY_LABEL), b"MRNA", hashlib.sha256).hexdigest()[:32]
            assert [(i["destination"], i["lane"], i["head_message_id"], i["waiting"]) for i in items] == [
                ("lab", mrna, ids["A1"], 2)]
            peer.answers.clear()  # the peer accepts the head now
            await replay_and_wait(api, {"ids": [dl["id"]]}, 1)
            await wait_for(lambda: len(peer.received) >= 5, timeout=15)
            await asyncio.sleep(0.3)
            assert [c for c in peer.control_ids() if c.startswith("A")] == ["A1", "A2", "A3"]
            assert (await api.get("/api/lanes/blocked", headers=bearer("viewer"))).json()["items"] == []
            assert await pool.fetchval("select status from dead_letters where id = $1", dl["id"]) == "replayed"
    await peer.stop()
    assert len(peer.received) == len(set(peer.control_ids()))  # nothing twice
    expected_delivered = 5 if policy == "block" else 4
    assert await pool.fetchval("select count(*) from deliveries where status = 'delivered'") == expected_delivered


async def test_rejected_head_blocks_its_lane_until_replayed(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str) -> None:
    await _rejected_head(pool, temporal_client, store_cipher, task_queue, db_url, temporal_env, "block")


async def test_rejected_head_is_skipped_under_skip_policy(
        pool: asyncpg.Pool, temporal_client: Client, temporal_env: WorkflowEnvironment, store_cipher: Cipher,
        task_queue: str, db_url: str) -> None:
    await _rejected_head(pool, temporal_client, store_cipher, task_queue, db_url, temporal_env, "skip")


async def test_double_dispatch_never_starts_a_second_workflow(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    config = config_for(port, ordering={"key": "PID-3.1"})
    controls = [f"ID{i:02d}" for i in range(12)]
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    async with running(engine):
        assert engine.dispatcher is not None
        # Two more dispatchers race the engine's own over the same outbox.
        rivals = [Dispatcher(pool, temporal_client, config, store_cipher, task_queue) for _ in range(2)]
        stop = asyncio.Event()

        async def race(d: Dispatcher) -> None:
            while not stop.is_set():
                await d.tick()
                await asyncio.sleep(0.01)

        racers = [asyncio.create_task(race(d)) for d in rivals]
        await send_mllp(engine.mllp_port, [adt(c, f"MRN{i % 2}") for i, c in enumerate(controls)])
        await wait_for(lambda: len(peer.received) >= len(controls), timeout=20)
        stop.set()
        await asyncio.gather(*racers)

        # Dispatchers that lost their bookkeeping (rows back to pending) dispatch again: no new workflow.
        # (The lane tails: nothing waits behind them.)
        ids = await message_ids(pool)
        tails = [ids["ID10"], ids["ID11"]]
        await pool.execute("update deliveries set status = 'pending' where message_id = any($1::text[])", tails)
        results = await asyncio.gather(engine.dispatcher.start_ready(), *(d.start_ready() for d in rivals))
        assert sum(results) <= 2
        await at_least(pool, "select count(*) from deliveries where status = 'started'", 2)
        await asyncio.sleep(1.0)
        count = await temporal_client.count_workflows(f'TaskQueue = "{task_queue}"')
        assert count.count == len(controls)
    await peer.stop()
    assert sorted(peer.control_ids()) == controls and len(peer.seen) == len(controls)
    assert await pool.fetchval("select count(*) from delivery_attempts") == len(controls)
