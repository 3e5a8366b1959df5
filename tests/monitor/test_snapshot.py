"""The metrics snapshot against a real PostgreSQL with seeded messages, deliveries and attempts."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import pytest

from activities.engines.base import EngineChannel, EngineError
from activities.metrics import MetricsActivities, hour_buckets, reject_signature
from activities.store import accept
from infra.config import Engine, LifelineConfig, validate_config
from infra.crypto import Cipher
from tests.delivery.harness import adt
from workers.monitor import thresholds_from
from workflows.contract import DestinationMetrics, Snapshot, SnapshotInput
from workflows.detectors import detect

CONFIG = validate_config({
    "channels": [{"name": "adt-in", "routes": [{"to": "lab"}]}],
    "destinations": [
        {"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}, "ordering": {"key": "PID-3.1"}},
        {"name": "down", "mllp": {"host": "127.0.0.1", "port": 2601}},
        {"name": "rej", "webhook": {"url": "http://127.0.0.1:9/h", "secret": "s" * 16}},
    ],
    "engines": [{"name": "eng1", "kind": "lifeline"}, {"name": "eng2", "kind": "lifeline", "channels": ["x"]}],
}, "test")


@dataclass
class FakeAdapter:
    channels: list[EngineChannel] = field(default_factory=list)
    fail: str = ""
    kind: str = "lifeline"
    capabilities: frozenset[str] = frozenset()

    async def list_channels(self) -> list[EngineChannel]:
        if self.fail:
            raise EngineError(self.fail)
        return list(self.channels)

    async def close(self) -> None:
        pass


async def delivery(pool: asyncpg.Pool, mid: str, dest: str, status: str, *, lane: str | None = None,
                   age_s: float = 0, finished_ago: float | None = None, latency: int | None = None) -> None:
    await pool.execute(
        "insert into deliveries (message_id, destination, org_id, seq, lane, status, workflow_id, created_at,"
        " finished_at, latency_ms)"
        " select id, $2, org_id, seq, $3, $4, 'wf-' || id, now() - make_interval(secs => $5),"
        " case when $6::float8 is null then null else now() - make_interval(secs => $6) end, $7"
        " from messages where id = $1", mid, dest, lane, status, age_s, finished_ago, latency)


async def attempt(pool: asyncpg.Pool, mid: str, dest: str, ago_s: float, outcome: str, error_class: str | None = None,
                  peer_answer: str | None = None, duration: int = 0) -> None:
    await pool.execute(
        "insert into delivery_attempts (message_id, destination, org_id, attempt, at, outcome, error_class,"
        " peer_answer, duration_ms) values ($1, $2, 'default', 1, now() - make_interval(secs => $3), $4, $5, $6, $7)",
        mid, dest, ago_s, outcome, error_class, peer_answer, duration)


@pytest.fixture
async def seeded(pool: asyncpg.Pool, store_cipher: Cipher) -> list[str]:
    channel = CONFIG.channels[0]
    ids = [(await accept(pool, store_cipher, channel, adt(f"C{i}", f"MRN{i}"))).message_id for i in range(7)]
    # One accepted message from an hour ago: outside the window.
    await pool.execute("update messages set received_at = now() - interval '1 hour' where id = $1", ids[6])
    for i in range(2):
        bad = adt(f"B{i}", "MRN9").replace("ADT^A08^ADT_A01", "")  # no MSH-9: rejected, code 101
        assert (await accept(pool, store_cipher, channel, bad)).status == "rejected"
    assert (await accept(pool, store_cipher, channel, b"not hl7 at all", peer="10.1.2.3:5555")).status == "rejected"

    # lab: two delivered in the window (one after a refused attempt), a backlog of three, one blocked lane.
    await delivery(pool, ids[0], "lab", "delivered", lane="MRN0", age_s=70, finished_ago=60, latency=100)
    await attempt(pool, ids[0], "lab", 60, "delivered", duration=10)
    await delivery(pool, ids[1], "lab", "delivered", lane="MRN1", age_s=55, finished_ago=40, latency=300)
    await attempt(pool, ids[1], "lab", 50, "retryable", "refused")
    await attempt(pool, ids[1], "lab", 40, "delivered", duration=30)
    await delivery(pool, ids[2], "lab", "pending", lane="MRN2", age_s=120)
    await delivery(pool, ids[3], "lab", "started", lane="MRN3", age_s=10)
    await delivery(pool, ids[4], "lab", "dead_lettered", lane="MRN4", age_s=200, finished_ago=100)
    await pool.execute(
        "insert into deliveries (message_id, destination, org_id, seq, lane, status, workflow_id)"
        " select id, 'lab', org_id, seq, 'MRN4', 'pending', 'wf' from messages where id = $1", ids[5])

    # down: a success an hour ago, then (in the window) an ACK error and three connection failures in a row.
    await delivery(pool, ids[0], "down", "started", age_s=90)
    await attempt(pool, ids[0], "down", 3600, "delivered")
    await attempt(pool, ids[0], "down", 35, "retryable", "ack_error", "AE")
    await attempt(pool, ids[0], "down", 30, "retryable", "refused")
    await attempt(pool, ids[0], "down", 20, "retryable", "timeout")
    await attempt(pool, ids[0], "down", 10, "retryable", "refused")

    # rej: an AR and a 422, one success.
    for i in range(3):
        await delivery(pool, ids[i], "rej", "dead_lettered" if i < 2 else "delivered", age_s=40,
                       finished_ago=10, latency=50)
    await attempt(pool, ids[0], "rej", 30, "permanent", "ack_reject", "AR peer says no")
    await attempt(pool, ids[1], "rej", 20, "permanent", "http_4xx", "HTTP 422 OperationOutcome: error/invalid: x")
    await attempt(pool, ids[2], "rej", 10, "delivered", duration=5)
    return ids


def dest(snap: Snapshot, name: str) -> DestinationMetrics:
    return next(d for d in snap.destinations if d.name == name)


async def test_destination_metrics(pool: asyncpg.Pool, seeded: list[str]) -> None:
    snap = await MetricsActivities(pool, CONFIG).snapshot(SnapshotInput(window_s=300))
    assert snap.observed_at and snap.window_s == 300
    assert [d.name for d in snap.destinations] == ["down", "lab", "rej"]

    lab = dest(snap, "lab")
    assert (lab.backlog, lab.successes, lab.failures, lab.rejects) == (3, 2, 1, 0)
    assert 119 <= lab.oldest_pending_age_s < 180
    assert lab.consecutive_connection_failures == 0  # a success came after the refused attempt
    assert lab.last_error_class == "refused"
    assert lab.latency_samples == 2 and lab.p95_latency_ms == pytest.approx(290)  # of 100 and 300 ms
    assert lab.p95_send_ms == pytest.approx(29)
    assert (lab.lanes_blocked, lab.blocked_waiting) == (1, 1)

    down = dest(snap, "down")
    assert (down.backlog, down.successes, down.failures) == (1, 0, 4)  # the old success is outside the window
    assert down.consecutive_connection_failures == 3  # the AE before them breaks the streak
    assert down.last_error_class == "refused" and down.lanes_blocked == 0

    rej = dest(snap, "rej")
    assert (rej.backlog, rej.successes, rej.failures, rej.rejects) == (0, 1, 2, 2)
    assert rej.reject_signature == "http_4xx:422" and rej.last_error_class == "http_4xx"
    assert rej.consecutive_connection_failures == 0

    thresholds = thresholds_from(CONFIG)
    assert {(e.kind, e.subject) for e in detect(snap, thresholds)} == {
        ("destination_down", "destination:down"), ("lane_blocked", "destination:lab")}
    thresholds.rejecting_min_rejects = 2  # two of three sends rejected
    assert ("destination_rejecting", "destination:rej") in {(e.kind, e.subject) for e in detect(snap, thresholds)}


async def test_window_bounds_the_counts(pool: asyncpg.Pool, seeded: list[str]) -> None:
    snap = await MetricsActivities(pool, CONFIG).snapshot(SnapshotInput(window_s=15))
    lab, down = dest(snap, "lab"), dest(snap, "down")
    assert (lab.successes, lab.failures, lab.latency_samples) == (0, 0, 0)
    assert lab.backlog == 3  # backlog is not windowed
    assert (down.failures, down.consecutive_connection_failures) == (1, 1)


async def test_channel_metrics(pool: asyncpg.Pool, seeded: list[str]) -> None:
    snap = await MetricsActivities(pool, CONFIG).snapshot(SnapshotInput(window_s=300))
    [ch] = snap.channels
    assert (ch.name, ch.org_id, ch.accepted, ch.rejected) == ("adt-in", "default", 6, 3)
    assert ch.accepted_per_min == pytest.approx(6 / 5)
    assert [(s.sender, s.rejected) for s in ch.senders] == [("EPIC/GENHOSP", 2), ("peer 10.1.2.3", 1)]
    assert ch.senders[0].top_code == "101" and ch.senders[1].top_code == "100"


async def test_ewma_baseline_is_kept_per_hour_bucket(pool: asyncpg.Pool, seeded: list[str]) -> None:
    acts = MetricsActivities(pool, CONFIG)
    first = await acts.snapshot(SnapshotInput(window_s=300))
    # The snapshot reports the baseline before its own observation; the first one has learned nothing.
    assert sorted((b.bucket[:3], b.samples) for b in first.baselines) == [("hod", 0), ("how", 0)]
    rows = await pool.fetch("select bucket, mean, samples from monitor_baselines where channel = 'adt-in'")
    assert sorted(r["bucket"] for r in rows) == sorted(hour_buckets(
        await pool.fetchval("select now()"), "UTC"))
    assert all(r["samples"] == 1 and r["mean"] == pytest.approx(1.2) for r in rows)
    # A second look within half an interval (a retry, a manual run) does not count the observation twice.
    second = await acts.snapshot(SnapshotInput(window_s=300))
    assert all(b.samples == 1 and b.mean == pytest.approx(1.2) for b in second.baselines)
    assert await pool.fetchval("select max(samples) from monitor_baselines") == 1
    # Later observations fold in with alpha.
    await pool.execute("update monitor_baselines set updated_at = now() - interval '1 minute', mean = 10")
    await acts.snapshot(SnapshotInput(window_s=300))
    means = await pool.fetch("select mean, samples from monitor_baselines")
    alpha = CONFIG.monitor.throughput_drop.alpha
    assert all(r["samples"] == 2 and r["mean"] == pytest.approx(10 + alpha * (1.2 - 10)) for r in means)


async def test_engine_channels_deltas_history_and_errors(pool: asyncpg.Pool) -> None:
    good = FakeAdapter([EngineChannel("c-1", "ADT out", "started", "STARTED", queued=1, errors=5),
                        EngineChannel("c-2", "ORU", "stopped", "STOPPED", queued=0, errors=0)])
    bad = FakeAdapter(fail="connect refused by eng2")
    adapters = {"eng1": good, "eng2": bad}

    def provider(engine: Engine) -> FakeAdapter:
        return adapters[engine.name]

    acts = MetricsActivities(pool, CONFIG, provider)  # type: ignore[arg-type]
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    by_id = {(e.engine, e.channel_id): e for e in snap.engine_channels}
    c1 = by_id["eng1", "c-1"]
    assert (c1.state, c1.queued, c1.errors, c1.errors_delta, c1.queued_history) == ("started", 1, 5, 0, [1])
    assert by_id["eng1", "c-2"].state == "stopped"
    x = by_id["eng2", "x"]
    assert x.state == "unknown" and "connect refused by eng2" in x.error

    good.channels[0] = EngineChannel("c-1", "ADT out", "started", "STARTED", queued=4, errors=12)
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    c1 = next(e for e in snap.engine_channels if e.channel_id == "c-1")
    assert (c1.errors_delta, c1.queued_history) == (7, [1, 4])
    # Counters that went down were reset by an engine restart: what they show now is new.
    good.channels[0] = EngineChannel("c-1", "ADT out", "started", "STARTED", queued=6, errors=2)
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    c1 = next(e for e in snap.engine_channels if e.channel_id == "c-1")
    assert (c1.errors_delta, c1.queued_history) == (2, [1, 4, 6])
    assert {(e.kind, e.subject) for e in detect(snap, thresholds_from(CONFIG))} == {
        ("engine_channel_stopped", "engine:eng1:c-2")}


async def test_no_adapters_reports_unknown(pool: asyncpg.Pool) -> None:
    snap = await MetricsActivities(pool, CONFIG).snapshot(SnapshotInput())
    assert {e.state for e in snap.engine_channels} == {"unknown"}
    assert snap.window_s == CONFIG.monitor.window.total_seconds()


def test_reject_signature() -> None:
    assert reject_signature("http_4xx", "HTTP 409 OperationOutcome: error/conflict") == "http_4xx:409"
    assert reject_signature("ack_reject", "AR peer says no") == "ack_reject"


def test_empty_config_snapshot_shape() -> None:
    assert LifelineConfig().monitor.interval.total_seconds() == 5


async def test_shared_adapters_by_engine_name(pool: asyncpg.Pool) -> None:
    shared = {"eng1": FakeAdapter([EngineChannel("c-1", "ADT", "paused", "PAUSED")])}
    snap = await MetricsActivities(pool, CONFIG, shared).snapshot(SnapshotInput())  # type: ignore[arg-type]
    states = {(e.engine, e.channel_id): (e.state, e.error) for e in snap.engine_channels}
    assert states["eng1", "c-1"] == ("paused", "")
    assert states["eng2", "x"][0] == "unknown" and "no adapter for engine eng2" in states["eng2", "x"][1]


async def test_flow_rates_for_the_backlog_forecast(pool: asyncpg.Pool, seeded: list[str]) -> None:
    snap = await MetricsActivities(pool, CONFIG).snapshot(SnapshotInput(window_s=300))
    lab, rej, down = dest(snap, "lab"), dest(snap, "rej"), dest(snap, "down")
    assert lab.rate_span_s == 60.0 == down.rate_span_s  # forecast_span default: 1 minute
    assert lab.arrived_per_s == pytest.approx(3 / 60, abs=1e-3)  # routed 55 s, 10 s and 0 s ago
    assert lab.drained_per_s == pytest.approx(1 / 60, abs=1e-3)  # delivered 40 s ago (the one 60 s ago is out)
    assert (rej.arrived_per_s, rej.drained_per_s) == (pytest.approx(0.05, abs=1e-3), pytest.approx(1 / 60, abs=1e-3))
    assert down.drained_per_s == 0.0


async def test_engine_state_age_follows_one_state(pool: asyncpg.Pool) -> None:
    stuck = FakeAdapter([EngineChannel("c-1", "ADT out", "stopping", "STOPPING")])
    acts = MetricsActivities(pool, CONFIG, lambda engine: stuck)  # type: ignore[arg-type,return-value]
    first = await acts.snapshot(SnapshotInput(window_s=300))
    assert next(e for e in first.engine_channels if e.channel_id == "c-1").state_age_s == 0.0
    # Seen in STOPPING 12 s ago and still there: its age counts from the first sighting.
    await pool.execute("update monitor_engine_stats set state_since = state_since - interval '12 seconds',"
                       " observed_at = observed_at - interval '1 second' where channel_id = 'c-1'")
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    c1 = next(e for e in snap.engine_channels if e.channel_id == "c-1")
    assert 12.0 <= c1.state_age_s < 60
    assert ("engine_channel_stopped", "engine:eng1:c-1", "engine:STOPPING") in {
        (e.kind, e.subject, e.signature) for e in detect(snap, thresholds_from(CONFIG))}
    # A change of state starts the clock again.
    stuck.channels[0] = EngineChannel("c-1", "ADT out", "stopped", "STOPPED")
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    assert next(e for e in snap.engine_channels if e.channel_id == "c-1").state_age_s == 0.0


async def test_send_normal_is_learned_from_healthy_snapshots_only(pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    acts = MetricsActivities(pool, CONFIG)
    for i in range(5):  # five successful 40 ms sends
        mid = (await accept(pool, store_cipher, CONFIG.channels[0], adt(f"N{i}", f"MRN{i}"))).message_id
        await delivery(pool, mid, "lab", "delivered", finished_ago=10, latency=60)
        await attempt(pool, mid, "lab", 10, "delivered", duration=40)
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    lab = next(d for d in snap.destinations if d.name == "lab")
    assert (lab.normal_send_ms, lab.normal_send_samples) == (0.0, 0)  # what it was before this snapshot
    row = await pool.fetchrow("select mean, samples from monitor_baselines where channel = 'destination:lab'"
                              " and bucket = 'send_p95'")
    assert row["samples"] == 1 and row["mean"] == pytest.approx(40.0)
    # The peer turns slow: the slow spell is reported against the normal and not folded into it.
    await pool.execute("update monitor_baselines set updated_at = now() - interval '1 minute'")
    await pool.execute("update delivery_attempts set duration_ms = 5000 where destination = 'lab'")
    snap = await acts.snapshot(SnapshotInput(window_s=300))
    lab = next(d for d in snap.destinations if d.name == "lab")
    assert lab.normal_send_ms == pytest.approx(40.0) and lab.p95_send_ms == pytest.approx(5000.0)
    assert await pool.fetchval("select samples from monitor_baselines where channel = 'destination:lab'") == 1
    assert ("latency_degraded", "destination:lab", "latency:send") in {
        (e.kind, e.subject, e.signature) for e in detect(snap, thresholds_from(CONFIG))}
