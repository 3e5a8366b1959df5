"""The accept path: validate, store and commit (through infra.store.messages), then build the ACK."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infra import tracing
from infra.config import Channel
from infra.crypto import Cipher
from infra.store import messages
from infra.store.audit import append as audit  # the audit entry point activities, routes and commands use
from infra.store.messages import OUTBOX_CHANNEL
from interop.intake import prepare_inbound
from interop.message import Limits, Message

if TYPE_CHECKING:
    from infra.store import Db

__all__ = ["DEFAULT_LIMITS", "OUTBOX_CHANNEL", "AcceptResult", "accept", "audit", "load_body", "new_id"]

log = logging.getLogger("lifeline.store")

# The default per-message limits (Settings.message_limits() gives the configured ones).
DEFAULT_LIMITS = Limits()
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32; sortable and unique."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass
class AcceptResult:
    message_id: str
    status: str  # accepted | rejected
    ack: str
    ack_code: str
    duplicate: bool = False
    findings: list[dict[str, Any]] = field(default_factory=list)


async def accept(pool: Db, cipher: Cipher, channel: Channel, raw: bytes | str, *,
                 source: str = "mllp", peer: str | None = None, limits: Limits = DEFAULT_LIMITS) -> AcceptResult:
    """Validate, store and commit one inbound message, then build its ACK (invariants 1-3).

    A malformed message is stored too (status rejected) and answered AR/AE; a resend of an accepted
    message (same sender, control id and content) gets AA again and is not stored twice. Parsing and
    validation run in a worker thread so a large message never stalls the event loop.
    """
    inbound = await asyncio.to_thread(prepare_inbound, raw, channel.validation, limits)
    message_id = new_id()
    if inbound.status == "rejected":
        await _insert(pool, cipher, message_id, channel, inbound.message, inbound.body, inbound.content_hash,
                      "rejected", inbound.findings, inbound.ack_code, source, peer)
        log.info("rejected message %s on channel %s: %s", message_id, channel.name,
                 ",".join(sorted({f["code"] for f in inbound.findings if f["severity"] == "error"})))
        return AcceptResult(message_id, "rejected", inbound.ack, inbound.ack_code, findings=inbound.findings)
    stored_id = await _insert(pool, cipher, message_id, channel, inbound.message, inbound.body,
                              inbound.content_hash, "accepted", inbound.findings, "AA", source, peer)
    return AcceptResult(stored_id, "accepted", inbound.ack, "AA", duplicate=stored_id != message_id,
                        findings=inbound.findings)


async def _insert(pool: Db, cipher: Cipher, message_id: str, channel: Channel, message: Message | None,
                  body: str, content_hash: bytes, status: str, findings: list[dict[str, Any]], ack_code: str,
                  source: str, peer: str | None) -> str:
    m = message
    values = (
        message_id, channel.org, channel.name, status,
        m.message_type if m else "", m.message_code if m else "", m.trigger_event if m else "",
        m.control_id if m else "", m.version if m else "",
        m.sending_application if m else "", m.sending_facility if m else "",
        content_hash, len(body.encode()), cipher.key_id,
        cipher.encrypt(body.encode(), aad=message_id.encode()), findings, ack_code, source, peer,
    )
    stored = await messages.insert_message(pool, channel.org, values, trace_context=tracing.current_context())
    if stored is not None:
        return stored
    existing = await messages.find_resend(pool, channel.org, channel.name, values[9], values[10], values[7],
                                          content_hash)
    log.info("resend of message %s on channel %s acknowledged again", existing, channel.name)
    return str(existing)


async def load_body(pool: Db, cipher: Cipher, message_id: str, org: str) -> str | None:
    """Decrypt a stored message of an org; None when it does not exist."""
    row = await messages.load_body_row(pool, org, message_id)
    if row is None:
        return None
    return cipher.decrypt(row["body_enc"], row["key_id"], aad=message_id.encode()).decode()
