"""API keys for EHR senders: created by the CLI, stored hashed, role sender only, revocable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import hash_api_key
from infra.config import EXAMPLE_CONFIG, load_config
from tests.conftest import make_settings
from tests.delivery.harness import adt
from workers.cli import main


@pytest.fixture
async def app(db_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url=db_url), load_config(EXAMPLE_CONFIG))
    async with application.router.lifespan_context(application):
        yield application


async def test_sender_key_posts_messages_and_nothing_else(app: FastAPI, db_url: str, pool: asyncpg.Pool,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["apikey", "create", "--name", "epic", "--database-url", db_url])
    key = capsys.readouterr().out.strip()
    assert code == 0 and key.startswith("llk_")
    stored = await pool.fetchrow("select key_hash, role from api_keys where name = 'epic'")
    assert stored["key_hash"] == hash_api_key(key) and stored["role"] == "sender"
    assert key.encode() not in stored["key_hash"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        headers = {"X-API-Key": key}
        r = await c.post("/api/channels/adt-in/messages", content=adt("K1", "MRN1"),
                         headers={**headers, "Content-Type": "text/plain"})
        assert r.status_code == 202 and r.json()["ack_code"] == "AA"
        assert (await c.get("/api/messages", headers=headers)).status_code == 403
        code = await asyncio.to_thread(main, ["apikey", "revoke", "--name", "epic", "--database-url", db_url])
        assert code == 0
        r = await c.post("/api/channels/adt-in/messages", content=adt("K2", "MRN1"),
                         headers={**headers, "Content-Type": "text/plain"})
        assert r.status_code == 401
    actions = [r["action"] for r in await pool.fetch("select action from audit_log order by id")]
    assert actions == ["api_key.create", "api_key.revoke"]
