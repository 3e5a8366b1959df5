"""Rate limits: a token bucket per API key or user, shared by every API process through PostgreSQL.

Charged once per authenticated request, right after authentication (api.deps.current_principal), so a refused
request reaches no route code and stores nothing. REST ingress (routes tagged `ingress`) uses one bucket per API key
or user sized by LIFELINE_RATE_LIMIT_INGRESS; every other route one bucket per user sized by the user's most generous
role (LIFELINE_RATE_LIMIT_ROLES). An empty bucket answers 429 problem JSON with Retry-After.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import asyncpg
from fastapi import Request

from api.auth import Principal
from api.problems import Problem
from infra.settings import Settings
from infra.store import rate_limits

log = logging.getLogger("lifeline.api.ratelimit")
INGRESS_TAG = "ingress"

# The 429 every guarded route may answer, merged into each operation's OpenAPI `responses` through openapi_extra
# (api.deps.guarded), so routes keep declaring their own responses.
RESPONSE_429: dict[str, dict[str, Any]] = {"429": {
    "description": "Rate limit exceeded: retry after `Retry-After` seconds (problem JSON)",
    "headers": {"Retry-After": {"description": "seconds until the bucket has a token again",
                                "schema": {"type": "integer", "minimum": 1}}},
    "content": {"application/problem+json": {"schema": {
        "type": "object", "required": ["type", "title", "status", "detail"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "detail": {"type": "string"}, "retry_after": {"type": "integer"},
                       "scope": {"type": "string", "enum": ["ingress", "api"]}}}}},
}}


class RateLimiter:
    """The configured limits, resolved once per process from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits
        self.ingress = settings.ingress_limit()
        self.roles = settings.role_limits()

    def limit(self, scope: str, principal: Principal) -> tuple[str, float, float]:
        """(role label, rate, burst) of the principal's bucket in a scope."""
        if scope == "ingress":
            return principal.roles[0] if principal.roles else "sender", *self.ingress
        known = [r for r in principal.roles if r in self.roles]
        if not known:
            return "viewer", *self.roles["viewer"]
        role = max(known, key=lambda r: self.roles[r])
        return role, *self.roles[role]

    async def charge(self, request: Request, principal: Principal) -> None:
        """Take a token for this request or raise the 429 problem."""
        if not self.enabled:
            return
        route = request.scope.get("route")
        scope = "ingress" if INGRESS_TAG in (getattr(route, "tags", None) or ()) else "api"
        role, rate, burst = self.limit(scope, principal)
        try:
            result = await rate_limits.take(request.app.state.pool, principal.org, scope, principal.subject, role,
                                            rate=rate, burst=burst)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Fail open: the limit protects capacity, it is not a wall; whatever the route needs from the store
            # fails on its own (and /readyz must still be able to say the store is down).
            log.warning("rate limit not checked: the store is unavailable (%s)", type(exc).__name__)
            return
        if result.allowed:
            return
        retry_after = max(1, math.ceil((1 - result.tokens) / rate))
        raise Problem(429, f"rate limit exceeded: {rate:g} requests per second (burst {burst:g}) for this "
                           f"{'API key or user on ingress' if scope == 'ingress' else 'user'}; retry in "
                           f"{retry_after} s", headers={"Retry-After": str(retry_after)}, retry_after=retry_after,
                      scope=scope)


def limiter(request: Request) -> RateLimiter:
    """The app's limiter (built with the app from its settings)."""
    existing: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if existing is None:
        existing = request.app.state.rate_limiter = RateLimiter(request.app.state.settings)
    return existing
