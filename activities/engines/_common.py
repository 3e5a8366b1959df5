"""Helpers shared by the HTTP engine adapters: credentials from the environment, session cookies, error mapping."""

from __future__ import annotations

import os
from collections.abc import Iterable

import httpx

from activities.engines.base import EngineAuthError, EngineChannel, EngineError
from infra.config import Engine


def credentials(engine: Engine) -> tuple[str, str]:
    """Username and password from the environment variables the engine's config names (never from the file)."""
    values = []
    for attr in ("username_env", "password_env"):
        var = getattr(engine, attr)
        if not var:
            raise EngineAuthError(f"engine {engine.name}: {attr} is not set in lifeline.yaml")
        value = os.environ.get(var)
        if value is None:
            raise EngineAuthError(f"engine {engine.name}: environment variable {var} is not set")
        values.append(value)
    return values[0], values[1]


def session_cookie(resp: httpx.Response, name: str = "JSESSIONID") -> str | None:
    """The session id a response sets, read from Set-Cookie whatever its Secure/Path flags say."""
    for header in resp.headers.get_list("set-cookie"):
        first = header.split(";", 1)[0]
        key, _, value = first.partition("=")
        if key.strip() == name and value.strip():
            return value.strip()
    return None


def transport_error(engine: Engine, exc: httpx.HTTPError) -> EngineError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
    return EngineError(f"engine {engine.name} {kind}: {type(exc).__name__}: {exc}")


def short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def watched(engine: Engine, channels: Iterable[EngineChannel]) -> list[EngineChannel]:
    """Only the channels the config lists (by id or name); all when it lists none."""
    wanted = set(engine.channels)
    return [c for c in channels if not wanted or c.id in wanted or c.name in wanted]
