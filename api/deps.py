"""Dependency aliases: resources built once in the lifespan, the caller's identity, role guards."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
from fastapi import Depends, Query, Request
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.auth import AuthError, Principal, hash_api_key, verify_token
from api.problems import Problem, merge_responses, problem_responses
from api.ratelimit import RESPONSE_429, limiter
from infra.config import LifelineConfig
from infra.settings import Settings
from infra.store import api_keys

_bearer = HTTPBearer(auto_error=False, description="JWT with `org` and `roles` claims")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key of an EHR sender")
# The dashboard's browser session: the same JWT, kept in an HttpOnly SameSite=Strict cookie.
SESSION_COOKIE = "lifeline_token"
_session = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, scheme_name="SessionCookie",
                        description="the dashboard's session (POST /dashboard/session): the same JWT as the bearer"
                                    " token; unsafe methods only from Lifeline's own origin")
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
# PostgreSQL takes a bigint OFFSET: a larger one was a 500 (found by Schemathesis); no page is that deep anyway.
MAX_OFFSET = 10_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip (paging)")]


async def _authenticate(request: Request, settings: Settings, bearer: HTTPAuthorizationCredentials | None,
                       api_key: str | None, cookie: str | None, *, readiness: bool = False) -> Principal:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if bearer is not None:
        try:
            principal = verify_token(settings.jwt_secret.get_secret_value(), bearer.credentials,
                                     settings.jwt_issuer)
        except AuthError as exc:
            raise Problem(401, str(exc), headers=unauthorized) from None
        return await not_revoked(request, principal, readiness=readiness)
    if api_key:
        pool: asyncpg.Pool = request.app.state.pool
        try:
            row = await api_keys.lookup(pool, hash_api_key(api_key))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            raise Problem(503, "cannot check the API key: the store is unavailable") from None
        if row is None:
            raise Problem(401, "unknown or revoked API key", headers=unauthorized)
        return Principal(f"apikey:{row['name']}", row["org_id"], (row["role"],))
    if cookie:
        # SameSite=Strict still lets a same-site page on another port send it; unsafe methods need our origin.
        if request.method not in _SAFE_METHODS and not same_origin(request, settings) \
                and not codec_from_web_ui(request, settings):
            raise Problem(403, "the session cookie is not accepted on a cross-origin request")
        try:
            principal = verify_token(settings.jwt_secret.get_secret_value(), cookie, settings.jwt_issuer)
        except AuthError as exc:
            raise Problem(401, f"session: {exc}", headers=unauthorized) from None
        return await not_revoked(request, principal, readiness=readiness)
    raise Problem(401, "authentication required: send 'Authorization: Bearer <token>' or 'X-API-Key'",
                  headers=unauthorized)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyDep = Annotated[str | None, Depends(_api_key)]
SessionDep = Annotated[str | None, Depends(_session)]


async def current_principal(request: Request, settings: SettingsDep, bearer: BearerDep, api_key: ApiKeyDep,
                            cookie: SessionDep) -> Principal:
    """The caller: a bearer token, an API key or the dashboard's session cookie (in that order), charged one token
    of its rate limit (429 when the bucket is empty)."""
    principal = await _authenticate(request, settings, bearer, api_key, cookie)
    await limiter(request).charge(request, principal)
    return principal


async def readiness_principal(request: Request, settings: SettingsDep, bearer: BearerDep, api_key: ApiKeyDep,
                              cookie: SessionDep) -> Principal:
    """The caller of /readyz: as current_principal, except that a signed, unexpired token passes while revocation
    cannot be checked. Readiness exists to say that the store is down; it reads which dependency is (nothing else)."""
    principal = await _authenticate(request, settings, bearer, api_key, cookie, readiness=True)
    await limiter(request).charge(request, principal)  # fails open when the store is down
    return principal


async def not_revoked(request: Request, principal: Principal, *, readiness: bool = False) -> Principal:
    """The principal, unless its token was revoked (`lifeline token revoke`, logout); checked per request, cached."""
    if principal.jti is None:
        return principal
    from infra.store.tokens import is_revoked

    try:
        revoked = await is_revoked(request.app.state.pool, principal.jti, principal.org, cached=True)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        if readiness:
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


def require(role: str, principal: Callable[..., Coroutine[Any, Any, Principal]] = current_principal
            ) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits principals whose roles grant `role`."""

    async def _guard(user: Principal) -> Principal:
        if not user.satisfies(role):
            raise Problem(403, f"role '{role}' required", required_role=role)
        return user

    # The annotation names this call's `principal` (a string annotation could not be resolved by FastAPI).
    _guard.__annotations__["user"] = Annotated[Principal, Depends(principal)]
    _guard.__name__ = f"require_{role}"
    return _guard


# The rate limit's 429 (api.ratelimit): its description and Retry-After header; the body is problem details.
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {k: v for k, v in RESPONSE_429["429"].items() if k in ("description", "headers")}}


def guarded(role: str, *statuses: int, body: dict[str, Any] | None = None,
            responses: dict[int | str, dict[str, Any]] | None = None,
            principal: Callable[..., Coroutine[Any, Any, Principal]] = current_principal) -> dict[str, Any]:
    """Route keyword arguments: the guard, the declared role and the problem responses in the OpenAPI document.

    401, 403, 429 (rate limit, api.ratelimit) and 503 (revocation cannot be checked) come with every guarded route;
    `statuses` are the route's own
    (404, 409, ...). 422 for invalid parameters and bodies and 413 for bodies are documented by api.problems.
    `body`: the OpenAPI requestBody of a route that reads its body itself (HL7 text, CSV); `responses`: other
    documented answers (a 422 with more members, a non-JSON 200).
    """
    extra: dict[str, Any] = {"x-required-role": role}
    if body is not None:
        extra["requestBody"] = body
    return {"dependencies": [Depends(require(role, principal))], "openapi_extra": extra,
            "responses": merge_responses(problem_responses(*sorted({401, 403, 429, 503, *statuses})), RATE_LIMITED,
                                         responses or {})}
