"""Transform steps in the delivery path, end to end with real peers (python-hl7's MLLP client in, its asyncio MLLP
server out), real Temporal and real PostgreSQL: output, filtering, typed step failures, and version pinning."""

from __future__ import annotations

from typing import Any

import asyncpg
from temporalio.client import Client

from infra.config import validate_config
from infra.crypto import Cipher
from infra.live import ConfigSource, org_document
from infra.store import config as config_store
from tests.delivery.harness import Engine, Peer, closed_workflow, running, send_mllp, wait_for
from workflows.contract import ReplayInput

WARDS = {"4W": "WARD-4-WEST", "5E": "WARD-5-EAST"}


def adt(control: str, *, ward: str = "4W", patient_class: str = "I", z: bool = True) -> str:
    lines = [f"MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|{control}|P|2.5.1",
             "EVN|A08|20260101120000",
             "PID|1||MRN1^^^GENHOSP^MR||DOE^JANE||19800101|F",
             f"PV1|1|{patient_class}|{ward}^12^1"]
    if z:
        lines += ["ZPI|site-specific|data", "ZXT|more"]
    return "\r".join(lines)


def config(port: int, steps: list[dict[str, Any]], *, tables: dict[str, dict[str, str]] | None = None,
           retry_attempts: int = 50) -> Any:
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "lab", "steps": steps}]}],
        "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": port, "ack_timeout": "5s",
                                                  "connect_timeout": "2s"},
                          "retry": {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s",
                                    "maximum_attempts": retry_attempts}}],
        "tables": [{"name": n, "values": v} for n, v in (tables or {"wards": WARDS}).items()],
    }, "test")


ROUTE_STEPS: list[dict[str, Any]] = [
    {"filter": "outpatients are not sent to the lab", "when": {"PV1-2": "O"}},
    {"map": "PV1-3.1", "table": "wards", "default": "reject"},
    {"drop_segments": ["Z*"]},
    {"set": "MSH-5", "value": "LIS"},
    {"set": "MSH-6", "value": "MAIN-LAB"},
]


async def delivery(pool: asyncpg.Pool, control: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "select d.*, m.config_version as message_version from deliveries d join messages m on m.id = d.message_id"
        " where m.control_id = $1", control)
    assert row is not None
    return row


async def test_route_maps_drops_rewrites_and_filters(pool: asyncpg.Pool, temporal_client: Client,
                                                     store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    engine = Engine(pool, temporal_client, config(port, ROUTE_STEPS), store_cipher, task_queue, db_url)
    async with running(engine):
        acks = await send_mllp(engine.mllp_port, [adt("T1"), adt("T2", patient_class="O"), adt("T3", ward="9Z"),
                                                  adt("T4", ward="5E", z=False)])
        assert acks == ["AA"] * 4
        await wait_for(lambda: len(peer.received) >= 2, timeout=60)
        for control in ("T2", "T3"):
            row = await delivery(pool, control)
            await closed_workflow(temporal_client, row["workflow_id"])
    await peer.stop()
    assert sorted(peer.control_ids()) == ["T1", "T4"]
    first = next(m for m in peer.received if str(m.segment("MSH")[10]) == "T1")
    assert str(first.segment("PV1")[3][0][0]) == "WARD-4-WEST"
    assert str(first.segment("PV1")[3][0][1]) == "12"
    assert [str(s[0]) for s in first] == ["MSH", "EVN", "PID", "PV1"]
    assert str(first.segment("MSH")[5]) == "LIS" and str(first.segment("MSH")[6]) == "MAIN-LAB"
    assert str(first.segment("MSH")[3]) == "EPIC"  # untouched fields pass through
    filtered = await delivery(pool, "T2")
    assert filtered["status"] == "filtered"
    assert filtered["filter_reason"] == ("steps[0] filter outpatients are not sent to the lab: "
                                         "outpatients are not sent to the lab")
    assert filtered["last_error"] is None
    assert await pool.fetchval("select count(*) from dead_letters where message_id = $1",
                               filtered["message_id"]) == 0
    # A step failure is a typed, non-retryable delivery failure naming the step: one attempt, then a dead letter.
    failed = await delivery(pool, "T3")
    assert failed["status"] == "dead_lettered" and failed["attempts"] == 1
    dl = await pool.fetchrow("select error_type, reason from dead_letters where message_id = $1", failed["message_id"])
    assert dl["error_type"] == "TransformFailed:steps[1] map PV1-3.1 (wards)"
    assert "code '9Z' is not in table 'wards'" in dl["reason"]


async def test_retry_and_replay_render_with_the_pinned_version_unless_asked(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    peer = Peer(answer="AA", answers={"P1": "AR", "P2": "AR"})
    port = await peer.start()
    v1 = config(port, [{"set": "MSH-5", "value": "SEEN-BY-V1"}], retry_attempts=2)
    source = await ConfigSource(v1, pool).start()
    assert source.versions == {"default": 1}
    engine = Engine(pool, temporal_client, v1, store_cipher, task_queue, db_url, source=source)
    async with running(engine):
        assert await send_mllp(engine.mllp_port, [adt("P1"), adt("P2")]) == ["AA", "AA"]
        for control in ("P1", "P2"):
            await wait_for(lambda c=control: _status(pool, c, "dead_lettered"), timeout=60)
        # A new version while they sit in dead letters: a transform change.
        v2 = config(port, [{"set": "MSH-5", "value": "SEEN-BY-V2"}], retry_attempts=2)
        await config_store.add_version(pool, "default", org_document(v2, "default"), "tester")
        assert await source.refresh() and source.versions == {"default": 2}
        assert await send_mllp(engine.mllp_port, [adt("P3")]) == ["AA"]
        await wait_for(lambda: "P3" in peer.control_ids(), timeout=60)
        peer.answers.clear()
        ids = {r["control_id"]: r["id"] for r in await pool.fetch(
            "select m.control_id, dl.id from dead_letters dl join messages m on m.id = dl.message_id")}
        # P1 through the workflow as the API starts it; P2 through `lifeline replay --with-current-config`.
        handle = await temporal_client.start_workflow(
            "ReplayWorkflow", ReplayInput("default", [ids["P1"]], "tester"),
            id=f"replay-test-P1-{task_queue}", task_queue=task_queue)
        await handle.result()
        await wait_for(lambda: "P1" in peer.control_ids(), timeout=60)
        code, out, err = await cli(db_url, temporal_client, task_queue, "replay", str(ids["P2"]),
                                   "--with-current-config", "--reason", "re-render with v2")
        assert code == 0 and "with the current configuration version" in out, err
        await wait_for(lambda: "P2" in peer.control_ids(), timeout=60)
    await peer.stop()
    seen = {str(m.segment("MSH")[10]): str(m.segment("MSH")[5]) for m in peer.received}
    assert seen == {"P1": "SEEN-BY-V1", "P2": "SEEN-BY-V2", "P3": "SEEN-BY-V2"}
    versions = {c: (await delivery(pool, c)) for c in ("P1", "P2", "P3")}
    assert {c: (r["message_version"], r["config_version"]) for c, r in versions.items()} == {
        "P1": (1, 1), "P2": (1, 2), "P3": (2, 2)}


async def cli(db_url: str, client: Client, task_queue: str, *args: str) -> tuple[int, str, str]:
    import asyncio
    import os
    import sys
    from pathlib import Path

    from tests.conftest import TEST_CODEC_KEY, TEST_JWT_SECRET, TEST_STORE_KEY

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "LIFELINE_DATABASE_URL": db_url,
           "LIFELINE_TEMPORAL_ADDRESS": client.service_client.config.target_host, "LIFELINE_TASK_QUEUE": task_queue,
           "LIFELINE_CODEC_KEY": TEST_CODEC_KEY, "LIFELINE_STORE_KEY": TEST_STORE_KEY,
           "LIFELINE_JWT_SECRET": TEST_JWT_SECRET}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.cli", *args, cwd=root, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _status(pool: asyncpg.Pool, control: str, status: str) -> bool:
    return await pool.fetchval(
        "select d.status from deliveries d join messages m on m.id = d.message_id where m.control_id = $1",
        control) == status
