"""Finding 4 (PHI visible to viewers): lanes store a keyed hash of PID-3.1, findings name the place and the rule
but never the value, and peer answers / delivery errors / dead-letter reasons reach only PHI readers in full."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from activities.store import accept
from api.app import create_app
from api.auth import mint_token
from api.redact import REDACTED, redact_text
from infra.config import EXAMPLE_CONFIG, load_config, validate_config
from infra.crypto import Cipher
from interop.message import parse
from interop.validate import validate
from tests.conftest import TEST_JWT_SECRET, make_settings
from workers.dispatcher import lane_of

MRN, DOB, SEX = "MRNCANARY4711", "1980DOBCANARY", "QZX"
MESSAGE = (f"MSH|^~\\&|EHR|HOSP|LAB|LAB|20240101120000||ADT^A08^ADT_A01|C1|P|2.5.1\r"
           f"EVN|A08|20240101120000\rPID|1||{MRN}^^^HOSP^MR||DOE^JANE||{DOB}|{SEX}\rPV1|1|I\r")
PEER_TEXT = f"patient {MRN} DOE^JANE unknown"


def test_findings_name_place_and_rule_never_the_value() -> None:
    report = validate(MESSAGE.replace("|A08|", "|A08|"), "strict")
    texts = [f.text for f in report.findings]
    assert any("PID-7" in t and "date" in t for t in texts), texts
    assert any("PID-8" in t and "table" in t for t in texts), texts
    for text in texts:
        assert DOB not in text and SEX not in text and MRN not in text, text


def test_lane_is_a_keyed_hash_of_the_key_value() -> None:
    config = validate_config({"destinations": [{"name": "lab", "mllp": {"host": "h", "port": 1},
                                                "ordering": {"key": "PID-3.1"}}]}, "t")
    dest = config.destinations[0]
    message = parse(MESSAGE)
    lane = lane_of(dest, message, b"k" * 32)
    assert lane and MRN not in lane and len(lane) == 32
    assert lane == lane_of(dest, parse(MESSAGE.replace("C1", "C2")), b"k" * 32)  # same patient, same lane
    assert lane != lane_of(dest, message, b"j" * 32)  # keyed: not a plain hash anyone can recompute
    assert lane != lane_of(dest, parse(MESSAGE.replace(MRN, "OTHER")), b"k" * 32)


@pytest.mark.parametrize(("text", "kept"), [
    (f"AE ERR 207 {PEER_TEXT}", "AE ERR 207"),
    (f"peer rejected the message (AR ERR 101 {PEER_TEXT})", "peer rejected the message (AR ERR 101"),
    (f"HTTP 422 OperationOutcome: {PEER_TEXT}", "HTTP 422"),
    (f"cannot render for fhir: PID-7 {PEER_TEXT}", "cannot render for fhir"),
    (PEER_TEXT, ""),
])
def test_redacted_text_keeps_the_codes_and_drops_the_peer_words(text: str, kept: str) -> None:
    out = redact_text(text)
    assert out.startswith(kept) and MRN not in out and REDACTED in out
    assert redact_text("AA") == "AA" and redact_text("HTTP 201") == "HTTP 201"


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(make_settings(database_url=db_url), load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


def _as(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject=role, org='default', roles=[role])}"}


async def test_peer_texts_reach_only_phi_readers(api: httpx.AsyncClient, app_pool: asyncpg.Pool,
                                                 superuser_pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    channel = load_config(EXAMPLE_CONFIG).channels[0]
    result = await accept(app_pool, store_cipher, channel, MESSAGE)
    pool = superuser_pool  # seeds the delivery rows the engine would have written
    mid = result.message_id
    answer, error = f"AR ERR 207 {PEER_TEXT}", f"peer rejected the message (AR ERR 207 {PEER_TEXT})"
    await pool.execute("insert into deliveries (message_id, destination, org_id, seq, workflow_id, status, last_error,"
                       " peer_answer) values ($1, 'lab', 'default', 1, 'w', 'dead_lettered', $2, $3)",
                       mid, error, answer)
    await pool.execute("insert into delivery_attempts (message_id, destination, org_id, attempt, outcome, error_class,"
                       " error, peer_answer) values ($1, 'lab', 'default', 1, 'permanent', 'ack_reject', $2, $3)",
                       mid, error, answer)
    await pool.execute("insert into dead_letters (org_id, message_id, destination, error_type, reason, attempts)"
                       " values ('default', $1, 'lab', 'PermanentReject', $2, $3)", mid, error,
                       [{"attempt": 1, "error": error, "peer_answer": answer}])
    for path in (f"/api/messages/{mid}", "/api/dead-letters"):
        viewer = await api.get(path, headers=_as("viewer"))
        assert viewer.status_code == 200, viewer.text
        assert MRN not in viewer.text and "DOE^JANE" not in viewer.text, viewer.text
        assert "AR ERR 207" in viewer.text  # the codes stay: a viewer still sees what kind of failure it was
        operator = await api.get(path, headers=_as("operator"))
        assert PEER_TEXT in json.dumps(operator.json()), operator.text
