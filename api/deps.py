"""Dependency aliases: resources built once in the lifespan, the caller's identity, role guards."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.auth import AuthError, Principal, hash_api_key, verify_token
from api.problems import Problem
from api.ratelimit import RESPONSE_429, limiter
from infra.config import LifelineConfig
from infra.settings import Settings
from infra.store import api_keys

_bearer = HTTPBearer(auto_error=False, description="JWT with `org` and `roles` claims")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key of an EHR sender")
# The dashboard's browser session: the same JWT, kept in an HttpOnly SameSite=Strict cookie.
SESSION_COOKIE = "lifeline_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def get_config(request: Request) -> LifelineConfig:
    """The current configuration: the live version when the API follows PostgreSQL, else the one it was given."""
    source = getattr(request.app.state, "source", None)
    config: LifelineConfig = source.current if source is not None else request.app.state.config
    return config


async def get_temporal(request: Request) -> Client:
    client: Client = await request.app.state.temporal()
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
ConfigDep = Annotated[LifelineConfig, Depends(get_config)]
TemporalDep = Annotated[Client, Depends(get_temporal)]


async def current_principal(
    request: Request,
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The authenticated caller, charged one token of its rate limit (429 when the bucket is empty)."""
    principal = await authenticate(request, settings, bearer, api_key)
    await limiter(request).charge(request, principal)
    return principal


async def authenticate(request: Request, settings: Settings, bearer: HTTPAuthorizationCredentials | None,
                       api_key: str | None) -> Principal:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if bearer is not None:
        try:
            principal = verify_token(settings.jwt_secret.get_secret_value(), bearer.credentials,
                                     settings.jwt_issuer)
        except AuthError as exc:
            raise Problem(401, str(exc), headers=unauthorized) from None
        return await not_revoked(request, principal)
    if api_key:
        pool: asyncpg.Pool = request.app.state.pool
        row = await api_keys.lookup(pool, hash_api_key(api_key))
        if row is None:
            raise Problem(401, "unknown or revoked API key", headers=unauthorized)
        return Principal(f"apikey:{row['name']}", row["org_id"], (row["role"],))
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        # SameSite=Strict still lets a same-site page on another port send it; unsafe methods need our origin.
        if request.method not in _SAFE_METHODS and not same_origin(request, settings) \
                and not codec_from_web_ui(request, settings):
            raise Problem(403, "the session cookie is not accepted on a cross-origin request")
        try:
            principal = verify_token(settings.jwt_secret.get_secret_value(), cookie, settings.jwt_issuer)
        except AuthError as exc:
            raise Problem(401, f"session: {exc}", headers=unauthorized) from None
        return await not_revoked(request, principal)
    raise Problem(401, "authentication required: send 'Authorization: Bearer <token>' or 'X-API-Key'",
                  headers=unauthorized)


async def not_revoked(request: Request, principal: Principal) -> Principal:
    """The principal, unless its token was revoked (`lifeline token revoke`, logout); checked per request, cached."""
    if principal.jti is None:
        return principal
    from infra.store.tokens import is_revoked

    try:
        revoked = await is_revoked(request.app.state.pool, principal.jti, principal.org, cached=True)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        if request.url.path == "/readyz":
            # Readiness exists to say that the store is down: a signed, unexpired token may read which dependency
            # is unreachable (nothing else) while revocation cannot be checked.
            return principal
        raise Problem(503, "cannot check token revocation: the store is unavailable") from None
    if revoked:
        raise Problem(401, "token revoked", headers={"WWW-Authenticate": "Bearer"})
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]


def same_origin(request: Request, settings: Settings) -> bool:
    """No Origin header (not a browser), or one naming this server (its Host or the public URL)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc
    return bool(netloc) and netloc in {request.headers.get("host", ""), urlsplit(settings.public_url).netloc}


def codec_from_web_ui(request: Request, settings: Settings) -> bool:
    """The Temporal Web UI (a configured CORS origin) may call the codec with the dashboard session cookie."""
    return request.url.path.startswith("/api/codec/") and request.headers.get("origin") in settings.cors_origins


def require(role: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits principals whose roles grant `role`."""

    async def _guard(user: CurrentUser) -> Principal:
        if not user.satisfies(role):
            raise Problem(403, f"role '{role}' required", required_role=role)
        return user

    _guard.__name__ = f"require_{role}"
    return _guard


def guarded(role: str) -> dict[str, Any]:
    """Route keyword arguments: the guard plus the declared role (and the rate limit's 429) in the OpenAPI document."""
    return {"dependencies": [Depends(require(role))],
            "openapi_extra": {"x-required-role": role, "responses": RESPONSE_429}}
