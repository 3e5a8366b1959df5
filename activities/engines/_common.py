"""Helpers shared by the HTTP engine adapters: credentials from the environment, session cookies, error mapping."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import quote

import httpx

from activities.engines.base import EngineAuthError, EngineChannel, EngineError, EngineNotFound
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


# Engine object ids (Mirth UUIDs, Rhapsody numbers, Cloverleaf process/thread names) and the channel names
# lifeline.yaml may use: letters, digits and a few punctuation marks; never a path separator or a dot segment.
_ENGINE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@ -]{0,199}")


def valid_id(value: str) -> bool:
    """True when an id may be placed in an engine URL or command (the allow-list above, no '..')."""
    return bool(_ENGINE_ID.fullmatch(value)) and ".." not in value


def checked_id(engine: Engine, value: str, what: str = "channel id") -> str:
    """The id itself, or EngineNotFound: an id outside the allow-list reaches nothing on the engine."""
    if not valid_id(value):
        raise EngineNotFound(f"{engine.kind} {engine.name}: {short(repr(value), 80)} is not a valid {what} "
                             "(letters, digits, space and _ . @ - only)")
    return value


def segment(engine: Engine, value: str, what: str = "channel id") -> str:
    """One URL path segment: allow-listed, then percent-quoted (nothing stays special, not even '/')."""
    return quote(checked_id(engine, value, what), safe="")
