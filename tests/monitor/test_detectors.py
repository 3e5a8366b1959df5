"""Detectors: each fires on its snapshot and stays quiet on a healthy one; pure and deterministic."""

from __future__ import annotations

import dataclasses

import pytest

from workflows.contract import (
    CASE_KINDS,
    Baseline,
    ChannelMetrics,
    DestinationMetrics,
    EngineChannelMetrics,
    MonitorThresholds,
    SenderRejects,
    Snapshot,
)
from workflows.detectors import DETECTORS, detect, ewma, pick_baseline

T = MonitorThresholds()
AT = "2026-01-05T10:00:00+00:00"


def healthy() -> Snapshot:
    return Snapshot(
        observed_at=AT, window_s=300,
        destinations=[DestinationMetrics(name="lab", backlog=3, oldest_pending_age_s=1.5, successes=500,
                                         p95_latency_ms=120, p95_send_ms=15, latency_samples=500)],
        channels=[ChannelMetrics(name="adt-in", accepted=500, rejected=2, accepted_per_min=100,
                                 senders=[SenderRejects("EPIC/GENHOSP", 2, "102")])],
        engine_channels=[EngineChannelMetrics(engine="mirth1", channel_id="c-1", name="ADT", state="started",
                                              queued=2, errors=40, errors_delta=1, queued_history=[3, 1, 4, 2])],
        baselines=[Baseline("adt-in", "how:10", 100.0, 500), Baseline("adt-in", "hod:10", 100.0, 500)],
    )


def with_dest(**kw: object) -> Snapshot:
    s = healthy()
    s.destinations[0] = dataclasses.replace(s.destinations[0], **kw)  # type: ignore[arg-type]
    return s


def with_engine(**kw: object) -> Snapshot:
    s = healthy()
    s.engine_channels[0] = dataclasses.replace(s.engine_channels[0], **kw)  # type: ignore[arg-type]
    return s


def kinds(snap: Snapshot, t: MonitorThresholds = T) -> set[tuple[str, str]]:
    return {(e.kind, e.subject) for e in detect(snap, t)}


def test_healthy_snapshot_is_quiet() -> None:
    assert detect(healthy(), T) == []
    assert detect(Snapshot(observed_at=AT), T) == []


@pytest.mark.parametrize(("snap", "kind", "subject", "signature"), [
    (with_dest(consecutive_connection_failures=3, failures=3, successes=0, last_error_class="refused"),
     "destination_down", "destination:lab", "refused"),
    (with_dest(failures=1, successes=0, backlog=1, last_error_class="timeout"),
     "destination_down", "destination:lab", "timeout"),
    (with_dest(rejects=30, failures=30, successes=70, reject_signature="http_4xx:422"),
     "destination_rejecting", "destination:lab", "http_4xx:422"),
    (with_dest(backlog=1001), "backlog", "destination:lab", "slow"),
    (with_dest(oldest_pending_age_s=601), "backlog", "destination:lab", "slow"),
    (with_dest(lanes_blocked=1, blocked_waiting=4, last_error_class="ack_reject"),
     "lane_blocked", "destination:lab", "ack_reject"),
    (with_dest(p95_latency_ms=10001), "latency_degraded", "destination:lab", "latency"),
    (with_engine(state="stopped", raw_state="STOPPED"), "engine_channel_stopped", "engine:mirth1:c-1",
     "engine:STOPPED"),
    (with_engine(state="paused"), "engine_channel_stopped", "engine:mirth1:c-1", "engine:PAUSED"),
    (with_engine(state="error"), "engine_channel_stopped", "engine:mirth1:c-1", "engine:ERROR"),
    (with_engine(errors_delta=11), "engine_channel_erroring", "engine:mirth1:c-1", "engine:ERRORS"),
    (with_engine(queued=9, queued_history=[1, 2, 5, 7, 9]), "engine_queue_growing", "engine:mirth1:c-1",
     "engine:QUEUE_GROWING"),
])
def test_each_detector_fires(snap: Snapshot, kind: str, subject: str, signature: str) -> None:
    found = detect(snap, T)
    assert [(e.kind, e.subject, e.signature) for e in found] == [(kind, subject, signature)]
    ev = found[0]
    assert ev.observed_at == AT and ev.summary and ev.metrics
    assert all(isinstance(v, float) for v in ev.metrics.values())


def test_thresholds_are_edges() -> None:
    assert kinds(with_dest(consecutive_connection_failures=2, failures=2, successes=5)) == set()
    assert kinds(with_dest(backlog=1000, oldest_pending_age_s=600)) == set()
    assert kinds(with_dest(p95_latency_ms=10000)) == set()
    assert kinds(with_dest(p95_latency_ms=20000, latency_samples=9)) == set()  # too few samples to judge
    assert kinds(with_dest(rejects=2, failures=2, successes=0)) == set()  # under min_rejects
    assert kinds(with_dest(rejects=20, failures=20, successes=80)) == set()  # exactly 20%: not over
    assert kinds(with_engine(errors_delta=10)) == set()
    assert kinds(with_engine(queued=9, queued_history=[1, 2, 9])) == set()  # only 3 snapshots of history
    assert kinds(with_engine(queued=9, queued_history=[1, 2, 2, 9])) == set()  # not growing every time


def test_rejecting_destination_is_not_down() -> None:
    # Rejects are permanent answers from a reachable peer: they do not make the destination "down".
    snap = with_dest(rejects=5, failures=5, successes=0, backlog=2, last_error_class="ack_reject",
                     reject_signature="ack_reject")
    assert kinds(snap) == {("destination_rejecting", "destination:lab")}


def test_undeployed_only_when_configured() -> None:
    snap = with_engine(state="undeployed")
    assert detect(snap, T) == []
    t = dataclasses.replace(T, engine_stopped_states=["stopped", "undeployed"])
    assert kinds(snap, t) == {("engine_channel_stopped", "engine:mirth1:c-1")}


def test_unknown_engine_state_is_reported_not_detected() -> None:
    assert detect(with_engine(state="unknown", error="ConnectError: refused"), T) == []


def test_malformed_burst_per_sender() -> None:
    s = healthy()
    s.channels[0].senders = [SenderRejects("EPIC/GENHOSP", 21, "102"), SenderRejects("peer 10.0.0.9", 3, "100")]
    found = detect(s, T)
    assert [(e.kind, e.subject, e.signature) for e in found] == [
        ("malformed_burst", "channel:adt-in", "hl7_error:102")]
    assert "EPIC/GENHOSP" in found[0].summary and found[0].metrics["rejected"] == 21


def test_cause_suppresses_its_symptoms_on_the_same_subject() -> None:
    snap = with_dest(consecutive_connection_failures=5, failures=5, successes=0, backlog=5000,
                     oldest_pending_age_s=900, p95_latency_ms=60000, last_error_class="refused")
    assert kinds(snap) == {("destination_down", "destination:lab")}
    snap = with_engine(state="stopped", queued=9, queued_history=[1, 2, 5, 7, 9], errors_delta=50)
    assert kinds(snap) == {("engine_channel_stopped", "engine:mirth1:c-1")}


def test_disabled_detectors_stay_quiet() -> None:
    snap = with_dest(backlog=5000)
    assert kinds(snap, dataclasses.replace(T, disabled=["backlog"])) == set()


def test_summaries_carry_no_message_content() -> None:
    snap = with_dest(consecutive_connection_failures=9, failures=9, successes=0, last_error_class="refused",
                     backlog=2)
    for ev in detect(snap, T):
        assert "DOE" not in ev.summary and "PID" not in ev.summary


def test_detect_is_deterministic() -> None:
    snap = with_dest(backlog=5000, rejects=50, failures=50, successes=1, lanes_blocked=2)
    assert detect(snap, T) == detect(snap, T)
    assert set(DETECTORS) <= set(CASE_KINDS)


# -- throughput_drop and its EWMA baseline -----------------------------------------------------------------------

def learn(samples: int, rate: float, alpha: float = 0.05) -> list[Baseline]:
    how = hod = (0.0, 0)
    for _ in range(samples):
        how = ewma(*how, rate, alpha)
        hod = ewma(*hod, rate, alpha)
    return [Baseline("adt-in", "how:10", how[0], how[1]), Baseline("adt-in", "hod:10", hod[0], hod[1])]


def drop(rate: float, baselines: list[Baseline]) -> Snapshot:
    s = healthy()
    s.channels[0] = dataclasses.replace(s.channels[0], accepted_per_min=rate, accepted=int(rate * 5))
    s.baselines = baselines
    return s


def test_ewma() -> None:
    assert ewma(0.0, 0, 10.0, 0.1) == (10.0, 1)
    mean, n = ewma(10.0, 1, 20.0, 0.1)
    assert n == 2 and mean == pytest.approx(11.0)


def test_throughput_drop_waits_for_a_learned_baseline() -> None:
    # Not before the baseline has enough samples, however far the rate falls.
    for n in (0, 1, T.throughput_min_samples - 1):
        assert detect(drop(0.0, learn(n, 100.0)), T) == [], n
    # Once learned, a fall below baseline * factor fires; a normal rate does not.
    learned = learn(T.throughput_min_samples, 100.0)
    assert detect(drop(95.0, learned), T) == []
    assert detect(drop(51.0, learned), T) == []
    found = detect(drop(10.0, learned), T)
    assert [(e.kind, e.subject) for e in found] == [("throughput_drop", "channel:adt-in")]
    assert found[0].metrics["baseline_per_min"] == pytest.approx(100.0)
    assert found[0].metrics["accepted_per_min"] == 10.0


def test_throughput_drop_ignores_quiet_channels() -> None:
    assert detect(drop(0.0, learn(100, 0.5)), T) == []  # baseline under min_baseline_per_min


def test_hour_of_week_preferred_then_hour_of_day() -> None:
    how_young = [Baseline("adt-in", "how:10", 5.0, 3), Baseline("adt-in", "hod:10", 80.0, 400)]
    picked = pick_baseline("adt-in", how_young, 40)
    assert picked is not None and picked.bucket == "hod:10"
    both = [Baseline("adt-in", "how:10", 5.0, 60), Baseline("adt-in", "hod:10", 80.0, 400)]
    picked = pick_baseline("adt-in", both, 40)
    assert picked is not None and picked.bucket == "how:10"
    # Sunday night is quiet: its own hour-of-week baseline keeps 4/min from looking like a drop.
    assert detect(drop(4.0, both), T) == []
    assert pick_baseline("other", both, 40) is None


def test_channel_stuck_in_a_transition() -> None:
    # Seen in STOPPING for the stuck limit or longer: a stopped-channel case with the transitional signature.
    for state, raw in (("stopping", "STOPPING"), ("starting", "STARTING"), ("pausing", "PAUSING")):
        found = detect(with_engine(state=state, raw_state=raw, state_age_s=T.engine_stuck_s), T)
        assert [(e.kind, e.subject, e.signature) for e in found] == [
            ("engine_channel_stopped", "engine:mirth1:c-1", f"engine:{raw}")], state
        assert found[0].metrics["state_age_s"] == T.engine_stuck_s and "stuck" in found[0].summary
    # A normal transition (shorter than the limit) is not a finding; nor is a long-running started channel.
    assert detect(with_engine(state="stopping", state_age_s=T.engine_stuck_s - 0.5), T) == []
    assert detect(with_engine(state="started", state_age_s=3600), T) == []
    # Configurable: states watched, and 0 switches it off.
    assert detect(with_engine(state="starting", state_age_s=60), dataclasses.replace(
        T, engine_stuck_states=["stopping"])) == []
    assert detect(with_engine(state="stopping", state_age_s=60), dataclasses.replace(T, engine_stuck_s=0)) == []


def test_slow_peer_against_its_normal() -> None:
    # Healthy fixture: sends of 15 ms. A peer that ACKs after 5 s (every send succeeds) is slow, not down.
    slow = with_dest(p95_send_ms=5000, successes=6, latency_samples=6, p95_latency_ms=5200)
    found = detect(slow, T)
    assert [(e.kind, e.subject, e.signature) for e in found] == [
        ("latency_degraded", "destination:lab", "latency:send")]
    assert found[0].metrics["send_limit_ms"] == T.send_p95_ms and "answers slowly" in found[0].summary
    # Too few sends to judge; and under the absolute limit while no normal is learned.
    assert detect(with_dest(p95_send_ms=5000, successes=T.send_min_samples - 1), T) == []
    assert detect(with_dest(p95_send_ms=2500, successes=50), T) == []
    # A learned normal moves the limit: 5 x 800 ms = 4 s (a peer that is always ~1 s is not "slow" at 2.5 s) ...
    learned = {"normal_send_ms": 800.0, "normal_send_samples": T.send_normal_min_samples}
    assert detect(with_dest(p95_send_ms=3900, successes=50, **learned), T) == []
    assert [e.signature for e in detect(with_dest(p95_send_ms=4100, successes=50, **learned), T)] == ["latency:send"]
    # ... a fast peer's limit has a floor (1 s), so 50 ms -> 300 ms is noise, 1.2 s is slow.
    fast = {"normal_send_ms": 50.0, "normal_send_samples": 100}
    assert detect(with_dest(p95_send_ms=300, successes=50, **fast), T) == []
    assert [e.signature for e in detect(with_dest(p95_send_ms=1200, successes=50, **fast), T)] == ["latency:send"]
    # The destination's SLA p95 caps the limit.
    t = dataclasses.replace(T, send_limits={"lab": 2000.0})
    assert [e.signature for e in detect(with_dest(p95_send_ms=2100, successes=50), t)] == ["latency:send"]
    # A down destination is diagnosed as down, its latency is a symptom.
    assert kinds(with_dest(p95_send_ms=5000, successes=6, consecutive_connection_failures=3, failures=3,
                           last_error_class="refused")) == {("destination_down", "destination:lab")}
