"""FHIR and webhook destinations against a real (stdlib) HTTP server: 503 + Retry-After then 201 delivers once,
422 + OperationOutcome dead-letters at once with its diagnostics; webhooks carry a verifiable HMAC signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus

from infra.crypto import Cipher
from tests.delivery.harness import (
    Engine,
    HttpHit,
    HttpPeer,
    adt,
    closed_workflow,
    config_for,
    running,
    send_mllp,
    wait_for,
)
from workflows.contract import delivery_workflow_id

RETRY = {"initial_interval": "100ms", "backoff": 1.5, "maximum_interval": "500ms", "maximum_attempts": 5}
OUTCOME = {"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "invalid", "diagnostics": "Patient.birthDate: date in the future"}]}
SECRET = "webhook-secret-0123456789"


def fhir_server(hit: HttpHit, n: int) -> tuple[int, dict[str, str], bytes]:
    if hit.path == "/flaky/fhir":
        if n == 0:
            return 503, {"Retry-After": "1", "Content-Type": "text/plain"}, b"busy"
        return 201, {"Content-Type": "application/fhir+json"}, b'{"resourceType": "Bundle", "type": '\
            b'"transaction-response"}'
    return 422, {"Content-Type": "application/fhir+json"}, json.dumps(OUTCOME).encode()


async def test_fhir_retry_after_then_created_and_unprocessable_dead_letters(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    server = HttpPeer(fhir_server)
    port = server.start()
    config = config_for(1, extra_dests=[
        {"name": "fhir", "fhir": {"base_url": f"http://127.0.0.1:{port}/flaky/fhir"}, "retry": RETRY},
        {"name": "fhir-strict", "fhir": {"base_url": f"http://127.0.0.1:{port}/strict/fhir"}, "retry": RETRY},
    ], routes=[{"to": "fhir"}, {"to": "fhir-strict"}])
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt("F1", "MRNF1", name="FHIR^FRANK")]) == ["AA"]

            async def settled() -> bool:
                return int(await pool.fetchval(
                    "select count(*) from deliveries where status in ('delivered', 'dead_lettered')")) == 2

            await wait_for(settled, timeout=20)
            mid = await pool.fetchval("select id from messages where control_id = 'F1'")
            ok = await closed_workflow(temporal_client, delivery_workflow_id(mid, "fhir"))
            bad = await closed_workflow(temporal_client, delivery_workflow_id(mid, "fhir-strict"))
            assert ok.status == WorkflowExecutionStatus.COMPLETED and bad.status == WorkflowExecutionStatus.FAILED
    finally:
        server.stop()

    flaky = server.on("/flaky/fhir")
    assert len(flaky) == 2  # one 503, one 201: delivered exactly once
    assert flaky[1].at - flaky[0].at >= 0.9  # Retry-After: 1 honoured over the 100ms policy interval
    for hit in flaky:
        bundle = json.loads(hit.body)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        assert hit.headers["content-type"] == "application/fhir+json"
        assert any(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"])
    assert flaky[0].body == flaky[1].body  # the retry sends the same idempotent bundle

    rows = {r["destination"]: r for r in await pool.fetch("select * from deliveries")}
    assert rows["fhir"]["status"] == "delivered" and rows["fhir"]["attempts"] == 2
    assert rows["fhir"]["peer_answer"] == "HTTP 201"
    attempts = await pool.fetch("select outcome, error_class from delivery_attempts where destination = 'fhir'"
                                " order by attempt")
    assert [(a["outcome"], a["error_class"]) for a in attempts] == [("retryable", "http_5xx"), ("delivered", None)]

    assert len(server.on("/strict/fhir")) == 1
    dl = await pool.fetchrow("select * from dead_letters where destination = 'fhir-strict'")
    assert dl is not None and dl["status"] == "open"
    assert "Patient.birthDate: date in the future" in dl["reason"] and "422" in dl["reason"], dl["reason"]
    assert len(dl["attempts"]) == 1 and dl["attempts"][0]["error_class"] == "http_4xx"
    assert rows["fhir-strict"]["status"] == "dead_lettered" and rows["fhir-strict"]["attempts"] == 1
    assert await pool.fetchval("select count(*) from dead_letters") == 1


def webhook_server(hit: HttpHit, n: int) -> tuple[int, dict[str, str], bytes]:
    ts = hit.headers.get("x-lifeline-timestamp", "")
    want = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + hit.body, hashlib.sha256).hexdigest()
    if not ts or not hmac.compare_digest(hit.headers.get("x-lifeline-signature", ""), want):
        return 401, {"Content-Type": "application/json"}, b'{"error": "bad signature"}'
    return 200, {"Content-Type": "application/json"}, b'{"ok": true}'


async def test_webhook_is_signed_and_delivered_once(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    server = HttpPeer(webhook_server)
    port = server.start()
    config = config_for(1, extra_dests=[
        {"name": "hook", "webhook": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}, "retry": RETRY},
        {"name": "hook-wrong", "webhook": {"url": f"http://127.0.0.1:{port}/wrong", "secret": "x" * 24},
         "retry": RETRY},
    ], routes=[{"to": "hook"}, {"to": "hook-wrong"}])
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    text = adt("W1", "MRNW1")
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [text]) == ["AA"]

            async def settled() -> bool:
                return int(await pool.fetchval(
                    "select count(*) from deliveries where status in ('delivered', 'dead_lettered')")) == 2

            await wait_for(settled, timeout=20)
    finally:
        server.stop()

    hits = server.on("/hook")
    assert len(hits) == 1
    payload: dict[str, Any] = json.loads(hits[0].body)
    mid = await pool.fetchval("select id from messages where control_id = 'W1'")
    assert payload["message_id"] == mid and payload["control_id"] == "W1" and payload["destination"] == "hook"
    assert payload["hl7"] == text and payload["message_type"] == "ADT^A08"
    assert hits[0].headers["content-type"] == "application/json"
    rows = {r["destination"]: r for r in await pool.fetch("select * from deliveries")}
    assert rows["hook"]["status"] == "delivered" and rows["hook"]["attempts"] == 1
    # A wrong secret is a permanent 4xx: dead-lettered after one attempt.
    assert len(server.on("/wrong")) == 1 and rows["hook-wrong"]["status"] == "dead_lettered"
    assert "HTTP 401" in await pool.fetchval("select reason from dead_letters where destination = 'hook-wrong'")
