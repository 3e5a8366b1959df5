"""Flow reads from the store: rates, outcomes, stage latencies, peaks and backlog per channel and destination.

PostgreSQL is the truth: several listeners, dispatchers and workers may run, so nothing here is counted in process.
Every query is scoped by org. Times come from the database clock (`now()`), the clock that stamped the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db

# Latency stages of a delivered message (seconds):
#   accept -> dispatch           deliveries.created_at - messages.received_at
#   dispatch -> first attempt    deliveries.first_attempt_at - deliveries.created_at
#   first attempt -> delivered   deliveries.finished_at - deliveries.first_attempt_at
#   end to end                   deliveries.finished_at - messages.received_at
STAGES = {
    "end_to_end": "d.finished_at - m.received_at",
    "accept_to_dispatch": "d.created_at - m.received_at",
    "dispatch_to_first_attempt": "d.first_attempt_at - d.created_at",
    "first_attempt_to_delivered": "d.finished_at - d.first_attempt_at",
}
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_SCOPE = "($4::text is null or m.channel = $4) and ($5::text is null or d.destination = $5)"

_INTAKE = """
select channel, count(*)::int as received,
       count(*) filter (where status <> 'rejected')::int as accepted,
       count(*) filter (where status = 'rejected')::int as rejected
from messages m
where org_id = $1 and received_at >= $2 and received_at < $3 and ($4::text is null or channel = $4)
group by channel
"""

_INTAKE_BUCKETS = """
select channel, date_bin($5::interval, received_at, $2) as b, count(*)::int as n
from messages m
where org_id = $1 and received_at >= $2 and received_at < $3 and ($4::text is null or channel = $4)
group by 1, 2
"""

_OUTBOX = """
select channel, count(*)::int as depth, min(received_at) as oldest
from messages m
where org_id = $1 and status = 'accepted' and dispatched_at is null and ($2::text is null or channel = $2)
group by channel
"""

_ROUTED = f"""
select m.channel, d.destination, count(*)::int as n
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.created_at >= $2 and d.created_at < $3 and {_SCOPE}
group by 1, 2
"""

_ROUTED_BUCKETS = f"""
select m.channel, d.destination, date_bin($6::interval, d.created_at, $2) as b, count(*)::int as n
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.created_at >= $2 and d.created_at < $3 and {_SCOPE}
group by 1, 2, 3
"""

_ATTEMPTS = f"""
select m.channel, d.destination,
       count(*) filter (where d.outcome = 'delivered')::int as succeeded,
       count(*) filter (where d.outcome <> 'delivered')::int as failed,
       count(*) filter (where d.outcome = 'permanent')::int as rejected
from delivery_attempts d join messages m on m.id = d.message_id
where d.org_id = $1 and d.at >= $2 and d.at < $3 and {_SCOPE}
group by 1, 2
"""

_DEAD = f"""
select m.channel, d.destination, count(*)::int as n
from dead_letters d join messages m on m.id = d.message_id
where d.org_id = $1 and d.created_at >= $2 and d.created_at < $3 and {_SCOPE}
group by 1, 2
"""


def _latency_sql() -> str:
    cols = []
    for name, expr in STAGES.items():
        sec = f"extract(epoch from ({expr}))"
        cols.append(f"avg({sec})::float8 as {name}_avg")
        cols.append(f"percentile_cont(0.95) within group (order by {sec})::float8 as {name}_p95")
    return f"""
select m.channel, d.destination, count(*)::int as delivered, {", ".join(cols)}
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.finished_at >= $2 and d.finished_at < $3 and d.status = 'delivered'
  and d.replay_count = 0 and {_SCOPE}
group by 1, 2
"""


_LATENCY = _latency_sql()

# Deliveries waiting at time $2: created by then and not finished by then (pending/started now, or finished later).
_BACKLOG_AT = f"""
select m.channel, d.destination, count(*)::int as depth, min(d.created_at) as oldest
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.created_at <= $2 and d.status <> 'skipped'
  and (d.status in ('pending', 'started') or d.finished_at > $2) and {_SCOPE.replace("$4", "$3").replace("$5", "$4")}
group by 1, 2
"""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    bucket: timedelta

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def _rates(count: int, seconds: float) -> dict[str, float]:
    per_s = count / seconds if seconds > 0 else 0.0
    return {"per_second": round(per_s, 6), "per_minute": round(per_s * 60, 4), "per_hour": round(per_s * 3600, 2)}


def _trend(now: float, before: float) -> str:
    if now > before:
        return "rising"
    return "falling" if now < before else "steady"


def _buckets(w: Window, counts: dict[datetime, int]) -> list[dict[str, Any]]:
    n = max(1, math.ceil(w.seconds / w.bucket.total_seconds()))
    return [{"start": w.start + i * w.bucket, "count": counts.get(w.start + i * w.bucket, 0)} for i in range(n)]


def _peak(w: Window, buckets: list[dict[str, Any]]) -> dict[str, Any]:
    top: dict[str, Any] = max(buckets, key=lambda b: b["count"]) if buckets else {"start": w.start, "count": 0}
    bucket_s = w.bucket.total_seconds()
    mean = sum(b["count"] for b in buckets) / len(buckets) if buckets else 0.0
    return {"start": top["start"], "count": top["count"], "per_minute": round(top["count"] / bucket_s * 60, 4),
            "ratio_to_mean": round(top["count"] / mean, 3) if mean else 0.0}


async def db_now(conn: Db) -> datetime:
    value: datetime = await conn.fetchval("select now()")
    return value


async def flow(pool: Db, org_id: str, *, window: timedelta, bucket: timedelta,
               channel: str | None = None, destination: str | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """GET /api/flow: intake per channel and the flow per (channel, destination) over [now - window, now)."""
    end = now or await db_now(pool)
    w = Window(end - window, end, bucket)
    prev = Window(w.start - window, w.start, bucket)
    async with org_tx(pool, org_id, readonly=True) as c:
        intake = await c.fetch(_INTAKE, org_id, w.start, w.end, channel)
        intake_prev = await c.fetch(_INTAKE, org_id, prev.start, prev.end, channel)
        intake_buckets = await c.fetch(_INTAKE_BUCKETS, org_id, w.start, w.end, channel, bucket)
        outbox = await c.fetch(_OUTBOX, org_id, channel) if destination is None else []
        routed = await c.fetch(_ROUTED, org_id, w.start, w.end, channel, destination)
        routed_prev = await c.fetch(_ROUTED, org_id, prev.start, prev.end, channel, destination)
        routed_buckets = await c.fetch(_ROUTED_BUCKETS, org_id, w.start, w.end, channel, destination, bucket)
        attempts = await c.fetch(_ATTEMPTS, org_id, w.start, w.end, channel, destination)
        dead = await c.fetch(_DEAD, org_id, w.start, w.end, channel, destination)
        latency = await c.fetch(_LATENCY, org_id, w.start, w.end, channel, destination)
        backlog_now = await c.fetch(_BACKLOG_AT, org_id, w.end, channel, destination)
        backlog_prev = await c.fetch(_BACKLOG_AT, org_id, w.start, channel, destination)

    channels: dict[str, dict[str, Any]] = {}

    def ch(name: str) -> dict[str, Any]:
        return channels.setdefault(name, {"channel": name, "received": 0, "accepted": 0, "rejected": 0,
                                          "previous_received": 0, "_b": {}, "outbox_depth": 0,
                                          "outbox_oldest_age_s": 0.0})

    for r in intake:
        ch(r["channel"]).update(received=r["received"], accepted=r["accepted"], rejected=r["rejected"])
    for r in intake_prev:
        ch(r["channel"])["previous_received"] = r["received"]
    for r in intake_buckets:
        ch(r["channel"])["_b"][r["b"]] = r["n"]
    for r in outbox:
        ch(r["channel"]).update(outbox_depth=r["depth"],
                                outbox_oldest_age_s=max(0.0, (w.end - r["oldest"]).total_seconds()))
    for c_ in channels.values():
        counts = c_.pop("_b")
        c_["rate"] = _rates(c_["received"], w.seconds)
        c_["rejected_rate"] = round(c_["rejected"] / c_["received"], 4) if c_["received"] else 0.0
        c_["rate_trend"] = _trend(c_["received"], c_["previous_received"])
        c_["buckets"] = _buckets(w, counts)
        c_["peak"] = _peak(w, c_["buckets"])

    flows: dict[tuple[str, str], dict[str, Any]] = {}

    def fl(r: asyncpg.Record) -> dict[str, Any]:
        key = (r["channel"], r["destination"])
        if key not in flows:
            flows[key] = {
                "channel": key[0], "destination": key[1], "messages": 0, "previous_messages": 0, "_b": {},
                "attempts_succeeded": 0, "attempts_failed": 0, "attempts_rejected": 0, "delivered": 0,
                "dead_lettered": 0,
                "latency": {s: {"avg_ms": None, "p95_ms": None} for s in STAGES},
                "backlog": {"depth": 0, "oldest_age_s": 0.0, "previous_depth": 0, "previous_oldest_age_s": 0.0},
            }
        return flows[key]

    for r in routed:
        fl(r)["messages"] = r["n"]
    for r in routed_prev:
        fl(r)["previous_messages"] = r["n"]
    for r in routed_buckets:
        fl(r)["_b"][r["b"]] = r["n"]
    for r in attempts:
        fl(r).update(attempts_succeeded=r["succeeded"], attempts_failed=r["failed"], attempts_rejected=r["rejected"])
    for r in dead:
        fl(r)["dead_lettered"] = r["n"]
    for r in latency:
        f = fl(r)
        f["delivered"] = r["delivered"]
        for s in STAGES:
            avg, p95 = r[f"{s}_avg"], r[f"{s}_p95"]
            f["latency"][s] = {"avg_ms": None if avg is None else round(avg * 1000, 1),
                               "p95_ms": None if p95 is None else round(p95 * 1000, 1)}
    for rows, at, depth_key, age_key in ((backlog_now, w.end, "depth", "oldest_age_s"),
                                         (backlog_prev, w.start, "previous_depth", "previous_oldest_age_s")):
        for r in rows:
            b = fl(r)["backlog"]
            b[depth_key] = r["depth"]
            b[age_key] = round(max(0.0, (at - r["oldest"]).total_seconds()), 3)
    for f in flows.values():
        counts = f.pop("_b")
        total = f["attempts_succeeded"] + f["attempts_failed"]
        f["success_rate"] = round(f["attempts_succeeded"] / total, 4) if total else None
        f["failure_rate"] = round(f["attempts_failed"] / total, 4) if total else None
        f["rate"] = _rates(f["messages"], w.seconds)
        f["rate_trend"] = _trend(f["messages"], f["previous_messages"])
        f["buckets"] = _buckets(w, counts)
        f["peak"] = _peak(w, f["buckets"])
        b = f["backlog"]
        b["trend"] = _trend(b["depth"], b["previous_depth"])

    return {
        "from": w.start, "to": w.end, "window_s": w.seconds, "bucket_s": bucket.total_seconds(),
        "channels": sorted(channels.values(), key=lambda x: x["channel"]),
        "flows": sorted(flows.values(), key=lambda x: (x["channel"], x["destination"])),
    }


# -- objective values for one scope (SLA evaluation) ---------------------------------------------------------------

_SCOPE_LATENCY = """
select count(*)::int as n,
       percentile_cont(0.95) within group (order by extract(epoch from d.finished_at - m.received_at))::float8 as p95
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.finished_at >= $2 and d.finished_at < $3 and d.status = 'delivered'
  and d.replay_count = 0 and ($4::text is null or m.channel = $4) and ($5::text is null or d.destination = $5)
"""

_SCOPE_SUCCESS = """
select count(*)::int as n, count(*) filter (where d.outcome = 'delivered')::int as ok
from delivery_attempts d join messages m on m.id = d.message_id
where d.org_id = $1 and d.at >= $2 and d.at < $3
  and ($4::text is null or m.channel = $4) and ($5::text is null or d.destination = $5)
"""

_SCOPE_BACKLOG = """
select count(*)::int as depth, min(d.created_at) as oldest
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and d.status in ('pending', 'started')
  and ($2::text is null or m.channel = $2) and ($3::text is null or d.destination = $3)
"""


@dataclass
class ScopeValues:
    p95_latency_s: float | None  # None: nothing delivered in the window
    latency_samples: int
    success_rate: float | None  # None: no send attempt in the window
    attempts: int
    backlog_depth: int
    backlog_oldest_age_s: float


async def scope_values(conn: Db, org_id: str, channel: str | None,
                       destination: str | None, start: datetime, end: datetime) -> ScopeValues:
    async with org_tx(conn, org_id) as c:
        lat = await c.fetchrow(_SCOPE_LATENCY, org_id, start, end, channel, destination)
        ok = await c.fetchrow(_SCOPE_SUCCESS, org_id, start, end, channel, destination)
        bl = await c.fetchrow(_SCOPE_BACKLOG, org_id, channel, destination)
    assert lat is not None and ok is not None and bl is not None
    oldest = bl["oldest"]
    return ScopeValues(
        p95_latency_s=lat["p95"], latency_samples=lat["n"],
        success_rate=(ok["ok"] / ok["n"]) if ok["n"] else None, attempts=ok["n"],
        backlog_depth=bl["depth"], backlog_oldest_age_s=max(0.0, (end - oldest).total_seconds()) if oldest else 0.0)


# -- Prometheus samples: totals since the beginning, scoped by org ----------------------------------------------

_M_MESSAGES = """
select channel, message_type, count(*) filter (where status <> 'rejected')::bigint as accepted,
       count(*) filter (where status = 'rejected')::bigint as rejected
from messages where org_id = $1 group by 1, 2
"""
_M_ATTEMPTS = """
select destination, coalesce(error_class, case when outcome = 'delivered' then '' else 'unknown' end) as error_class,
       outcome = 'delivered' as ok, count(*)::bigint as n
from delivery_attempts where org_id = $1 group by 1, 2, 3
"""
_M_DEAD = "select destination, count(*)::bigint as n from dead_letters where org_id = $1 group by 1"
_M_BACKLOG = """
select destination, count(*)::bigint as depth, extract(epoch from now() - min(created_at))::float8 as oldest
from deliveries where org_id = $1 and status in ('pending', 'started') group by 1
"""
_M_CASES = """
select kind, count(distinct case_id)::bigint as n from cases
where org_id = $1 and stage not in ('resolved', 'escalated', 'rejected') group by 1
"""
_M_SLA = """
select sla, objective, count(*)::bigint as n from sla_violations where org_id = $1 and ended_at is null group by 1, 2
"""


def _histogram_sql() -> str:
    cols = ", ".join(f"count(*) filter (where latency_ms <= {int(b * 1000)})::bigint as le_{i}"
                     for i, b in enumerate(LATENCY_BUCKETS_S))
    return f"""
select destination, count(*)::bigint as n, coalesce(sum(latency_ms), 0)::float8 / 1000 as sum_s, {cols}
from deliveries where org_id = $1 and status = 'delivered' and latency_ms is not null group by 1
"""


_M_HISTOGRAM = _histogram_sql()


async def table_exists(conn: Db, name: str) -> bool:
    return bool(await conn.fetchval("select to_regclass($1) is not null", f"public.{name}"))


async def metric_samples(pool: Db, org_id: str) -> dict[str, Any]:
    """Everything /metrics exposes, read in one repeatable-read snapshot so counters agree with each other."""
    async with org_tx(pool, org_id, isolation="repeatable_read", readonly=True) as c:
        out: dict[str, Any] = {
            "messages": [dict(r) for r in await c.fetch(_M_MESSAGES, org_id)],
            "attempts": [dict(r) for r in await c.fetch(_M_ATTEMPTS, org_id)],
            "dead_letters": [dict(r) for r in await c.fetch(_M_DEAD, org_id)],
            "backlog": [dict(r) for r in await c.fetch(_M_BACKLOG, org_id)],
            "latency": [dict(r) for r in await c.fetch(_M_HISTOGRAM, org_id)],
            "cases": [dict(r) for r in await c.fetch(_M_CASES, org_id)] if await table_exists(c, "cases") else None,
            "sla": [dict(r) for r in await c.fetch(_M_SLA, org_id)] if await table_exists(c, "sla_violations")
            else [],
        }
    return out


# -- delivery summary report -------------------------------------------------------------------------------------

_REPORT_FLOWS = """
select m.channel, d.destination, count(*)::int as messages,
       count(*) filter (where d.status = 'delivered')::int as delivered,
       count(*) filter (where d.status = 'dead_lettered')::int as dead_lettered,
       count(*) filter (where d.status in ('pending', 'started'))::int as pending,
       count(*) filter (where d.status = 'skipped')::int as skipped,
       coalesce(sum(d.attempts), 0)::int as attempts,
       avg(extract(epoch from d.finished_at - m.received_at)) filter (where d.status = 'delivered')::float8 as avg_s,
       percentile_cont(0.95) within group (order by extract(epoch from d.finished_at - m.received_at))
           filter (where d.status = 'delivered')::float8 as p95_s
from deliveries d join messages m on m.id = d.message_id
where d.org_id = $1 and m.received_at >= $2 and m.received_at < $3
group by 1, 2 order by 1, 2
"""


async def delivery_report(pool: Db, org_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Per channel: messages received/accepted/rejected; per (channel, destination): outcomes and latency."""
    async with org_tx(pool, org_id, readonly=True) as c:
        intake = await c.fetch(_INTAKE, org_id, start, end, None)
        flows = await c.fetch(_REPORT_FLOWS, org_id, start, end)
    rows = []
    for r in flows:
        finished = r["delivered"] + r["dead_lettered"]
        rows.append({
            "channel": r["channel"], "destination": r["destination"], "messages": r["messages"],
            "delivered": r["delivered"], "dead_lettered": r["dead_lettered"], "pending": r["pending"],
            "skipped": r["skipped"], "attempts": r["attempts"],
            "success_rate": round(r["delivered"] / finished, 4) if finished else None,
            "avg_latency_ms": None if r["avg_s"] is None else round(r["avg_s"] * 1000, 1),
            "p95_latency_ms": None if r["p95_s"] is None else round(r["p95_s"] * 1000, 1),
        })
    return {"from": start, "to": end,
            "channels": [dict(r) for r in sorted(intake, key=lambda r: r["channel"])], "flows": rows}
