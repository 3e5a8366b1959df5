"""Health: /healthz is the process, /readyz names the dependency that is down."""

from __future__ import annotations

import httpx
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from infra.config import EXAMPLE_CONFIG, load_config
from infra.devstack import free_port
from tests.conftest import make_settings
from tests.stack.test_api_auth import token


async def _get(settings_kw: dict[str, object], path: str) -> httpx.Response:
    app = create_app(make_settings(**settings_kw), load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get(path, headers=token("viewer"))


async def test_ready_when_postgres_and_temporal_are_up(db_url: str, temporal_env: WorkflowEnvironment) -> None:
    addr = temporal_env.client.service_client.config.target_host
    r = await _get({"database_url": db_url, "temporal_address": addr}, "/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "postgres": "ok", "temporal": "ok"}


async def test_not_ready_names_temporal(db_url: str) -> None:
    r = await _get({"database_url": db_url, "temporal_address": f"127.0.0.1:{free_port()}"}, "/readyz")
    assert r.status_code == 503
    assert r.json()["postgres"] == "ok" and r.json()["temporal"].startswith("unreachable")
    assert "temporal" in r.json()["status"]


async def test_not_ready_names_postgres(temporal_env: WorkflowEnvironment) -> None:
    addr = temporal_env.client.service_client.config.target_host
    r = await _get({"database_url": f"postgresql://x@127.0.0.1:{free_port()}/x", "temporal_address": addr},
                   "/readyz")
    assert r.status_code == 503 and r.json()["postgres"].startswith("unreachable")
    assert r.json()["temporal"] == "ok"


async def test_healthz_needs_nothing(db_url: str) -> None:
    r = await _get({"database_url": db_url, "temporal_address": f"127.0.0.1:{free_port()}"}, "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_an_api_key_while_the_store_is_down_is_a_503_problem(temporal_env: WorkflowEnvironment) -> None:
    """An API key cannot be looked up without PostgreSQL: a 503 saying so (it was an unhandled 500)."""
    addr = temporal_env.client.service_client.config.target_host
    app = create_app(make_settings(database_url=f"postgresql://x@127.0.0.1:{free_port()}/x", temporal_address=addr),
                     load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/api/messages", headers={"X-API-Key": "llk_unknown"})
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
    assert "API key" in r.json()["detail"]
