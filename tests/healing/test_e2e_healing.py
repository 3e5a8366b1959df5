"""Self-healing end to end, real components only: PostgreSQL, the Temporal dev server, the real worker (every
workflow and activity, adapters from `engine_adapters`), listener and dispatcher, the flow monitor (started from
the test every ~2 s with the schedule's input), the engine emulators / fake hcicmd, and approvals over REST."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from infra.crypto import Cipher
from infra.devstack import free_port
from tests.delivery.harness import Peer, adt, bearer, send_mllp, wait_for
from tests.emulators.cloverleaf.hci import FakeCloverleaf, install
from tests.emulators.mirth import MirthEmulator
from tests.emulators.rhapsody import RhapsodyEmulator
from tests.emulators.server import ServerThread
from tests.healing.e2e import EngineTraffic, Lifeline, e2e_config, lifeline
from workflows.contract import QUERY_STATE, RestartState, case_workflow_id, restart_workflow_id

USER_ENV, PASS_ENV = "LIFELINE_E2E_ENGINE_USER", "LIFELINE_E2E_ENGINE_PASSWORD"
ONCALL = bearer("oncall")
log = logging.getLogger("tests.e2e")  # timings: run with --log-cli-level=INFO


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(USER_ENV, "admin")
    monkeypatch.setenv(PASS_ENV, "admin")
    return {"username_env": USER_ENV, "password_env": PASS_ENV}


def awaiting(action: str):  # type: ignore[no-untyped-def]
    return lambda s: s.stage == "awaiting_approval" and s.pending_action is not None \
        and s.pending_action.action == action


async def audit_actions(pool: asyncpg.Pool, case_id: str) -> list[str]:
    return [r["action"] for r in await pool.fetch(
        "select action from audit_log where subject = $1 order by id", case_id)]


async def restart_state(ll: Lifeline, engine: str, channel: str) -> RestartState:
    handle = ll.client.get_workflow_handle(restart_workflow_id("default", engine, channel))
    state: RestartState = await handle.query(QUERY_STATE, result_type=RestartState)
    return state


# -- 1. destination down → self-heals in semi-auto --------------------------------------------------------------


async def test_destination_down_self_heals_semi_auto(temporal_client: Client, task_queue: str, pool: asyncpg.Pool,
                                                     db_url: str, store_cipher: Cipher) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    # Backoff 0.3 s, 1.5 s, then 7.5 s: after three refusals the next natural retry is far off, so a backlog that
    # drains within seconds was drained by the case's `reconnect`, not by the retry policy.
    config = e2e_config(port, mode="semi-auto", settle="2s",
                        retry={"initial_interval": "300ms", "backoff": 5.0, "maximum_interval": "30s",
                               "maximum_attempts": 50})
    case_id = case_workflow_id("default", "destination_down", "destination:lab")
    peer = Peer()
    async with lifeline(temporal_client, pool, db_url, store_cipher, task_queue, config, clear_ids=[case_id]) as ll:
        try:
            codes = await send_mllp(ll.mllp_port, [adt(f"DOWN{i}", f"MRN{i}") for i in range(5)])
            assert codes == ["AA"] * 5
            await wait_for(lambda: pool.fetchval(
                "select count(*) >= 15 from delivery_attempts where error_class = 'refused'"), timeout=15)
            first_failure = await pool.fetchval("select min(at) from delivery_attempts")
            # The peer comes back while every delivery waits out its backoff (next try ~6 s away).
            await peer.start(port)
            back_at = time.time()
            ll.monitor.start()

            state = await ll.wait_case(case_id, lambda s: s.diagnosis is not None, timeout=30)
            desc = await temporal_client.get_workflow_handle(case_id).describe()
            time_to_open = (desc.start_time - first_failure).total_seconds()
            assert time_to_open <= 30, time_to_open
            assert desc.task_queue == task_queue
            assert state.diagnosis is not None and state.diagnosis.signature == "refused"
            assert state.diagnosis.actions[0].action == "reconnect"

            final = await ll.case_result(case_id, timeout=30)
            drained_after = time.time() - back_at
        finally:
            await peer.stop()

    assert final.stage == "resolved", final.history
    [attempt] = final.attempts
    assert attempt["action"] == "reconnect" and attempt["outcome"] == "verified" and attempt["by"] == "auto"
    assert "reset the backoff of" in attempt["detail"] and "reset the backoff of 0 " not in attempt["detail"]
    assert not any("awaiting_approval" in h for h in final.history)  # safe: no approval in semi-auto
    assert final.mttd_s is not None and final.mttr_s is not None
    # Drained after the reconnect reset the waiting deliveries (asserted on the attempt detail above).
    assert sorted(peer.control_ids()) == [f"DOWN{i}" for i in range(5)]
    assert await pool.fetchval("select count(*) from deliveries where status <> 'delivered'") == 0
    # How long the whole loop took is logged, not asserted: it depends on machine load (29 s seen in a full run).

    row = await pool.fetchrow("select * from cases where case_id = $1", case_id)
    assert row["stage"] == "resolved" and row["signature"] == "refused" and row["action"] == "reconnect"
    assert row["mttd_ms"] is not None and row["mttr_ms"] is not None and row["onset_at"] == first_failure
    assert row["mttr_ms"] == int(final.mttr_s * 1000)
    actions = await audit_actions(pool, case_id)
    assert actions[0] == "case.open" and "case.reconnect" in actions and actions[-1] == "case.resolved"
    res = await pool.fetchrow("select successes, failures from resolutions where signature = 'refused'"
                              " and action = 'reconnect'")
    assert (res["successes"], res["failures"]) == (1, 0)
    log.info("destination_down: case open %.1fs after the first failure, MTTD %.1fs, MTTR %.1fs, drained %.1fs",
             time_to_open, row["mttd_ms"] / 1000, row["mttr_ms"] / 1000, drained_after)


# -- 2. Mirth channel STOPPED with messages queued: approve over REST, and reject over REST -------------------


async def test_mirth_stopped_channel_restarted_on_approval_and_left_alone_on_reject(
        temporal_client: Client, task_queue: str, pool: asyncpg.Pool, db_url: str, store_cipher: Cipher,
        engine_env: dict[str, str]) -> None:
    emu = MirthEmulator(delay=0.2)
    fixed = emu.add_channel("ADT out", id=str(uuid.uuid4()), state="STOPPED", queued=5, received=40, sent=35)
    kept = emu.add_channel("ORU out", id=str(uuid.uuid4()), state="STOPPED", queued=3, received=20, sent=17)
    emu.add_channel("Healthy", id=str(uuid.uuid4()))
    with ServerThread(emu.app) as url:
        config = e2e_config(free_port(), mode="semi-auto", settle="2s",
                            engines=[{"name": "mirth1", "kind": "mirth", "url": f"{url}/api", **engine_env}])
        fixed_case = case_workflow_id("default", "engine_channel_stopped", f"engine:mirth1:{fixed.id}")
        kept_case = case_workflow_id("default", "engine_channel_stopped", f"engine:mirth1:{kept.id}")
        async with lifeline(temporal_client, pool, db_url, store_cipher, task_queue, config) as ll, \
                EngineTraffic(mirth=emu):
            started = time.time()
            ll.monitor.start()
            fixed_state = await ll.wait_case(fixed_case, awaiting("restart_engine_channel"), timeout=30)
            kept_state = await ll.wait_case(kept_case, awaiting("restart_engine_channel"), timeout=30)
            opened_in = ll.monitor.first_seen[fixed_case] - started
            await ll.monitor.stop()  # a rejected case would be opened again by the next run: no more runs
            for s in (fixed_state, kept_state):
                assert s.diagnosis is not None and s.diagnosis.signature == "engine:STOPPED"
                assert s.pending_action is not None and s.pending_action.safety == "risky"
            await asyncio.sleep(0.5)
            assert not [r for r in emu.requests if r[0] == "POST" and "/_" in r[1] and "_login" not in r[1]]

            resp = await ll.api.post(f"/api/remediations/{fixed_case}/approve", headers=ONCALL,
                                     json={"note": "restart it", "action": "restart_engine_channel"})
            assert resp.status_code == 200, resp.text
            resp = await ll.api.post(f"/api/remediations/{kept_case}/reject", headers=ONCALL,
                                     json={"note": "the lab asked us to wait"})
            assert resp.status_code == 200, resp.text

            rejected = await ll.case_result(kept_case, timeout=15)
            final = await ll.case_result(fixed_case, timeout=45)
            restart = await restart_state(ll, "mirth1", fixed.id)

    assert final.stage == "resolved", final.history
    assert final.approver == "tester" and final.attempts[-1]["outcome"] == "verified"
    assert restart.stage == "done", restart.history
    assert fixed.state == "STARTED" and fixed.queued == 0 and fixed.sent == 40  # restarted, its queue drained
    assert rejected.stage == "rejected" and rejected.attempts == [
        {"action": "restart_engine_channel", "outcome": "rejected", "by": "tester", "note": "the lab asked us to wait"}]
    assert kept.state == "STOPPED" and kept.queued == 3
    assert not [r for r in emu.requests if kept.id in r[1] and r[0] == "POST"]  # never touched
    rows = {r["case_id"]: r for r in await pool.fetch("select * from cases")}
    assert rows[fixed_case]["stage"] == "resolved" and rows[fixed_case]["approver"] == "tester"
    assert rows[fixed_case]["mttr_ms"] is not None
    assert rows[kept_case]["stage"] == "rejected" and rows[kept_case]["mttr_ms"] is None
    fixed_audit = await audit_actions(pool, fixed_case)
    assert {"case.awaiting_approval", "remediations.approve", "case.approve", "case.resolved"} <= set(fixed_audit)
    assert {"remediations.reject", "case.reject", "case.rejected"} <= set(await audit_actions(pool, kept_case))
    assert "engine.restart" in await audit_actions(pool, restart_workflow_id("default", "mirth1", fixed.id))
    log.info("mirth STOPPED: case open %.1fs after the monitor started, MTTR %.1fs (approval wait included)",
             opened_in, rows[fixed_case]["mttr_ms"] / 1000)


# -- 3. Rhapsody comm point in ERROR (full-auto) and Cloverleaf thread down (approved over REST) ---------------


async def test_rhapsody_commpoint_in_error_restarted_without_approval_in_full_auto(
        temporal_client: Client, task_queue: str, pool: asyncpg.Pool, db_url: str, store_cipher: Cipher,
        engine_env: dict[str, str]) -> None:
    emu = RhapsodyEmulator(delay=0.2)
    comp = emu.add("ADT to LIS", id=7, state="ERROR", out_queue=4, received=50, sent=46, failed=2)
    emu.add("ADT from EHR", id=8, mode="INPUT")
    with ServerThread(emu.app) as url:
        config = e2e_config(free_port(), mode="full-auto", settle="2s",
                            engines=[{"name": "rhap1", "kind": "rhapsody", "url": f"{url}/api", **engine_env}])
        case_id = case_workflow_id("default", "engine_channel_stopped", "engine:rhap1:7")
        async with lifeline(temporal_client, pool, db_url, store_cipher, task_queue, config,
                            clear_ids=[case_id, restart_workflow_id("default", "rhap1", "7")]) as ll, \
                EngineTraffic(rhapsody=emu):
            started = time.time()
            ll.monitor.start()
            await ll.wait_case(case_id, lambda s: True, timeout=30)  # opened by the monitor
            final = await ll.case_result(case_id, timeout=45)
            opened_in = ll.monitor.first_seen[case_id] - started
            restart = await restart_state(ll, "rhap1", "7")

    assert final.stage == "resolved", final.history
    assert final.diagnosis is not None and final.diagnosis.signature == "engine:ERROR"
    assert final.mode == "full-auto" and final.approver == ""
    assert not any("awaiting_approval" in h for h in final.history)  # risky runs without approval in full-auto
    [attempt] = final.attempts
    assert (attempt["action"], attempt["outcome"], attempt["by"]) == ("restart_engine_channel", "verified", "auto")
    assert restart.stage == "done", restart.history
    comp.settle()
    assert comp.state == "RUNNING" and comp.out_queue == 0 and comp.sent == 50  # restarted, its queue drained
    assert [(m, p) for m, p, _ in emu.requests if m == "PUT"] == [("PUT", "/api/commpoint/7/state")] * 2  # stop, start
    assert emu.components[8].state == "RUNNING"
    row = await pool.fetchrow("select stage, mttr_ms from cases where case_id = $1", case_id)
    assert row["stage"] == "resolved" and row["mttr_ms"] is not None
    log.info("rhapsody ERROR (full-auto): case open %.1fs after the monitor started, MTTR %.1fs",
             opened_in, row["mttr_ms"] / 1000)


async def test_cloverleaf_thread_down_restarted_after_approval_over_rest(
        temporal_client: Client, task_queue: str, pool: asyncpg.Pool, db_url: str, store_cipher: Cipher,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hci = FakeCloverleaf(tmp_path / "hci-state.json", site="site1", delay=0.2)
    hci.add_process("adt", {"ib_adt": {"msgsin": 120, "msgsout": 120},
                            "ob_adt": {"status": "down", "msgsin": 80, "msgsout": 74, "obdataqd": 6,
                                       "plasterrtext": "connection refused by 10.0.0.5:6661"}})
    for key, value in hci.env.items():
        monkeypatch.setenv(key, value)
    bin_dir = install(tmp_path / "bin")
    config = e2e_config(free_port(), mode="semi-auto", settle="2s", engines=[
        {"name": "clover1", "kind": "cloverleaf", "timeout": "5s",
         "cloverleaf": {"site": "site1", "command_dir": str(bin_dir)}}])
    # Cloverleaf channel ids are <process>/<thread>: the case id has a slash in it.
    case_id = case_workflow_id("default", "engine_channel_stopped", "engine:clover1:adt/ob_adt")
    async with lifeline(temporal_client, pool, db_url, store_cipher, task_queue, config,
                        clear_ids=[case_id, restart_workflow_id("default", "clover1", "adt/ob_adt")]) as ll, \
            EngineTraffic(cloverleaf=hci, threads=["ob_adt"]):
        ll.monitor.start()
        state = await ll.wait_case(case_id, awaiting("restart_engine_channel"), timeout=30)
        assert state.diagnosis is not None and state.diagnosis.signature == "engine:STOPPED"
        assert not [c for c in hci.calls if "pstart" in " ".join(c) or "pstop" in " ".join(c)]
        seen = await ll.api.get(f"/api/remediations/{case_id}", headers=bearer("viewer"))
        assert seen.status_code == 200 and seen.json()["state"]["stage"] == "awaiting_approval", seen.text
        resp = await ll.api.post(f"/api/remediations/{case_id}/approve", headers=ONCALL, json={})
        assert resp.status_code == 200, resp.text
        final = await ll.case_result(case_id, timeout=45)
        restart = await restart_state(ll, "clover1", "adt/ob_adt")

    assert final.stage == "resolved", final.history
    assert final.approver == "tester" and final.attempts[-1]["outcome"] == "verified"
    assert restart.stage == "done", restart.history
    thread = hci.thread("ob_adt")
    assert thread["status"] == "up" and thread["obdataqd"] == 0 and thread["msgsout"] == 80
    assert any("ob_adt pstart" in " ".join(c) for c in hci.calls)
    assert hci.thread("ib_adt")["status"] == "up"
    assert await pool.fetchval("select stage from cases where case_id = $1", case_id) == "resolved"


# -- 4. Invariant 6 end to end: a destructive action waits for a person even in full-auto ------------------------


async def test_lane_blocked_skip_waits_for_approval_in_full_auto(
        temporal_client: Client, task_queue: str, pool: asyncpg.Pool, db_url: str, store_cipher: Cipher) -> None:
    peer = Peer()
    port = await peer.start()
    peer.answers["HEAD1"] = "AR"  # the lane's head is rejected for good: dead-lettered, the lane blocks
    config = e2e_config(port, mode="full-auto", settle="2s", ordering={"key": "PID-3.1"})
    case_id = case_workflow_id("default", "lane_blocked", "destination:lab")
    try:
        async with lifeline(temporal_client, pool, db_url, store_cipher, task_queue, config,
                            clear_ids=[case_id]) as ll:
            assert await send_mllp(ll.mllp_port, [adt("HEAD1", "MRN9"), adt("NEXT1", "MRN9", seq=1),
                                                  adt("NEXT2", "MRN9", seq=2)]) == ["AA"] * 3
            await wait_for(lambda: pool.fetchval("select count(*) = 1 from dead_letters"), timeout=20)
            ll.monitor.start()
            state = await ll.wait_case(case_id, awaiting("skip_blocked_head"), timeout=45)
            assert state.mode == "full-auto" and state.pending_action is not None
            assert state.pending_action.safety == "destructive"
            assert state.diagnosis is not None and state.diagnosis.signature.startswith("blocked")
            # Nothing skipped while it waits, however long: the lane stays blocked behind its head.
            await asyncio.sleep(2.5)
            still = await ll.case(case_id)
            assert still is not None and still.stage == "awaiting_approval"
            assert await pool.fetchval("select count(*) from deliveries where status = 'skipped'") == 0
            assert await pool.fetchval("select count(*) from dead_letters where status = 'open'") == 1
            assert "NEXT1" not in peer.control_ids() and "NEXT2" not in peer.control_ids()

            resp = await ll.api.post(f"/api/remediations/{case_id}/approve", headers=ONCALL,
                                     json={"action": "skip_blocked_head", "note": "the lab re-keys it"})
            assert resp.status_code == 200, resp.text
            final = await ll.case_result(case_id, timeout=30)
    finally:
        await peer.stop()

    assert final.stage == "resolved", final.history
    assert final.attempts[-1]["action"] == "skip_blocked_head" and final.attempts[-1]["by"] == "tester"
    assert [a["action"] for a in final.attempts if a["outcome"] != "verified"] == ["replay_dead_letters"]
    assert peer.control_ids()[-2:] == ["NEXT1", "NEXT2"]
    assert await pool.fetchval("select status from deliveries where message_id = (select message_id from"
                               " dead_letters limit 1)") == "skipped"
    assert "case.skip_blocked_head" in await audit_actions(pool, case_id)
