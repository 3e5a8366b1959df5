"""Flow detectors: pure, deterministic functions from a metrics snapshot to findings (no I/O, no clock).

Run inside FlowMonitorWorkflow. Each finding is an Evidence whose subject names what is sick
(`destination:<name>`, `channel:<name>`, `engine:<engine>:<channel id>`); the monitor opens or feeds the case
`case:<kind>:<subject>` with it. Summaries carry names, counts and error classes only, never message content.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from workflows.contract import (
    Baseline,
    DestinationMetrics,
    EngineChannelMetrics,
    Evidence,
    MonitorThresholds,
    Snapshot,
    case_subject,
)

# When a cause fires for a subject, its usual symptoms on the same subject are not opened as cases of their own:
# a down destination always has a backlog; a stopped engine channel's queue always grows.
SUPPRESSED_BY: dict[str, tuple[str, ...]] = {
    "destination_down": ("backlog", "latency_degraded"),
    "lane_blocked": ("backlog",),
    "engine_channel_stopped": ("engine_queue_growing", "engine_channel_erroring"),
    "file_source_failing": ("file_source_silent", "throughput_drop"),
}


def dest_subject(name: str) -> str:
    return case_subject("destination", name)


def channel_subject(name: str) -> str:
    return case_subject("channel", name)


def engine_subject(engine: str, channel_id: str) -> str:
    return case_subject("engine", engine, channel_id)


def ewma(mean: float, samples: int, value: float, alpha: float) -> tuple[float, int]:
    """Fold one observation into an exponentially weighted mean; the first sample seeds it."""
    if samples <= 0:
        return value, 1
    return mean + alpha * (value - mean), samples + 1


def _ev(kind: str, subject: str, snap: Snapshot, summary: str, signature: str,
        **metrics: float) -> Evidence:
    return Evidence(kind=kind, subject=subject, observed_at=snap.observed_at, summary=summary,
                    metrics={k: float(v) for k, v in metrics.items()}, signature=signature)


def _minutes(window_s: float) -> str:
    return f"{window_s / 60:g}m"


# -- destinations ------------------------------------------------------------------------------------------------

def destination_down(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    out: list[Evidence] = []
    for d in snap.destinations:
        not_rejects = d.failures - d.rejects
        streak = d.consecutive_connection_failures >= t.down_consecutive_failures
        stuck = not_rejects > 0 and d.successes == 0 and d.backlog > 0
        if not (streak or stuck):
            continue
        why = (f"{d.consecutive_connection_failures} connection failures in a row" if streak
               else f"{not_rejects} failed attempts and no success")
        out.append(_ev("destination_down", dest_subject(d.name), snap,
                       f"destination {d.name} unreachable: {why} in {_minutes(snap.window_s)}"
                       f" (last error {d.last_error_class or 'unknown'}), {d.backlog} waiting",
                       d.last_error_class or "unknown",
                       consecutive_failures=d.consecutive_connection_failures, failures=d.failures,
                       successes=d.successes, backlog=d.backlog, oldest_pending_age_s=d.oldest_pending_age_s))
    return out


def destination_rejecting(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    out: list[Evidence] = []
    for d in snap.destinations:
        finished = d.successes + d.rejects
        rate = d.rejects / finished if finished else 0.0
        if d.rejects >= t.rejecting_min_rejects and rate > t.rejecting_rate:
            out.append(_ev("destination_rejecting", dest_subject(d.name), snap,
                           f"destination {d.name} rejected {d.rejects} of {finished} messages"
                           f" ({rate:.0%}) in {_minutes(snap.window_s)}",
                           d.reject_signature or "ack_reject",
                           rejects=d.rejects, successes=d.successes, reject_rate=rate))
    return out


@dataclass(frozen=True)
class BacklogForecast:
    breach_in_s: float  # seconds until a pending delivery's age first passes the limit
    expected_wait_s: float  # backlog / drain rate: how long a delivery routed now waits (inf: nothing drains)
    growth_per_s: float  # arrivals - deliveries per second


def forecast_backlog_age(backlog: int, oldest_age_s: float, arrived_per_s: float, drained_per_s: float,
                         limit_s: float) -> BacklogForecast | None:
    """When the age of the oldest pending delivery will pass limit_s; None when it never will at these rates
    (or has already: that is the backlog detector's business, not a forecast).

    Fluid model of a FIFO queue. The backlog grows by arrived - drained per second and a delivery at position p
    waits p / drained. Today's queue: its ages run from oldest_age_s at the head down to ~0 at the tail, so the
    delivery at position p has age a0 (1 - p/B) and is still pending after t while t < p / drained; it breaches
    at t = limit - a_p if that comes first — the earliest such p is solved in closed form. Future arrivals: once
    the backlog holds limit * drained deliveries (the most the limit allows), the next one to arrive waits longer
    than the limit and breaches `limit` seconds later. With nothing draining the oldest simply ages.
    """
    if backlog <= 0 or oldest_age_s >= limit_s or limit_s <= 0:
        return None
    a0, b, mu = max(0.0, oldest_age_s), float(backlog), drained_per_s
    growth = arrived_per_s - drained_per_s
    if mu <= 0:
        return BacklogForecast(breach_in_s=limit_s - a0, expected_wait_s=math.inf, growth_per_s=growth)
    candidates: list[float] = []
    slope = 1 / mu - a0 / b  # how much faster a position's wait grows than its age falls, per position
    if slope > 0:
        p = (limit_s - a0) / slope
        if p <= b:
            candidates.append(limit_s - a0 + a0 * p / b)
    if growth > 0:
        candidates.append(max(0.0, (limit_s * mu - b) / growth) + limit_s)
    if not candidates:
        return None
    return BacklogForecast(breach_in_s=min(candidates), expected_wait_s=b / mu, growth_per_s=growth)


def backlog(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    """A backlog past its limits, or (when rates were measured) one forecast to pass its age limit soon."""
    out: list[Evidence] = []
    for d in snap.destinations:
        if d.backlog > t.backlog_depth or d.oldest_pending_age_s > t.backlog_oldest_s:
            out.append(_ev("backlog", dest_subject(d.name), snap,
                           f"destination {d.name} has {d.backlog} deliveries waiting, oldest"
                           f" {d.oldest_pending_age_s:.0f}s", d.last_error_class or "slow",
                           backlog=d.backlog, oldest_pending_age_s=d.oldest_pending_age_s,
                           successes=d.successes))
            continue
        if t.forecast_horizon_s <= 0 or d.rate_span_s <= 0 or d.backlog < t.forecast_min_backlog:
            continue
        limit = t.backlog_age_limits.get(d.name, t.backlog_oldest_s)
        f = forecast_backlog_age(d.backlog, d.oldest_pending_age_s, d.arrived_per_s, d.drained_per_s, limit)
        if f is None or f.breach_in_s > t.forecast_horizon_s:
            continue
        wait = "nothing delivered" if math.isinf(f.expected_wait_s) else f"a new one waits ~{f.expected_wait_s:.0f}s"
        out.append(_ev("backlog", dest_subject(d.name), snap,
                       f"destination {d.name}: backlog age forecast to pass {limit:.0f}s in ~{f.breach_in_s:.0f}s"
                       f" ({d.backlog} waiting, oldest {d.oldest_pending_age_s:.0f}s; {d.arrived_per_s:.1f}/s"
                       f" arriving, {d.drained_per_s:.1f}/s delivered over {d.rate_span_s:.0f}s; {wait})",
                       "forecast", backlog=d.backlog, oldest_pending_age_s=d.oldest_pending_age_s,
                       successes=d.successes, forecast_breach_in_s=f.breach_in_s, age_limit_s=limit,
                       arrived_per_s=d.arrived_per_s, drained_per_s=d.drained_per_s,
                       growth_per_s=f.growth_per_s,
                       expected_wait_s=-1.0 if math.isinf(f.expected_wait_s) else f.expected_wait_s))
    return out


def lane_blocked(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    return [
        _ev("lane_blocked", dest_subject(d.name), snap,
            f"destination {d.name}: {d.lanes_blocked} ordered lane(s) blocked by a dead-lettered head,"
            f" {d.blocked_waiting} waiting behind", d.last_error_class or "dead_letter",
            lanes_blocked=d.lanes_blocked, blocked_waiting=d.blocked_waiting)
        for d in snap.destinations if d.lanes_blocked > 0
    ]


def send_limit_ms(d: DestinationMetrics, t: MonitorThresholds) -> float:
    """How slow a destination's send p95 may get before it counts as slow: a multiple of its learned normal (with a
    floor), the absolute send_p95_ms until a normal is learned, capped by its SLA p95 latency."""
    if d.normal_send_samples >= t.send_normal_min_samples and d.normal_send_ms > 0:
        limit = max(t.send_floor_ms, t.send_factor * d.normal_send_ms)
    else:
        limit = t.send_p95_ms
    sla = t.send_limits.get(d.name, 0.0)
    return min(limit, sla) if sla > 0 else limit


def latency_degraded(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    """End-to-end latency past its limit, or a slow peer: sends that succeed but wait seconds for the answer."""
    out: list[Evidence] = []
    for d in snap.destinations:
        if d.latency_samples >= t.latency_min_samples and d.p95_latency_ms > t.latency_p95_ms:
            out.append(_ev("latency_degraded", dest_subject(d.name), snap,
                           f"destination {d.name}: p95 accept-to-delivered latency {d.p95_latency_ms:.0f}ms over"
                           f" {d.latency_samples} deliveries (limit {t.latency_p95_ms:.0f}ms)", "latency",
                           p95_latency_ms=d.p95_latency_ms, p95_send_ms=d.p95_send_ms, samples=d.latency_samples,
                           backlog=d.backlog))
            continue
        limit = send_limit_ms(d, t)
        if d.successes >= t.send_min_samples and d.p95_send_ms > limit:
            normal = (f"normal {d.normal_send_ms:.0f}ms" if d.normal_send_samples >= t.send_normal_min_samples
                      else "no normal learned yet")
            out.append(_ev("latency_degraded", dest_subject(d.name), snap,
                           f"destination {d.name} answers slowly: p95 send {d.p95_send_ms:.0f}ms over {d.successes}"
                           f" successful sends in {_minutes(snap.window_s)} (limit {limit:.0f}ms, {normal})",
                           "latency:send", p95_send_ms=d.p95_send_ms, send_limit_ms=limit,
                           normal_send_ms=d.normal_send_ms, samples=d.successes, failures=d.failures,
                           backlog=d.backlog))
    return out


# -- channels ----------------------------------------------------------------------------------------------------

def pick_baseline(channel: str, baselines: Iterable[Baseline], min_samples: int) -> Baseline | None:
    """The hour-of-week baseline once it has learned enough, else the hour-of-day one, else None."""
    mine = {b.bucket.split(":", 1)[0]: b for b in baselines if b.channel == channel}
    for prefix in ("how", "hod"):
        b = mine.get(prefix)
        if b is not None and b.samples >= min_samples:
            return b
    return None


def throughput_drop(snap: Snapshot, t: MonitorThresholds, baselines: list[Baseline]) -> list[Evidence]:
    out: list[Evidence] = []
    for c in snap.channels:
        b = pick_baseline(c.name, baselines, t.throughput_min_samples)
        if b is None or b.mean < t.throughput_min_baseline_per_min:
            continue
        if c.accepted_per_min < b.mean * t.throughput_factor:
            out.append(_ev("throughput_drop", channel_subject(c.name), snap,
                           f"channel {c.name} accepts {c.accepted_per_min:.1f}/min, usual for this hour"
                           f" {b.mean:.1f}/min ({b.bucket}, {b.samples} samples)", "throughput_drop",
                           accepted_per_min=c.accepted_per_min, baseline_per_min=b.mean,
                           baseline_samples=b.samples, ratio=c.accepted_per_min / b.mean if b.mean else 0.0))
    return out


def malformed_burst(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    out: list[Evidence] = []
    for c in snap.channels:
        for s in c.senders:
            if s.rejected > t.malformed_rejected:
                out.append(_ev("malformed_burst", channel_subject(c.name), snap,
                               f"channel {c.name}: {s.rejected} messages from {s.sender} rejected in"
                               f" {_minutes(snap.window_s)} (most common error {s.top_code or 'unknown'})",
                               f"hl7_error:{s.top_code}" if s.top_code else "malformed",
                               rejected=s.rejected, channel_rejected=c.rejected, channel_accepted=c.accepted))
    return out


# -- engine channels ---------------------------------------------------------------------------------------------

def _label(e: EngineChannelMetrics) -> str:
    return f"{e.engine} channel {e.name or e.channel_id}"


def engine_channel_stopped(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    """A channel in a stopped state, or held in a transitional state (STOPPING, STARTING, PAUSING) for
    engine_stuck_s or longer: then it processes nothing and, as Mirth's hung stops show (#6025, #3304), will not
    finish the transition by itself. Both are one case kind: one case per channel whichever it shows first."""
    out: list[Evidence] = []
    for e in snap.engine_channels:
        if e.state in t.engine_stopped_states:
            out.append(_ev("engine_channel_stopped", engine_subject(e.engine, e.channel_id), snap,
                           f"{_label(e)} is {e.state} ({e.raw_state or e.state}), {e.queued} queued",
                           f"engine:{e.state.upper()}", queued=e.queued, errors=e.errors))
        elif e.state in t.engine_stuck_states and t.engine_stuck_s > 0 and e.state_age_s >= t.engine_stuck_s:
            out.append(_ev("engine_channel_stopped", engine_subject(e.engine, e.channel_id), snap,
                           f"{_label(e)} stuck {e.state} ({e.raw_state or e.state}) for {e.state_age_s:.0f}s"
                           f" (limit {t.engine_stuck_s:.0f}s), {e.queued} queued",
                           f"engine:{e.state.upper()}", queued=e.queued, errors=e.errors,
                           state_age_s=e.state_age_s))
    return out


def engine_channel_erroring(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    return [
        _ev("engine_channel_erroring", engine_subject(e.engine, e.channel_id), snap,
            f"{_label(e)}: {e.errors_delta} new errors since the last snapshot ({e.errors} total)",
            "engine:ERRORS", errors_delta=e.errors_delta, errors=e.errors, queued=e.queued)
        for e in snap.engine_channels if e.errors_delta > t.engine_error_delta
    ]


def _growing(history: list[int], k: int, min_growth: int) -> bool:
    last = history[-k:]
    return (len(last) == k and all(b > a for a, b in zip(last, last[1:], strict=False))
            and last[-1] - last[0] >= min_growth)


def engine_queue_growing(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    k = t.engine_queue_snapshots
    return [
        _ev("engine_queue_growing", engine_subject(e.engine, e.channel_id), snap,
            f"{_label(e)}: queue grew across the last {k} snapshots to {e.queued}",
            "engine:QUEUE_GROWING", queued=e.queued, growth=e.queued_history[-1] - e.queued_history[-k])
        for e in snap.engine_channels if _growing(e.queued_history, k, t.engine_queue_min_growth)
    ]


# -- file and SFTP sources ---------------------------------------------------------------------------------------

def file_source_failing(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    return [
        _ev("file_source_failing", channel_subject(f.channel), snap,
            f"{f.kind} source of channel {f.channel} ({f.location}): {f.consecutive_failures} failed polls in a"
            f" row ({f.last_error_class or 'unknown'})", f"file_source:{f.last_error_class or 'unknown'}",
            consecutive_failures=f.consecutive_failures, error_files=f.error_files)
        for f in snap.file_sources if f.consecutive_failures >= t.file_failures
    ]


def file_source_silent(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    out: list[Evidence] = []
    for f in snap.file_sources:
        if f.gap_samples < t.file_silent_min_samples or f.usual_gap_s <= 0 or f.silent_s < 0:
            continue
        limit = max(t.file_silent_min_s, t.file_silent_factor * f.usual_gap_s)
        if f.silent_s > limit and f.consecutive_failures < t.file_failures:
            out.append(_ev("file_source_silent", channel_subject(f.channel), snap,
                           f"{f.kind} source of channel {f.channel}: no new file for {f.silent_s / 3600:.1f} h,"
                           f" usually one every {f.usual_gap_s / 3600:.1f} h ({f.gap_samples} gaps)",
                           "file_source:silent", silent_s=f.silent_s, usual_gap_s=f.usual_gap_s,
                           gap_samples=f.gap_samples))
    return out


def file_errors_growing(snap: Snapshot, t: MonitorThresholds, _: list[Baseline]) -> list[Evidence]:
    return [
        _ev("file_errors_growing", channel_subject(f.channel), snap,
            f"{f.kind} source of channel {f.channel}: {f.errors_added} file(s) moved to error/ in"
            f" {_minutes(snap.window_s)}, {f.error_files} there now", "file_errors",
            errors_added=f.errors_added, error_files=f.error_files)
        for f in snap.file_sources if f.errors_added >= t.file_errors_added
    ]


Detector = Callable[[Snapshot, MonitorThresholds, list[Baseline]], list[Evidence]]
DETECTORS: dict[str, Detector] = {
    "destination_down": destination_down,
    "destination_rejecting": destination_rejecting,
    "backlog": backlog,
    "lane_blocked": lane_blocked,
    "latency_degraded": latency_degraded,
    "throughput_drop": throughput_drop,
    "engine_channel_stopped": engine_channel_stopped,
    "engine_channel_erroring": engine_channel_erroring,
    "engine_queue_growing": engine_queue_growing,
    "malformed_burst": malformed_burst,
    "file_source_failing": file_source_failing,
    "file_source_silent": file_source_silent,
    "file_errors_growing": file_errors_growing,
}


def detect(snapshot: Snapshot, thresholds: MonitorThresholds,
           baselines: list[Baseline] | None = None) -> list[Evidence]:
    """Every enabled detector over one snapshot, symptoms of a firing cause on the same subject left out."""
    base = snapshot.baselines if baselines is None else baselines
    found: list[Evidence] = []
    for kind, fn in DETECTORS.items():
        if kind not in thresholds.disabled:
            found.extend(fn(snapshot, thresholds, base))
    causes = {(e.kind, e.subject) for e in found}
    suppressed = {(symptom, subject) for kind, subject in causes for symptom in SUPPRESSED_BY.get(kind, ())}
    return [e for e in found if (e.kind, e.subject) not in suppressed]


def subject_orgs(snapshot: Snapshot) -> dict[str, str]:
    """The org each subject of the snapshot belongs to (cases are opened in that org)."""
    orgs: dict[str, str] = {}
    for d in snapshot.destinations:
        orgs[dest_subject(d.name)] = d.org_id
    for c in snapshot.channels:
        orgs[channel_subject(c.name)] = c.org_id
    for e in snapshot.engine_channels:
        orgs[engine_subject(e.engine, e.channel_id)] = e.org_id
    for f in snapshot.file_sources:
        orgs[channel_subject(f.channel)] = f.org_id
    return orgs

