"""LifelineAdapter: Lifeline's own destinations as engine channels, read from a real PostgreSQL."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from activities.engines import build_adapter
from activities.engines.base import EngineAdapter, EngineError, EngineNotFound, EngineNotSupported
from activities.engines.lifeline import LifelineAdapter
from infra.config import Engine, LifelineConfig

CONFIG = LifelineConfig.model_validate({"destinations": [
    {"name": "lab", "mllp": {"host": "127.0.0.1", "port": 6661}, "on_dead_letter": "block"},
    {"name": "ehr", "mllp": {"host": "127.0.0.1", "port": 6662}, "on_dead_letter": "skip"},
    {"name": "fhir", "fhir": {"base_url": "http://127.0.0.1:8080/fhir"}},
    {"name": "other", "org": "acme", "mllp": {"host": "127.0.0.1", "port": 6663}},
]})


async def _delivery(conn: asyncpg.Connection, n: int, destination: str, status: str, dead: bool = False) -> None:
    mid = f"m{n:04d}"
    seq = await conn.fetchval(
        "insert into messages (id, org_id, channel, status, content_hash, size_bytes, key_id, body_enc, ack_code)"
        " values ($1, 'default', 'adt', 'routed', $2, 10, 'k1', '\\x00', 'AA') returning seq",
        mid, hashlib.sha256(mid.encode()).digest())
    await conn.execute("insert into deliveries (message_id, destination, org_id, seq, status, workflow_id)"
                       " values ($1, $2, 'default', $3, $4, $5)", mid, destination, seq, status,
                       f"delivery:{mid}:{destination}")
    if dead:
        await conn.execute("insert into dead_letters (org_id, message_id, destination, error_type, reason)"
                           " values ('default', $1, $2, 'ack_reject', 'AR')", mid, destination)


async def test_destinations_as_channels(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        n = 0
        for destination, status, dead in [("lab", "pending", False), ("lab", "pending", False),
                                          ("lab", "started", False), ("lab", "dead_lettered", True),
                                          ("ehr", "dead_lettered", True), ("ehr", "delivered", False)]:
            n += 1
            await _delivery(conn, n, destination, status, dead)
    adapter = LifelineAdapter(pool, CONFIG, org="default")
    chans = {c.id: c for c in await adapter.list_channels()}
    assert set(chans) == {"lab", "ehr", "fhir"}  # another org's destination is not listed
    lab, ehr, fhir = chans["lab"], chans["ehr"], chans["fhir"]
    assert (lab.state, lab.raw_state, lab.queued, lab.errors) == ("error", "blocked", 3, 1)
    assert lab.detail["pending"] == "2" and lab.detail["started"] == "1"
    assert (ehr.state, ehr.queued, ehr.errors) == ("started", 0, 1)  # skip policy: not blocked
    assert (fhir.state, fhir.queued, fhir.detail["kind"]) == ("started", 0, "fhir")
    assert (await adapter.channel_status("lab")).queued == 3
    with pytest.raises(EngineNotFound):
        await adapter.channel_status("other")


async def test_pause_resume_and_unsupported(pool: asyncpg.Pool) -> None:
    adapter = build_adapter(Engine(name="self", kind="lifeline"), pool=pool, config=CONFIG)
    assert isinstance(adapter, LifelineAdapter) and isinstance(adapter, EngineAdapter)
    async with pool.acquire() as conn:
        has_table = await conn.fetchval("select to_regclass('destination_state') is not null")
    if not has_table:
        with pytest.raises(EngineNotSupported):
            await adapter.pause("lab")
        return
    await adapter.pause("lab")
    assert (await adapter.channel_status("lab")).state == "paused"
    await adapter.resume("lab")
    assert (await adapter.channel_status("lab")).state == "started"
    for op in (adapter.start, adapter.stop, adapter.halt, adapter.clear_queue):
        with pytest.raises(EngineNotSupported):
            await op("lab")


def test_build_adapter_needs_pool_and_config() -> None:
    with pytest.raises(EngineError, match="needs pool and config"):
        build_adapter(Engine(name="self", kind="lifeline"))
