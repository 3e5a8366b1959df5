"""Monitoring fixtures: an API app over the per-test database, and helpers that seed the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from activities.store import accept
from api.app import create_app
from api.auth import mint_token
from infra.config import Channel, LifelineConfig, validate_config
from infra.crypto import Cipher
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.delivery.harness import adt

CONFIG: dict[str, Any] = {
    "channels": [{"name": "adt-in", "routes": [{"to": "lab"}, {"to": "ris"}]},
                 {"name": "orders", "routes": [{"to": "lab"}]}],
    "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}},
                     {"name": "ris", "mllp": {"host": "127.0.0.1", "port": 2601}}],
    "sla": [{"name": "lab-sla", "destination": "lab", "max_backlog_age": "5m", "p95_latency": "30s",
             "min_success_rate": 0.9, "escalate_after": "10m"}],
}


def make_config(**overrides: Any) -> LifelineConfig:
    return validate_config({**CONFIG, **overrides}, "test.yaml")


def bearer(*roles: str, org: str = "default") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject='tester', org=org, roles=roles)}"}


@pytest.fixture
def config() -> LifelineConfig:
    return make_config()


@pytest.fixture
async def api(db_url: str, config: LifelineConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url=db_url), config)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            client.app = app  # type: ignore[attr-defined]  # tests reach app.state (e.g. the metrics cache)
            yield client


class Seeder:
    """Messages through the real accept path (as the application role when given `app_pool`); deliveries, attempts
    and dead letters as the engine writes them, and backdated timestamps, through the superuser `pool`."""

    def __init__(self, pool: asyncpg.Pool, cipher: Cipher, app_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.app_pool = app_pool or pool
        self.cipher = cipher
        self.n = 0

    async def message(self, channel: str = "adt-in", *, received_at: datetime | None = None, raw: str | None = None,
                      org: str = "default") -> str:
        self.n += 1
        text = raw if raw is not None else adt(f"C{self.n:06d}", f"MRN{self.n}")
        result = await accept(self.app_pool, self.cipher, Channel(name=channel, org=org), text)
        if received_at is not None:
            await self.pool.execute("update messages set received_at = $2 where id = $1", result.message_id,
                                    received_at)
        return result.message_id

    async def delivery(self, message_id: str, destination: str, *, created_at: datetime, status: str = "pending",
                       first_attempt_at: datetime | None = None, finished_at: datetime | None = None,
                       org: str = "default") -> None:
        received = await self.pool.fetchval("select received_at from messages where id = $1", message_id)
        latency = int((finished_at - received).total_seconds() * 1000) if finished_at and status == "delivered" \
            else None
        await self.pool.execute(
            "insert into deliveries (message_id, destination, org_id, seq, workflow_id, status, created_at,"
            " first_attempt_at, finished_at, latency_ms)"
            " select id, $2, $3, seq, 'delivery:' || id || ':' || $2, $4, $5, $6, $7, $8 from messages where id = $1",
            message_id, destination, org, status, created_at, first_attempt_at, finished_at, latency)
        await self.pool.execute("update messages set status = 'routed', dispatched_at = $2 where id = $1",
                                message_id, created_at)

    async def attempt(self, message_id: str, destination: str, *, at: datetime, outcome: str = "delivered",
                      error_class: str | None = None, attempt: int = 1, org: str = "default") -> None:
        await self.pool.execute(
            "insert into delivery_attempts (message_id, destination, org_id, attempt, at, outcome, error_class)"
            " values ($1, $2, $3, $4, $5, $6, $7)", message_id, destination, org, attempt, at, outcome, error_class)

    async def dead_letter(self, message_id: str, destination: str, *, at: datetime, org: str = "default") -> None:
        await self.pool.execute(
            "insert into dead_letters (org_id, message_id, destination, created_at, error_type, reason)"
            " values ($1, $2, $3, $4, 'PermanentReject', 'AR')", org, message_id, destination, at)
        await self.pool.execute("update deliveries set status = 'dead_lettered', finished_at = $3"
                                " where message_id = $1 and destination = $2", message_id, destination, at)

    async def delivered(self, message_id: str, destination: str, *, created: timedelta, first: timedelta,
                        done: timedelta, base: datetime) -> None:
        """A delivered message: offsets from its received_at `base` for dispatch, first attempt and delivery."""
        await self.delivery(message_id, destination, created_at=base + created, status="delivered",
                            first_attempt_at=base + first, finished_at=base + done)
        await self.attempt(message_id, destination, at=base + done)


@pytest.fixture
def seed(pool: asyncpg.Pool, app_pool: asyncpg.Pool, store_cipher: Cipher) -> Seeder:
    return Seeder(pool, store_cipher, app_pool)
