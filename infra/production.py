"""What `LIFELINE_ENVIRONMENT=production` refuses: weak or placeholder secrets, shared keys, a plain-http public URL,
and plaintext MLLP listeners that do not say `tls: off` (see docs/security.md)."""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.config import LifelineConfig
    from infra.settings import Settings

# Words the shipped examples (.env.example, k8s/secret.yaml, README) use for values that must be replaced.
PLACEHOLDER_WORDS = ("fake", "change-me", "changeme", "change_me", "replace", "example", "placeholder", "secret-here",
                     "your-", "todo", "xxxx", "test-secret", "password")
MIN_SECRET_BITS = 128


def estimated_bits(secret: str) -> float:
    """Shannon estimate of a secret's entropy: its length times the entropy of its own character distribution."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    n = len(secret)
    per_char = -sum(c / n * math.log2(c / n) for c in counts.values())
    return per_char * n


def secret_problem(secret: str) -> str | None:
    """Why a text secret (the JWT secret) is not fit for production, or None."""
    lowered = secret.lower()
    word = next((w for w in PLACEHOLDER_WORDS if w in lowered), None)
    if word is not None:
        return f"looks like a placeholder (contains {word!r}); generate one: python -c \"import secrets;" \
               "print(secrets.token_urlsafe(48))\""
    if len(set(secret)) < 12 or estimated_bits(secret) < MIN_SECRET_BITS:
        return f"has too little entropy (about {estimated_bits(secret):.0f} bits, {MIN_SECRET_BITS} needed)"
    return None


def key_problem(value: str) -> str | None:
    """Why a base64 AES key is not fit for production (a repeated or patterned byte string), or None."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return "is not base64"
    if len(set(raw)) < 16:  # 32 random bytes have about 30 distinct values
        return "is not random (too few distinct bytes); generate one: python -c \"import os,base64;" \
               "print(base64.urlsafe_b64encode(os.urandom(32)).decode())\""
    return None


def settings_problems(settings: Settings) -> list[tuple[str, str]]:
    """(environment variable, reason) for each production rule the settings break."""
    problems: list[tuple[str, str]] = []
    jwt = settings.jwt_secret.get_secret_value()
    reason = secret_problem(jwt)
    if reason:
        problems.append(("LIFELINE_JWT_SECRET", reason))
    keys = {name: getattr(settings, name).get_secret_value() for name in ("store_key", "codec_key")}
    for name, value in keys.items():
        reason = key_problem(value)
        if reason:
            problems.append((f"LIFELINE_{name.upper()}", reason))
    audit_key = settings.audit_key.get_secret_value()
    if audit_key:
        reason = key_problem(audit_key)
        if reason:
            problems.append(("LIFELINE_AUDIT_KEY", reason))
        elif audit_key in keys.values():
            problems.append(("LIFELINE_AUDIT_KEY", "must differ from the store and codec keys (one key per purpose)"))
    if keys["store_key"] and keys["store_key"] == keys["codec_key"]:
        problems.append(("LIFELINE_CODEC_KEY", "must differ from LIFELINE_STORE_KEY (one key per purpose)"))
    if jwt and jwt in keys.values():
        problems.append(("LIFELINE_JWT_SECRET", "must differ from the store and codec keys"))
    if not settings.public_url.lower().startswith("https://"):
        problems.append(("LIFELINE_PUBLIC_URL", f"must be an https:// URL in production (the session cookie is "
                                                f"Secure), not {settings.public_url!r}"))
    return problems


def config_problems(config: LifelineConfig) -> list[tuple[str, str]]:
    """(key path, reason) for each MLLP listener that would accept PHI in plain text without saying so."""
    problems: list[tuple[str, str]] = []
    for i, channel in enumerate(config.channels):
        if channel.mllp is not None and channel.mllp.tls is None:
            problems.append((f"channels[{i}].mllp.tls",
                             f"channel {channel.name!r} listens without TLS: give tls: {{cert, key}} or say tls: off "
                             "explicitly (for a listener behind a TLS-terminating proxy or on a private link)"))
    return problems


def plaintext_channels(config: LifelineConfig) -> list[str]:
    """Channels whose MLLP listener is explicitly plaintext (`tls: off`)."""
    return [c.name for c in config.channels if c.mllp is not None and c.mllp.tls is False]
