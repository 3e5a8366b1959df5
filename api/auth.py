"""Bearer JWTs with roles and org, API keys for EHR senders; each route declares the role it needs."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

ROLES = ("admin", "operator", "oncall", "auditor", "viewer", "sender")
# Which declared route roles a token role satisfies. admin satisfies all; only admin and the
# roles listed here can read PHI (message bodies).
GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset(ROLES),
    "operator": frozenset({"operator", "viewer"}),
    "oncall": frozenset({"oncall", "viewer"}),
    "auditor": frozenset({"auditor", "viewer"}),
    "viewer": frozenset({"viewer"}),
    "sender": frozenset({"sender"}),
}
PHI_READERS = frozenset({"admin", "operator"})
# No token lives longer than this, whatever its exp says (a stolen long-lived token is the worst kind).
MAX_TOKEN_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Principal:
    subject: str
    org: str
    roles: tuple[str, ...]
    jti: str | None = None  # the token's id, for revocation (API keys and old tokens have none)
    expires_at: int | None = None

    def satisfies(self, role: str) -> bool:
        return any(role in GRANTS.get(r, frozenset()) for r in self.roles)

    @property
    def can_read_phi(self) -> bool:
        return any(r in PHI_READERS for r in self.roles)


class AuthError(Exception):
    pass


def mint_token(secret: str, *, subject: str, org: str, roles: list[str] | tuple[str, ...],
               ttl_seconds: int = 12 * 3600, issuer: str = "lifeline") -> str:
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
    if ttl_seconds > MAX_TOKEN_TTL_SECONDS:
        raise ValueError(f"a token lives at most {MAX_TOKEN_TTL_SECONDS // 3600} hours")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "org": org, "roles": list(roles), "iss": issuer,
                              "iat": now, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str, issuer: str = "lifeline") -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=issuer,
                            options={"require": ["sub", "exp", "iss"]})
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    roles = claims.get("roles")
    org = claims.get("org")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not isinstance(org, str):
        raise AuthError("invalid token: roles and org claims are required")
    exp, iat = claims["exp"], claims.get("iat")
    if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > MAX_TOKEN_TTL_SECONDS:
        raise AuthError(f"invalid token: lifetime over the maximum of {MAX_TOKEN_TTL_SECONDS // 3600} hours")
    jti = claims.get("jti")
    return Principal(str(claims["sub"]), org, tuple(roles), jti=str(jti) if jti else None, expires_at=exp)


def new_api_key() -> str:
    return "llk_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def approval_token(request: Any, user: Principal) -> str:
    """The API's own credential for a REST approval: a short-lived token for the caller, which the workflow verifies
    like any other (the caller already passed the route's oncall guard)."""
    settings = request.app.state.settings
    roles = [r for r in user.roles if r in ROLES]
    return mint_token(settings.jwt_secret.get_secret_value(), subject=user.subject, org=user.org, roles=roles,
                      ttl_seconds=3600, issuer=settings.jwt_issuer)
