"""The backlog forecast: a pure function of backlog, oldest age and flow rates; the backlog detector opens the
case before the age limit is reached, with the forecast as evidence, and stays quiet when the queue keeps up."""

from __future__ import annotations

import math

import pytest

from workflows.contract import DestinationMetrics, MonitorThresholds, Snapshot
from workflows.detectors import detect, forecast_backlog_age

AT = "2026-01-05T10:00:00+00:00"


def simulate_first_breach(backlog: int, oldest: float, arrived: float, drained: float, limit: float,
                          step: float = 0.01, until: float = 2000.0) -> float | None:
    """A discrete FIFO queue with evenly spread ages: when does a pending item's age first reach the limit?"""
    ages = [oldest * (1 - i / backlog) for i in range(backlog)]
    t, out_credit, in_credit = 0.0, 0.0, 0.0
    while t < until:
        if ages and ages[0] + t >= limit:
            return t
        out_credit += drained * step
        while out_credit >= 1 and ages:
            ages.pop(0)
            out_credit -= 1
        in_credit += arrived * step
        while in_credit >= 1:
            ages.append(-t)  # arrived at t: its age later is (now - t)
            in_credit -= 1
        t += step
    return None


@pytest.mark.parametrize(("backlog", "oldest", "arrived", "drained", "limit"), [
    (100, 10.0, 1.0, 1.0, 60.0),   # today's queue already holds more than the limit drains
    (20, 5.0, 5.0, 2.0, 60.0),     # a surge: arrivals outrun the drain, the breach comes from new arrivals
    (300, 30.0, 0.0, 4.0, 60.0),   # no new arrivals, but the tail of today's queue waits too long
])
def test_forecast_matches_a_simulated_queue(backlog: int, oldest: float, arrived: float, drained: float,
                                            limit: float) -> None:
    f = forecast_backlog_age(backlog, oldest, arrived, drained, limit)
    simulated = simulate_first_breach(backlog, oldest, arrived, drained, limit)
    assert f is not None and simulated is not None
    assert f.breach_in_s == pytest.approx(simulated, abs=3.0)


def test_no_forecast_when_the_queue_keeps_up_or_already_breached() -> None:
    assert forecast_backlog_age(20, 2.0, 3.0, 5.0, 60.0) is None  # drains faster than it fills, short wait
    assert simulate_first_breach(20, 2.0, 3.0, 5.0, 60.0) is None
    assert forecast_backlog_age(0, 0.0, 1.0, 1.0, 60.0) is None
    assert forecast_backlog_age(50, 61.0, 1.0, 0.5, 60.0) is None  # already past: the backlog detector's job


def test_nothing_draining_ages_the_oldest() -> None:
    f = forecast_backlog_age(40, 15.0, 2.0, 0.0, 60.0)
    assert f is not None and f.breach_in_s == 45.0 and math.isinf(f.expected_wait_s)


def surge(**kw: float) -> Snapshot:
    d = DestinationMetrics(name="lab", backlog=120, oldest_pending_age_s=20.0, successes=300,
                           arrived_per_s=10.0, drained_per_s=2.0, rate_span_s=60.0)
    for k, v in kw.items():
        setattr(d, k, v)
    return Snapshot(observed_at=AT, window_s=300, destinations=[d])


def test_backlog_case_opens_before_the_breach_with_the_forecast_as_evidence() -> None:
    t = MonitorThresholds(backlog_age_limits={"lab": 90.0})
    found = detect(surge(), t)
    assert [(e.kind, e.subject, e.signature) for e in found] == [("backlog", "destination:lab", "forecast")]
    ev = found[0]
    assert 0 < ev.metrics["forecast_breach_in_s"] <= t.forecast_horizon_s
    assert ev.metrics["age_limit_s"] == 90.0 and ev.metrics["oldest_pending_age_s"] < 90.0
    assert ev.metrics["arrived_per_s"] == 10.0 and ev.metrics["drained_per_s"] == 2.0
    assert "forecast to pass 90s" in ev.summary


def test_forecast_stays_quiet_when_not_measured_small_disabled_or_far() -> None:
    t = MonitorThresholds(backlog_age_limits={"lab": 90.0})
    assert detect(surge(rate_span_s=0.0), t) == []  # snapshots recorded before rates existed replay as before
    assert detect(surge(backlog=5), t) == []
    assert detect(surge(), MonitorThresholds(backlog_age_limits={"lab": 90.0}, forecast_horizon_s=0)) == []
    assert detect(surge(arrived_per_s=1.0, drained_per_s=2.0, backlog=30), t) == []
    assert detect(surge(), MonitorThresholds(backlog_age_limits={"lab": 3600.0}, forecast_horizon_s=60)) == []


def test_a_down_destination_is_not_also_a_forecast() -> None:
    snap = surge(consecutive_connection_failures=5, failures=5, successes=0, drained_per_s=0.0,
                 last_error_class="refused")
    assert [e.kind for e in detect(snap, MonitorThresholds())] == ["destination_down"]
