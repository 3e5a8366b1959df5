"""Finding 6 (sessions): login CSRF (Origin check), CORS credentials only on /api/codec, tokens with a jti and a
maximum lifetime, revocation (`lifeline token revoke`, checked per request) and logout that revokes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import MAX_TOKEN_TTL_SECONDS, AuthError, mint_token, verify_token
from api.deps import SESSION_COOKIE
from infra.config import EXAMPLE_CONFIG, load_config
from tests.conftest import TEST_JWT_SECRET, make_settings
from workers.cli import main

UI = "http://localhost:8233"


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(make_settings(database_url=db_url), load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


def viewer() -> str:
    return mint_token(TEST_JWT_SECRET, subject="v", org="default", roles=["viewer"])


async def test_login_from_another_origin_is_refused(client: httpx.AsyncClient) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    evil = await client.post("/dashboard/session", content=f"token={viewer()}",
                             headers={**form, "Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.json()["field"] == "origin"
    assert SESSION_COOKIE not in evil.cookies
    null = await client.post("/dashboard/session", content=f"token={viewer()}", headers={**form, "Origin": "null"})
    assert null.status_code == 403
    own = await client.post("/dashboard/session", content=f"token={viewer()}", headers={**form, "Origin": "http://t"})
    assert own.status_code == 303 and SESSION_COOKIE in own.cookies


async def test_cors_credentials_only_on_the_codec(client: httpx.AsyncClient) -> None:
    preflight = {"Origin": UI, "Access-Control-Request-Method": "POST"}
    codec = await client.options("/api/codec/decode", headers=preflight)
    assert codec.headers.get("access-control-allow-credentials") == "true"
    other = await client.options("/api/dead-letters/replay", headers=preflight)
    assert other.headers.get("access-control-allow-origin") == UI
    assert "access-control-allow-credentials" not in other.headers
    simple = await client.get("/api/messages", headers={"Origin": UI, "Authorization": f"Bearer {viewer()}"})
    assert "access-control-allow-credentials" not in simple.headers


def test_tokens_carry_a_jti_and_a_bounded_lifetime() -> None:
    a, b = verify_token(TEST_JWT_SECRET, viewer()), verify_token(TEST_JWT_SECRET, viewer())
    assert a.jti and b.jti and a.jti != b.jti
    with pytest.raises(ValueError, match="at most"):
        mint_token(TEST_JWT_SECRET, subject="v", org="default", roles=["viewer"], ttl_seconds=MAX_TOKEN_TTL_SECONDS + 1)
    now = int(time.time())
    forever = jwt.encode({"sub": "v", "org": "default", "roles": ["admin"], "iss": "lifeline", "iat": now,
                          "exp": now + 10 * 365 * 86400}, TEST_JWT_SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="lifetime over the maximum"):
        verify_token(TEST_JWT_SECRET, forever)


async def test_revoked_token_is_refused_on_the_next_request(client: httpx.AsyncClient, db_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = viewer()
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/messages", headers=auth)).status_code == 200
    monkeypatch.setenv("LIFELINE_DATABASE_URL", db_url)
    monkeypatch.setenv("LIFELINE_JWT_SECRET", TEST_JWT_SECRET)
    assert await asyncio.to_thread(main, ["token", "revoke", token]) == 0
    r = await client.get("/api/messages", headers=auth)
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    other = {"Authorization": f"Bearer {viewer()}"}
    assert (await client.get("/api/messages", headers=other)).status_code == 200
    assert await asyncio.to_thread(main, ["token", "revoke", "not-a-token"]) == 2


async def test_logout_revokes_the_session_token(client: httpx.AsyncClient) -> None:
    token = viewer()
    client.cookies.set(SESSION_COOKIE, token)
    assert (await client.get("/api/messages")).status_code == 200
    out = await client.delete("/dashboard/session", headers={"Origin": "http://t"})
    assert out.status_code == 204
    client.cookies.clear()
    # The token itself, wherever it was copied, no longer works.
    r = await client.get("/api/messages", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"


async def test_logout_revokes_the_cookies_token_not_the_bearer_callers(client: httpx.AsyncClient) -> None:
    """A bearer caller carrying a session cookie logs out the session, and its own token keeps working (the bearer
    token was revoked instead; Schemathesis found it when its admin token died mid-run)."""
    bearer, session = viewer(), viewer()
    auth = {"Authorization": f"Bearer {bearer}"}
    client.cookies.set(SESSION_COOKIE, session)
    assert (await client.delete("/dashboard/session", headers=auth)).status_code == 204
    client.cookies.clear()
    assert (await client.get("/api/messages", headers=auth)).status_code == 200
    r = await client.get("/api/messages", headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    client.cookies.set(SESSION_COOKIE, "not-a-token")
    assert (await client.delete("/dashboard/session", headers=auth)).status_code == 204
    client.cookies.clear()
    assert (await client.get("/api/messages", headers=auth)).status_code == 200
