"""The accept path: stored encrypted and committed before AA; malformed stored as rejected with AR/AE+ERR;
a resend is acknowledged again and stored once."""

from __future__ import annotations

import asyncpg

from activities.store import accept, load_body
from infra.config import validate_config
from infra.crypto import Cipher
from interop.ack import parse_ack
from tests.delivery.harness import adt

CHANNEL = validate_config({"channels": [{"name": "adt-in"}]}, "t").channels[0]
STRICT = validate_config({"channels": [{"name": "strict-in", "validation": "strict"}]}, "t").channels[0]


async def test_accepted_message_is_committed_encrypted_and_acked(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    text = adt("CTRL1", "MRN123", name="SMITH^ALICE")
    result = await accept(pool, store_cipher, CHANNEL, text.encode())
    assert result.status == "accepted" and result.ack_code == "AA" and not result.duplicate
    ack = parse_ack(result.ack)
    assert ack.code == "AA" and ack.control_id == "CTRL1"
    row = await pool.fetchrow("select * from messages where id = $1", result.message_id)
    assert row["status"] == "accepted" and row["message_type"] == "ADT^A08" and row["control_id"] == "CTRL1"
    assert b"SMITH" not in row["body_enc"] and b"MRN123" not in row["body_enc"]
    assert await load_body(pool, store_cipher, result.message_id, "default") == text


async def test_resend_is_acked_again_and_stored_once(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    text = adt("CTRL2", "MRN1")
    first = await accept(pool, store_cipher, CHANNEL, text)
    again = await accept(pool, store_cipher, CHANNEL, text)
    assert again.duplicate and again.message_id == first.message_id and again.ack_code == "AA"
    assert await pool.fetchval("select count(*) from messages where control_id = 'CTRL2'") == 1
    # Same control id, different content: a different message (stored, not deduplicated).
    changed = await accept(pool, store_cipher, CHANNEL, adt("CTRL2", "MRN2"))
    assert not changed.duplicate and changed.message_id != first.message_id


async def test_unparseable_input_is_stored_rejected_and_answered_ar(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    result = await accept(pool, store_cipher, CHANNEL, b"this is not HL7 at all")
    assert result.status == "rejected" and result.ack_code == "AR"
    ack = parse_ack(result.ack)
    assert ack.is_reject and ack.error_texts
    row = await pool.fetchrow("select status, findings, ack_code from messages where id = $1", result.message_id)
    assert row["status"] == "rejected" and row["ack_code"] == "AR" and row["findings"][0]["code"] == "100"
    assert await load_body(pool, store_cipher, result.message_id, "default") == "this is not HL7 at all"


async def test_missing_control_id_is_rejected_with_err_naming_the_field(pool: asyncpg.Pool,
                                                                       store_cipher: Cipher) -> None:
    text = adt("", "MRN1")
    result = await accept(pool, store_cipher, CHANNEL, text)
    assert result.status == "rejected"
    assert any(f["segment"] == "MSH" and f["field"] == 10 for f in result.findings)
    assert "ERR|" in result.ack and "MSH^1^10" in result.ack
    assert await pool.fetchval("select count(*) from messages where id = $1 and status = 'rejected'",
                               result.message_id) == 1
