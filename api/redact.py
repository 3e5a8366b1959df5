"""What a role that may not read PHI sees of texts that can carry it: peer answers, delivery errors, dead-letter
reasons. A peer's ERR text or an HTTP OperationOutcome often quotes the message ("patient DOE^JOHN not found")."""

from __future__ import annotations

import re
from typing import Any

from api.auth import Principal

# Dict keys whose string values may quote a message or a peer's answer about it.
PHI_TEXT_KEYS = frozenset({"peer_answer", "last_error", "error", "reason"})
REDACTED = "[redacted: operator or admin role reads peer texts]"
# The structured head of an answer: ACK code and table 0357 error codes, or an HTTP status (what diagnosis keys on).
_HEAD = re.compile(r"\b(?:(?:AA|AE|AR|CA|CE|CR)(?: ERR [0-9,]+)?|HTTP [0-9]{3})\b")
_OWN_PREFIX = re.compile(r"^[A-Za-z _-]{1,60}(?=:)")


def redact_text(text: str) -> str:
    """Keep the ACK / HTTP head (or our own 'prefix:') of a text and drop what a peer wrote about the message."""
    if not text:
        return text
    head = _HEAD.search(text)
    if head is not None:
        return text if head.end() == len(text) else f"{text[:head.end()]} {REDACTED}"
    own = _OWN_PREFIX.match(text)
    return f"{own.group(0)}: {REDACTED}" if own else REDACTED


def redact(value: Any, keys: frozenset[str] = PHI_TEXT_KEYS) -> Any:
    """A copy of a JSON-like value with every string under one of `keys` redacted."""
    if isinstance(value, dict):
        return {k: (redact_text(v) if k in keys and isinstance(v, str) else redact(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, keys) for v in value]
    return value


def for_user(value: Any, user: Principal, keys: frozenset[str] = PHI_TEXT_KEYS) -> Any:
    """The value as is for PHI readers (operator, admin), redacted for everyone else."""
    return value if user.can_read_phi else redact(value, keys)
