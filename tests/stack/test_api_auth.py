"""Every route but /healthz answers 401 without a token and 403 with a token lacking its declared role."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import GRANTS, ROLES, mint_token
from infra.config import EXAMPLE_CONFIG, load_config
from tests.conftest import TEST_JWT_SECRET, make_settings

OPEN = {("get", "/healthz")}


@pytest.fixture
async def app(db_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url=db_url), load_config(EXAMPLE_CONFIG))
    async with application.router.lifespan_context(application):
        yield application


def token(*roles: str, org: str = "default") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject='t', org=org, roles=roles)}"}


def operations(app: FastAPI) -> list[tuple[str, str, str | None]]:
    spec = app.openapi()
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            ops.append((method, path, op.get("x-required-role")))
    return ops


async def test_every_route_declares_a_role_and_enforces_it(app: FastAPI) -> None:
    ops = operations(app)
    assert len(ops) >= 4
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for method, path, role in ops:
            url = re.sub(r"\{[^}]+\}", "x1", path)
            if (method, path) in OPEN:
                assert (await client.request(method, url)).status_code == 200
                continue
            assert role in ROLES, f"{method.upper()} {path} declares no role"
            r = await client.request(method, url)
            assert r.status_code == 401, f"{method.upper()} {path} without token: {r.status_code}"
            assert r.json()["status"] == 401
            lacking = next(r_ for r_ in ROLES if role not in GRANTS[r_])
            r = await client.request(method, url, headers=token(lacking))
            assert r.status_code == 403, f"{method.upper()} {path} as {lacking}: {r.status_code}"
            assert r.json()["required_role"] == role


async def test_bad_tokens_are_401(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        forged = mint_token("another-secret-" + "y" * 40, subject="x", org="default", roles=["admin"])
        r = await client.get("/readyz", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and "invalid token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer" and "headers" not in r.json()
        expired = mint_token(TEST_JWT_SECRET, subject="x", org="default", roles=["admin"], ttl_seconds=-10)
        r = await client.get("/readyz", headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401
        r = await client.get("/readyz", headers={"X-API-Key": "llk_nope"})
        assert r.status_code == 401 and "API key" in r.json()["detail"]


async def test_session_cookie_reaches_the_codec_only_from_the_web_ui(app: FastAPI) -> None:
    """The Temporal Web UI (a CORS origin) decodes payloads with the dashboard's session cookie; other origins
    and other write routes stay closed to cross-origin cookie use."""
    from api.deps import SESSION_COOKIE

    cookie = mint_token(TEST_JWT_SECRET, subject="op", org="default", roles=["operator"])
    body = {"payloads": []}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", cookies={SESSION_COOKIE: cookie}) as c:
        ui = {"Origin": "http://localhost:8233"}
        assert (await c.post("/api/codec/decode", json=body, headers=ui)).status_code == 200
        evil = await c.post("/api/codec/decode", json=body, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        replay = await c.post("/api/dead-letters/replay", json={"ids": [1]}, headers=ui)
        assert replay.status_code == 403 and "cross-origin" in replay.json()["detail"]
