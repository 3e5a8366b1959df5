"""Diagnosis against real PostgreSQL: signatures from seeded delivery attempts, the learning loop, the case record."""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import pytest

from activities.diagnostics import DiagnosticsActivities, rank_actions
from activities.engines.base import EngineChannel
from activities.remediation import destination_metrics
from infra.config import LifelineConfig
from workflows.contract import (
    CaseState,
    DiagnoseInput,
    Diagnosis,
    Evidence,
    RecordCaseInput,
    RecordResolutionInput,
)

_ids = itertools.count(1)


async def seed(pool: asyncpg.Pool, dest: str, error_class: str | None, n: int = 5, *, peer_answer: str | None = None,
               outcome: str = "retryable", status: str = "started", delivered: int = 0, org: str = "default",
               channel: str = "adt-in") -> None:
    """n deliveries to dest, each with one failed attempt of error_class (plus `delivered` successful ones)."""
    for i in range(n + delivered):
        mid = f"M{next(_ids):012d}"
        ok = i >= n
        await pool.execute(
            "insert into messages (id, org_id, channel, status, content_hash, size_bytes, key_id, body_enc, ack_code)"
            " values ($1, $2, $3, 'routed', $4, 1, 'k1', '\\x00', 'AA')", mid, org, channel, mid.encode())
        seq = await pool.fetchval("select seq from messages where id = $1", mid)
        await pool.execute(
            "insert into deliveries (message_id, destination, org_id, seq, status, workflow_id, first_attempt_at,"
            " latency_ms, finished_at) values ($1, $2, $3, $4, $5, $6, now(), $7, $8)",
            mid, dest, org, seq, "delivered" if ok else status, f"delivery:{mid}:{dest}",
            40 if ok else None, None if not ok else await pool.fetchval("select now()"))
        await pool.execute(
            "insert into delivery_attempts (message_id, destination, org_id, attempt, outcome, error_class, error,"
            " peer_answer, duration_ms) values ($1, $2, $3, 1, $4, $5, $6, $7, 20)",
            mid, dest, org, "delivered" if ok else outcome, None if ok else error_class,
            None if ok else f"{error_class} failure", "AA" if ok else peer_answer)


@pytest.fixture
def diag(pool: asyncpg.Pool) -> DiagnosticsActivities:
    return DiagnosticsActivities(pool, LifelineConfig())


async def diagnose(d: DiagnosticsActivities, kind: str, subject: str, *evidence: Evidence) -> Diagnosis:
    return await d.diagnose(DiagnoseInput(kind, subject, "default", list(evidence)))


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("refused", {}, "destination_down", "refused"),
    ("reset", {}, "destination_down", "reset"),
    ("timeout", {}, "destination_down", "timeout"),
    ("tls", {}, "destination_down", "tls"),
    ("dns", {}, "destination_down", "dns"),
    ("ack_error", {"peer_answer": "AE ERR 207 application internal error"}, "destination_rejecting",
     "ack_error:207"),
    ("ack_reject", {"peer_answer": "AR ERR 101 required field missing", "outcome": "permanent"},
     "destination_rejecting", "ack_reject:101"),
    ("http_4xx", {"peer_answer": "HTTP 422 OperationOutcome: error/invalid: Patient.birthDate bad",
                  "outcome": "permanent"}, "destination_rejecting", "http_4xx:422"),
    ("http_5xx", {"peer_answer": "HTTP 503"}, "destination_down", "http_5xx:503"),
    ("http_throttled", {"peer_answer": "HTTP 429"}, "destination_down", "http_throttled"),
    ("render", {"outcome": "permanent"}, "destination_rejecting", "render"),
    ("bad_ack", {}, "destination_down", "protocol"),
]


async def test_signatures_from_delivery_attempts(pool: asyncpg.Pool, diag: DiagnosticsActivities) -> None:
    for i, (error_class, kw, kind, want) in enumerate(CASES):
        dest = f"d{i}"
        await seed(pool, dest, error_class, 5, **kw)
        await seed(pool, dest, "timeout", 1)  # noise: the dominant class wins
        d = await diagnose(diag, kind, f"destination:{dest}")
        assert d.signature == want, (error_class, d)
        assert 0.5 < d.confidence <= 1.0 and d.evidence and d.onset_at
        assert d.actions and all(a.params["destination"] == dest for a in d.actions)
        assert not any("Patient.birthDate" in line for line in d.evidence)  # codes only, never error texts
    http = await diagnose(diag, "destination_rejecting", "destination:d7")
    assert "error/invalid" in http.root_cause and any("OperationOutcome" in line for line in http.evidence)


async def test_engine_state_latency_paused_and_malformed(pool: asyncpg.Pool) -> None:
    class Adapter:
        kind = "mirth"
        capabilities = frozenset({"start", "stop"})

        def __init__(self, state: str) -> None:
            self.state = state

        async def channel_status(self, channel_id: str) -> EngineChannel:
            return EngineChannel(channel_id, "ADT", self.state, self.state.upper(), queued=3)  # type: ignore[arg-type]

    for state, want in (("stopped", "engine:STOPPED"), ("paused", "engine:PAUSED"), ("error", "engine:ERROR")):
        d = DiagnosticsActivities(pool, LifelineConfig(), {"m1": Adapter(state)})  # type: ignore[dict-item]
        got = await diagnose(d, "engine_channel_stopped", "engine:m1:abc")
        assert got.signature == want and got.actions[0].action == "restart_engine_channel"
        assert got.actions[0].params == {"engine": "m1", "channel": "abc"}
    d = DiagnosticsActivities(pool, LifelineConfig(), {"m1": Adapter("started")})  # type: ignore[dict-item]
    got = await diagnose(d, "engine_queue_growing", "engine:m1:abc")
    assert got.signature == "engine:queue_growing"
    assert [a.action for a in got.actions] == ["restart_engine_channel", "clear_queue"]
    assert got.actions[1].safety == "destructive"

    diag = DiagnosticsActivities(pool, LifelineConfig())
    # Latency: slow sends dominate.
    await seed(pool, "slow", None, 0, delivered=4)
    await pool.execute("update delivery_attempts set duration_ms = 9000 where destination = 'slow'")
    got = await diagnose(diag, "latency_degraded", "destination:slow")
    assert got.signature == "latency:send" and got.bottleneck == "send"
    # Latency: routing lag dominates (deliveries created long after the message was received).
    await seed(pool, "lag", None, 0, delivered=4)
    await pool.execute("update messages set received_at = now() - interval '20 seconds' where id in"
                       " (select message_id from deliveries where destination = 'lag')")
    await pool.execute("update deliveries set latency_ms = 20000 where destination = 'lag'")
    got = await diagnose(diag, "latency_degraded", "destination:lag")
    assert got.bottleneck == "dispatch", got

    await pool.execute("insert into destination_state (org_id, destination, paused) values ('default', 'p', true)")
    got = await diagnose(diag, "backlog", "destination:p")
    assert got.signature == "paused" and [a.action for a in got.actions] == ["resume_destination"]

    await pool.execute(
        "insert into messages (id, org_id, channel, status, content_hash, size_bytes, key_id, body_enc, ack_code,"
        " findings) select 'R' || g, 'default', 'lab-in', 'rejected', ('R' || g)::bytea, 1, 'k1', '\\x00', 'AR',"
        " '[{\"code\": \"101\", \"severity\": \"error\"}]'::jsonb from generate_series(1, 6) g")
    got = await diagnose(diag, "malformed_burst", "channel:lab-in")
    assert got.signature == "malformed:101" and got.actions == []

    got = await diagnose(diag, "manual", "something:else", Evidence("manual", "x", "", "by hand", signature="dns"))
    assert got.signature == "dns"


async def test_learning_loop_ranks_past_success_first(pool: asyncpg.Pool, diag: DiagnosticsActivities) -> None:
    await seed(pool, "lab", "refused", 6)
    first = await diagnose(diag, "destination_down", "destination:lab")
    assert [a.action for a in first.actions] == ["reconnect", "hold_breaker", "replay_dead_letters",
                                                 "pause_destination"]
    await diag.record_resolution(RecordResolutionInput("default", "refused", "reconnect", False))
    await diag.record_resolution(RecordResolutionInput("default", "refused", "pause_destination", True))
    await diag.record_resolution(RecordResolutionInput("default", "refused", "pause_destination", True))
    again = await diagnose(diag, "destination_down", "destination:lab")
    assert [a.action for a in again.actions] == ["pause_destination", "hold_breaker", "replay_dead_letters",
                                                 "reconnect"]
    assert again.actions[0].score == 0.75
    row = await pool.fetchrow("select successes, failures from resolutions where signature = 'refused'"
                              " and action = 'pause_destination'")
    assert (row["successes"], row["failures"]) == (2, 0)
    # Another org's history does not leak into this one.
    other = await diag.diagnose(DiagnoseInput("destination_down", "destination:lab", "acme", []))
    assert other.actions == [] or other.actions[0].action != "pause_destination"
    # Ties keep the built-in order; an action learned outside the defaults joins the ranking.
    ranked = rank_actions("refused", {"retry_now": (3, 0)}, {"destination": "lab"})
    assert [a.action for a in ranked][:2] == ["retry_now", "reconnect"]


async def test_record_case_upserts_and_audits(pool: asyncpg.Pool, diag: DiagnosticsActivities) -> None:
    state = CaseState("case:destination_down:destination:lab", "destination_down", "destination:lab",
                      stage="detected", opened_at="2024-05-01T10:00:00+00:00", org_id="default",
                      evidence=[Evidence("destination_down", "destination:lab", "2024-05-01T09:59:00+00:00", "x")],
                      evidence_count=1)
    await diag.record_case(RecordCaseInput(state, "case.open", "monitor"))
    state.stage, state.diagnosis = "resolved", Diagnosis("refused", "down", 0.9, onset_at="2024-05-01T09:58:00+00:00")
    state.mttd_s, state.mttr_s, state.approver = 120.0, 30.0, "alice"
    state.attempts = [{"action": "reconnect", "outcome": "verified", "by": "alice"}]
    await diag.record_case(RecordCaseInput(state, "case.resolved", "alice"))
    rows = await pool.fetch("select * from cases")
    assert len(rows) == 1
    r = rows[0]
    assert (r["stage"], r["signature"], r["mttd_ms"], r["mttr_ms"], r["approver"], r["action"]) == (
        "resolved", "refused", 120000, 30000, "alice", "reconnect")
    assert r["diagnosis"]["signature"] == "refused" and r["first_evidence_at"] is not None
    acts = [a["action"] for a in await pool.fetch("select action from audit_log order by id")]
    assert acts == ["case.open", "case.resolved"]


async def test_measure_counts_since(pool: asyncpg.Pool) -> None:
    await seed(pool, "m", "refused", 3)
    now = await pool.fetchval("select now()")
    m = await destination_metrics(pool, "default", "m", now)
    assert m["backlog"] == 3 and m["connection_failures"] == 0
    m = await destination_metrics(pool, "default", "m", now.replace(year=2000))
    assert m["connection_failures"] == 3 and m["failures"] == 3
