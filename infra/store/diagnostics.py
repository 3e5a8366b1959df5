"""Reads a remediation case's diagnosis classifies from: attempt outcomes, backlog, blocked heads, stage latency,
rejected messages' finding codes. Counts, classes and codes only — never message content."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db


async def destination_picture(db: Db, org: str, dest: str, window_s: float) -> dict[str, Any]:
    """failures (by error class), ok (successes in window, last success), load (backlog), dead, paused."""
    async with org_tx(db, org, readonly=True) as c:
        failures = await c.fetch(
            "select error_class, count(*) as n, max(at) as last_at,"
            " array_remove(array_agg(distinct peer_answer), null) as answers"
            " from delivery_attempts where org_id = $1 and destination = $2 and outcome <> 'delivered'"
            " and at >= now() - make_interval(secs => $3) group by error_class order by n desc, last_at desc",
            org, dest, window_s)
        ok = await c.fetchrow(
            "select count(*) filter (where at >= now() - make_interval(secs => $3)) as n, max(at) as last_at"
            " from delivery_attempts where org_id = $1 and destination = $2 and outcome = 'delivered'",
            org, dest, window_s)
        load = await c.fetchrow(
            "select count(*) filter (where status in ('pending', 'started')) as backlog,"
            " count(*) filter (where status = 'pending') as pending,"
            " extract(epoch from now() - min(created_at) filter (where status in ('pending', 'started')))"
            "   as oldest_s"
            " from deliveries where org_id = $1 and destination = $2", org, dest)
        dead = await c.fetchval("select count(*) from dead_letters where org_id = $1 and destination = $2"
                                " and status = 'open'", org, dest)
        paused = await c.fetchval("select paused from destination_state where org_id = $1"
                                  " and destination = $2", org, dest)
    return {"failures": list(failures), "ok": ok, "load": load, "dead": dead, "paused": paused}


async def failure_onset(db: Db, org: str, dest: str) -> Any:
    """The first failed attempt (within a day) after the last success: when the symptom began."""
    async with org_tx(db, org, readonly=True) as c:
        return await c.fetchval(
            "select min(at) from delivery_attempts where org_id = $1 and destination = $2"
            " and outcome <> 'delivered' and at >= now() - interval '1 day'"
            " and at > coalesce((select max(at) from delivery_attempts where org_id = $1 and destination = $2"
            "   and outcome = 'delivered'), '-infinity')", org, dest)


async def oldest_blocked_head(db: Db, org: str, dest: str) -> Any:
    """(error_type, heads) of the oldest dead-lettered lane head of a destination, or None."""
    async with org_tx(db, org, readonly=True) as c:
        return await c.fetchrow(
            "select dl.error_type, count(*) over () as heads from deliveries d join dead_letters dl"
            " on dl.message_id = d.message_id and dl.destination = d.destination and dl.status = 'open'"
            " where d.org_id = $1 and d.destination = $2 and d.status = 'dead_lettered' and d.lane is not null"
            " and not exists (select 1 from deliveries e where e.destination = d.destination and e.lane = d.lane"
            "  and e.seq < d.seq and e.status = 'dead_lettered') order by d.finished_at limit 1", org, dest)


async def latency_stages(db: Db, org: str, dest: str, window_s: float) -> Any:
    """Average accept->dispatch, queue, send and retry time (ms) of deliveries finished in the window."""
    async with org_tx(db, org, readonly=True) as c:
        return await c.fetchrow(
            "select count(*) as n,"
            " avg(extract(epoch from d.created_at - m.received_at) * 1000) as dispatch_ms,"
            " avg(greatest(0, extract(epoch from d.first_attempt_at - d.created_at) * 1000"
            "   - coalesce(a.duration_ms, 0))) as queue_ms,"
            " avg(a.duration_ms) as send_ms,"
            " avg(greatest(0, d.latency_ms - extract(epoch from d.first_attempt_at - m.received_at) * 1000))"
            "   as retry_ms"
            " from deliveries d join messages m on m.id = d.message_id"
            " left join delivery_attempts a on a.message_id = d.message_id and a.destination = d.destination"
            "   and a.attempt = 1"
            " where d.org_id = $1 and d.destination = $2 and d.status = 'delivered'"
            " and d.finished_at >= now() - make_interval(secs => $3)", org, dest, window_s)


async def channel_intake(db: Db, org: str, channel: str, window_s: float) -> Any:
    """(rejected, total, last_at) of a channel in the window."""
    async with org_tx(db, org, readonly=True) as c:
        return await c.fetchrow(
            "select count(*) filter (where status = 'rejected') as rejected, count(*) as total,"
            " max(received_at) as last_at from messages where org_id = $1 and channel = $2"
            " and received_at >= now() - make_interval(secs => $3)", org, channel, window_s)


async def top_finding_codes(db: Db, org: str, channel: str, window_s: float) -> list[Any]:
    """The three most frequent error finding codes of a channel's rejected messages in the window."""
    async with org_tx(db, org, readonly=True) as c:
        return list(await c.fetch(
            "select f->>'code' as code, count(*) as n from messages, jsonb_array_elements(findings) f"
            " where org_id = $1 and channel = $2 and status = 'rejected' and f->>'severity' = 'error'"
            " and received_at >= now() - make_interval(secs => $3) group by 1 order by n desc limit 3",
            org, channel, window_s))
