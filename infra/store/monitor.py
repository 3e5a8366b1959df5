"""The flow monitor's snapshot reads and its small state (EWMA baselines, previous engine channel stats).

The snapshot looks at every org at once: callers run these inside `system_tx(pool, "monitor_snapshot")`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    from infra.store import Conn

# Attempts in the window ($1 = now, $2 = window seconds), shared by the destination queries below.
_WINDOW = """
with w as (
    select id, message_id, destination, at, outcome, error_class, peer_answer, duration_ms
    from delivery_attempts where at > $1::timestamptz - make_interval(secs => $2)
)
"""

_DEST_COUNTS = _WINDOW + """
select destination,
       count(*) filter (where outcome = 'delivered')::int as successes,
       count(*) filter (where outcome <> 'delivered')::int as failures,
       count(*) filter (where error_class = any($3::text[]))::int as rejects,
       coalesce(percentile_cont(0.95) within group (order by duration_ms)
                filter (where outcome = 'delivered'), 0)::float8 as p95_send
from w group by destination
"""

_DEST_LAST_ERROR = _WINDOW + """
select distinct on (destination) destination, error_class
from w where outcome <> 'delivered' order by destination, at desc, id desc
"""

_DEST_LAST_REJECT = _WINDOW + """
select distinct on (destination) destination, error_class, peer_answer
from w where error_class = any($3::text[]) order by destination, at desc, id desc
"""

# Connection failures after the last attempt that was anything else (a success, an ACK error, ...).
_DEST_STREAK = _WINDOW + """
, brk as (
    select destination, max(at) filter (where coalesce(error_class, '') <> all($3::text[])) as at
    from w group by destination
)
select w.destination, count(*)::int as streak
from w join brk using (destination)
where w.error_class = any($3::text[]) and (brk.at is null or w.at > brk.at)
group by w.destination
"""

# End-to-end latency (accept -> delivered) of first deliveries finished in the window; replays would skew it.
_DEST_LATENCY = _WINDOW + """
select w.destination, count(*)::int as n,
       percentile_cont(0.95) within group (order by d.latency_ms)::float8 as p95
from w join deliveries d on d.message_id = w.message_id and d.destination = w.destination
where w.outcome = 'delivered' and d.latency_ms is not null and d.replay_count = 0
group by w.destination
"""

_DEST_BACKLOG = """
select destination, min(org_id) as org_id, count(*)::int as backlog,
       coalesce(extract(epoch from ($1::timestamptz - min(created_at))), 0)::float8 as oldest
from deliveries where status in ('pending', 'started') group by destination
"""

_DEST_BLOCKED = """
select d.destination, count(*)::int as lanes,
       coalesce(sum((select count(*) from deliveries b where b.destination = d.destination and b.lane = d.lane
                     and b.seq > d.seq and b.status = 'pending')), 0)::int as waiting
from deliveries d
where d.status = 'dead_lettered' and d.lane is not null and d.destination = any($1::text[])
  and not exists (select 1 from deliveries e where e.destination = d.destination and e.lane = d.lane
                  and e.seq < d.seq and e.status = 'dead_lettered')
group by d.destination
"""

_CHANNELS = """
select channel, org_id,
       count(*) filter (where status <> 'rejected')::int as accepted,
       count(*) filter (where status = 'rejected')::int as rejected
from messages
where org_id = any($3::text[]) and received_at > $1::timestamptz - make_interval(secs => $2)
group by channel, org_id
"""

# Sender = sending application/facility (system names); unparseable messages fall back to the peer host.
_SENDER_REJECTS = """
select m.channel,
       case when m.sending_app = '' and m.sending_facility = ''
            then 'peer ' || regexp_replace(coalesce(m.peer, 'unknown'), ':[0-9]+$', '')
            else m.sending_app || '/' || m.sending_facility end as sender,
       count(*)::int as n,
       mode() within group (order by f.code) as top_code
from messages m
left join lateral (
    select e->>'code' as code from jsonb_array_elements(m.findings) e
    where e->>'severity' = 'error' limit 1
) f on true
where m.org_id = any($3::text[]) and m.status = 'rejected'
  and m.received_at > $1::timestamptz - make_interval(secs => $2)
group by 1, 2 order by 1, 3 desc, 2
"""


async def _rows(conn: Conn, sql: str, *args: Any) -> list[asyncpg.Record]:
    return list(await conn.fetch(sql, *args))


async def dest_backlog(conn: Conn, now: datetime) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_BACKLOG, now)


async def dest_counts(conn: Conn, now: datetime, window: float, rejects: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_COUNTS, now, window, rejects)


async def dest_last_error(conn: Conn, now: datetime, window: float) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_LAST_ERROR, now, window)


async def dest_last_reject(conn: Conn, now: datetime, window: float, rejects: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_LAST_REJECT, now, window, rejects)


async def dest_streak(conn: Conn, now: datetime, window: float, classes: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_STREAK, now, window, classes)


async def dest_latency(conn: Conn, now: datetime, window: float) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_LATENCY, now, window)


async def dest_blocked(conn: Conn, blocking: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, _DEST_BLOCKED, blocking)


async def channel_counts(conn: Conn, now: datetime, window: float, orgs: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, _CHANNELS, now, window, orgs)


async def sender_rejects(conn: Conn, now: datetime, window: float, orgs: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, _SENDER_REJECTS, now, window, orgs)


async def baselines(conn: Conn, channels: list[str], buckets: list[str]) -> list[asyncpg.Record]:
    return await _rows(conn, "select channel, bucket, mean, samples, updated_at from monitor_baselines"
                             " where channel = any($1::text[]) and bucket = any($2::text[])", channels, buckets)


async def upsert_baselines(conn: Conn, channels: list[str], buckets: list[str], orgs: list[str],
                           means: list[float], samples: list[int], now: datetime) -> None:
    await conn.execute(
        "insert into monitor_baselines (channel, bucket, org_id, mean, samples, updated_at)"
        " select c, b, o, m, s, $6 from unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int[])"
        " as u(c, b, o, m, s)"
        " on conflict (channel, bucket) do update set mean = excluded.mean, samples = excluded.samples,"
        " updated_at = excluded.updated_at",
        channels, buckets, orgs, means, samples, now)


async def lock_engine_stats(conn: Conn, engines: list[str]) -> list[asyncpg.Record]:
    """The previous stats of these engines' channels, locked until the caller's transaction ends."""
    return await _rows(conn, "select engine, channel_id, observed_at, state, state_since, errors, queued_history"
                             " from monitor_engine_stats where engine = any($1::text[]) for update", engines)


async def upsert_engine_stats(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    """rows: (engine, channel_id, org_id, observed_at, state, queued, errors, queued_history, state_since)."""
    await conn.executemany(
        "insert into monitor_engine_stats (engine, channel_id, org_id, observed_at, state, queued, errors,"
        " queued_history, state_since) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " on conflict (engine, channel_id) do update set org_id = excluded.org_id,"
        " observed_at = excluded.observed_at, state = excluded.state, queued = excluded.queued,"
        " errors = excluded.errors, queued_history = excluded.queued_history,"
        " state_since = excluded.state_since", rows)
