"""Deliveries, their attempts, dead letters and operator-set destination state; the dispatcher's outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from infra.store import org_tx
from infra.store.messages import OUTBOX_CHANNEL

if TYPE_CHECKING:
    import asyncpg

    from infra.store import Conn, Db


@dataclass(frozen=True)
class Recorded:
    """A delivery recorded finished: its lane (None: unordered) and whether a delivery of the same lane (or, when
    unordered, of the same destination's window) was pending then — else there is nothing to hand on."""

    lane: str | None
    waiting: bool


# -- one delivery attempt (the `deliver` activity) -----------------------------------------------------------------

_LOAD = """
select m.key_id, m.body_enc, m.channel, m.received_at, d.lane, d.status, d.workflow_id, d.peer_answer,
       d.config_version, d.filter_reason
from messages m join deliveries d on d.message_id = m.id and d.destination = $2
where m.id = $1 and m.org_id = $3
"""

_RECORD_SUCCESS = """
with a as (
    insert into delivery_attempts (message_id, destination, org_id, attempt, outcome, peer_answer, duration_ms)
    values ($1, $2, $3, $4, 'delivered', $5, $6)
), d as (
    update deliveries set status = 'delivered', attempts = attempts + 1, finished_at = now(),
        first_attempt_at = coalesce(first_attempt_at, now()), peer_answer = $5, last_error = null,
        latency_ms = (extract(epoch from (now() - $7::timestamptz)) * 1000)::int, send_lease_until = null
    where message_id = $1 and destination = $2
    returning lane
)
-- A finished delivery wakes the dispatcher (the next of its lane, or room in its destination's window), unless the
-- worker hands on itself ($9 false) — which it need only do when something of the lane or window waits.
select lane, case when $9 then pg_notify($8, '') end as notified,
       case when d.lane is null
            then exists (select 1 from deliveries w where w.org_id = $3 and w.destination = $2
                         and w.status = 'pending' and w.lane is null)
            else exists (select 1 from deliveries w where w.destination = $2 and w.lane = d.lane
                         and w.status = 'pending') end as waiting
from d
"""

_RECORD_FILTERED = """
with d as (
    update deliveries set status = 'filtered', attempts = attempts + 1, finished_at = now(),
        first_attempt_at = coalesce(first_attempt_at, now()), filter_reason = $3, last_error = null
    where message_id = $1 and destination = $2
    returning lane
)
select pg_notify($4, '') from d
"""

_RECORD_FAILURE = """
with a as (
    insert into delivery_attempts (message_id, destination, org_id, attempt, outcome, error_class, error,
                                   peer_answer, duration_ms)
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
)
update deliveries set attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, now()),
    last_error = $7, peer_answer = $8, send_lease_until = null
where message_id = $1 and destination = $2
"""


async def load_for_delivery(db: Db, org: str, message_id: str, destination: str) -> Any:
    """The encrypted body and the delivery row of (message, destination), or None."""
    async with org_tx(db, org) as c:
        return await c.fetchrow(_LOAD, message_id, destination, org)


async def record_success(db: Db, org: str, message_id: str, destination: str, attempt: int, answer: str,
                         duration_ms: int, received_at: datetime, *, notify: bool = True) -> Recorded | None:
    """The attempt row and the delivered state in one statement; returns where the delivery was (None: no such
    delivery) and wakes the dispatcher, unless `notify` is False (the worker hands on itself)."""
    async with org_tx(db, org) as c:
        row = await c.fetchrow(_RECORD_SUCCESS, message_id, destination, org, attempt, answer, duration_ms,
                               received_at, OUTBOX_CHANNEL, notify)
    return Recorded(row["lane"], row["waiting"]) if row is not None else None


async def record_filtered(db: Db, org: str, message_id: str, destination: str, reason: str) -> None:
    """A route step filtered the message out for this destination: finished, nothing sent; wakes its lane."""
    async with org_tx(db, org) as c:
        await c.execute(_RECORD_FILTERED, message_id, destination, reason, OUTBOX_CHANNEL)


async def record_failure(db: Db, org: str, message_id: str, destination: str, attempt: int, outcome: str,
                         error_class: str, error: str, peer_answer: str | None, duration_ms: int) -> None:
    async with org_tx(db, org) as c:
        await c.execute(_RECORD_FAILURE, message_id, destination, org, attempt, outcome, error_class, error,
                        peer_answer, duration_ms)


async def dead_letter(db: Db, org: str, message_id: str, destination: str, error_type: str, reason: str) -> None:
    """Park a delivery with its full attempt history and wake its lane, in one transaction."""
    async with org_tx(db, org) as c:
        attempts = await c.fetch(
            "select attempt, at, outcome, error_class, error, peer_answer, duration_ms from delivery_attempts"
            " where org_id = $3 and message_id = $1 and destination = $2 order by id", message_id, destination, org)
        history = [{**dict(a), "at": a["at"].isoformat()} for a in attempts]
        await c.execute(
            "insert into dead_letters (org_id, message_id, destination, error_type, reason, attempts)"
            " values ($1, $2, $3, $4, $5, $6) on conflict (message_id, destination) where status = 'open'"
            " do nothing", org, message_id, destination, error_type, reason[:2000], history)
        await c.execute(
            "update deliveries set status = 'dead_lettered', finished_at = now(), last_error = $3"
            " where org_id = $4 and message_id = $1 and destination = $2", message_id, destination, reason[:1000],
            org)
        await c.execute("select pg_notify($1, '')", OUTBOX_CHANNEL)


# -- replay ------------------------------------------------------------------------------------------------------

async def lock_for_replay(conn: Conn, org: str, dead_letter_ids: list[int],
                          replay_workflow_id: str) -> list[asyncpg.Record]:
    """Open dead letters among the ids (or those this replay already took), locked, in lane order.

    Runs inside the caller's org_tx so the rows stay locked until mark_replayed commits.
    """
    return list(await conn.fetch(
        "select dl.id, dl.message_id, dl.destination, d.lane, d.replay_count, d.status, m.channel,"
        " m.message_type from dead_letters dl"
        " join deliveries d on d.message_id = dl.message_id and d.destination = dl.destination"
        " join messages m on m.id = dl.message_id"
        " where dl.id = any($1::bigint[]) and dl.org_id = $2"
        " and (dl.status = 'open' or dl.replay_workflow_id = $3)"
        " order by d.seq for update of dl, d", dead_letter_ids, org, replay_workflow_id))


async def mark_replayed(conn: Conn, org: str, dead_letter_id: int, message_id: str, destination: str,
                        replay_workflow_id: str, requested_by: str, replay: int, delivery_workflow_id: str,
                        with_current_config: bool = False, current_version: int | None = None) -> None:
    """The dead letter replayed by this workflow; its delivery started again (optionally re-pinned to the current
    configuration version)."""
    await conn.execute(
        "update dead_letters set status = 'replayed', replay_workflow_id = $2, resolved_at = now(),"
        " resolved_by = $3 where id = $1 and org_id = $4", dead_letter_id, replay_workflow_id, requested_by, org)
    await conn.execute(
        "update deliveries set status = 'started', replay_count = $3, started_at = now(),"
        " finished_at = null, workflow_id = $4, config_version = case when $5"
        " then coalesce($6, config_version) else config_version end"
        " where message_id = $1 and destination = $2 and org_id = $7",
        message_id, destination, replay, delivery_workflow_id, with_current_config, current_version, org)


# -- dead letters and lanes (API, remediation) -------------------------------------------------------------------

async def list_dead_letters(db: Db, org_id: str, *, destination: str | None = None,
                            status: str | None = "open", since: datetime | None = None,
                            until: datetime | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            "select dl.id, dl.message_id, dl.destination, dl.created_at, dl.error_type, dl.reason, dl.attempts,"
            " dl.status, dl.replay_workflow_id, dl.resolved_at, dl.resolved_by, m.channel, m.message_type"
            " from dead_letters dl join messages m on m.id = dl.message_id"
            " where dl.org_id = $1 and ($2::text is null or dl.destination = $2)"
            " and ($3::text is null or dl.status = $3)"
            " and ($4::timestamptz is null or dl.created_at >= $4) and ($5::timestamptz is null or dl.created_at < $5)"
            " order by dl.id limit $6 offset $7", org_id, destination, status, since, until, limit, offset)
    return [dict(r) for r in rows]


async def count_open_dead_letters(db: Db, org_id: str) -> int:
    async with org_tx(db, org_id) as c:
        return int(await c.fetchval("select count(*) from dead_letters where org_id = $1 and status = 'open'",
                                    org_id))


async def open_dead_letter_ids(db: Db, org_id: str, *, ids: list[int] | None = None,
                               destination: str | None = None, since: datetime | None = None,
                               until: datetime | None = None, limit: int = 5000) -> list[int]:
    """Ids of open dead letters: the given ids that are open, else those matching the filter (oldest first)."""
    async with org_tx(db, org_id) as c:
        if ids is not None:
            rows = await c.fetch("select id from dead_letters where org_id = $1 and status = 'open'"
                                 " and id = any($2::bigint[]) order by id", org_id, ids)
        else:
            rows = await c.fetch(
                "select id from dead_letters where org_id = $1 and status = 'open'"
                " and ($2::text is null or destination = $2) and ($3::timestamptz is null or created_at >= $3)"
                " and ($4::timestamptz is null or created_at < $4) order by id limit $5",
                org_id, destination, since, until, limit)
    return [int(r["id"]) for r in rows]


async def blocked_lanes(db: Db, org_id: str, blocking_destinations: list[str]) -> list[dict[str, Any]]:
    """Lanes whose head is dead-lettered under the `block` policy, with how many wait behind it."""
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            "select d.destination, d.lane, d.message_id as head_message_id, d.finished_at as blocked_since,"
            " (select count(*) from deliveries w where w.destination = d.destination and w.lane = d.lane"
            "  and w.seq > d.seq and w.status = 'pending') as waiting"
            " from deliveries d where d.org_id = $1 and d.status = 'dead_lettered' and d.lane is not null"
            " and d.destination = any($2::text[])"
            " and not exists (select 1 from deliveries e where e.destination = d.destination and e.lane = d.lane"
            "  and e.seq < d.seq and e.status = 'dead_lettered')"
            " order by d.finished_at", org_id, blocking_destinations)
    return [dict(r) for r in rows]


async def started_workflow_ids(db: Db, org_id: str, destination: str, limit: int) -> list[str]:
    async with org_tx(db, org_id) as c:
        rows = await c.fetch(
            "select workflow_id from deliveries where org_id = $1 and destination = $2 and status = 'started'"
            " order by seq limit $3", org_id, destination, limit)
    return [str(r["workflow_id"]) for r in rows]


async def skip_heads(db: Db, org_id: str, destination: str, message_ids: list[str], by: str) -> None:
    """Mark dead-lettered lane heads skipped and their dead letters discarded, then wake the lanes."""
    async with org_tx(db, org_id) as c:
        await c.execute("update deliveries set status = 'skipped' where org_id = $1 and destination = $2"
                        " and message_id = any($3::text[]) and status = 'dead_lettered'", org_id, destination,
                        message_ids)
        await c.execute("update dead_letters set status = 'discarded', resolved_at = now(), resolved_by = $4"
                        " where org_id = $1 and destination = $2 and message_id = any($3::text[])"
                        " and status = 'open'", org_id, destination, message_ids, by)
        await c.execute("select pg_notify($1, '')", OUTBOX_CHANNEL)


async def discard_open(db: Db, org_id: str, destination: str, by: str) -> int:
    async with org_tx(db, org_id) as c:
        n = await c.fetchval(
            "with u as (update dead_letters set status = 'discarded', resolved_at = now(), resolved_by = $3"
            " where org_id = $1 and destination = $2 and status = 'open' returning 1) select count(*) from u",
            org_id, destination, by)
    return int(n)


# -- destination state ---------------------------------------------------------------------------------------

async def set_destination_paused(db: Db, org_id: str, destination: str, paused: bool, by: str,
                                 reason: str | None = "") -> None:
    """Pause or resume a destination; a resume wakes the dispatcher."""
    async with org_tx(db, org_id) as c:
        await c.execute(
            "insert into destination_state (org_id, destination, paused, reason, changed_by, changed_at)"
            " values ($1, $2, $3, $4, $5, now()) on conflict (org_id, destination) do update set"
            " paused = excluded.paused, reason = excluded.reason, changed_by = excluded.changed_by,"
            " changed_at = now()", org_id, destination, paused, reason, by)
        if not paused:
            await c.execute("select pg_notify($1, '')", OUTBOX_CHANNEL)


async def destination_metrics(db: Db, org_id: str, dest: str, since: datetime,
                              blocking: bool = True) -> dict[str, float]:
    """Backlog, open dead letters, paused, attempt outcomes since `since` and blocked lanes of one destination."""
    async with org_tx(db, org_id, readonly=True) as c:
        row: Any = await c.fetchrow(
            "select"
            " (select count(*) from deliveries where org_id = $1 and destination = $2"
            "   and status in ('pending', 'started')) as backlog,"
            " (select count(*) from dead_letters where org_id = $1 and destination = $2 and status = 'open')"
            "   as open_dead_letters,"
            " (select coalesce(bool_or(paused), false) from destination_state where org_id = $1"
            "   and destination = $2) as paused",
            org_id, dest)
        att: Any = await c.fetchrow(
            "select count(*) filter (where outcome = 'delivered') as successes,"
            " count(*) filter (where outcome <> 'delivered') as failures,"
            " count(*) filter (where error_class = any($4::text[])) as connection_failures,"
            " count(*) filter (where outcome = 'permanent') as rejects"
            " from delivery_attempts where org_id = $1 and destination = $2 and at >= $3",
            org_id, dest, since, ["refused", "reset", "timeout", "tls", "dns", "connection"])
        blocked = await blocked_lanes(c, org_id, [dest]) if blocking else []
    out: dict[str, Any] = {**dict(row), **dict(att), "blocked_lanes": len(blocked)}
    return {k: float(v) for k, v in out.items()}


async def destination_queues(db: Db, org_id: str, names: list[str]) -> tuple[list[Any], list[Any], list[Any]]:
    """Per destination of an org: (pending/started counts, open dead letters, paused reasons) — the Lifeline
    engine adapter's view of its own 'channels'."""
    async with org_tx(db, org_id, readonly=True) as c:
        queued = await c.fetch(
            "select destination, count(*) filter (where status = 'pending') as pending,"
            " count(*) filter (where status = 'started') as started"
            " from deliveries where status in ('pending', 'started') and org_id = $1"
            " and destination = any($2::text[]) group by destination", org_id, names)
        dead = await c.fetch(
            "select destination, count(*) as n from dead_letters where status = 'open'"
            " and org_id = $1 and destination = any($2::text[]) group by destination", org_id, names)
        paused = await c.fetch(
            "select destination, reason from destination_state where paused"
            " and org_id = $1 and destination = any($2::text[])", org_id, names)
    return list(queued), list(dead), list(paused)


# -- the dispatcher (runs in system_tx: the outbox spans every org) ------------------------------------------

_ROUTING_LOCK_CLASS = 0x57A8  # advisory lock of routing: (class, 0)


async def lock_routing(conn: Conn) -> bool:
    """Become the one dispatcher that routes right now (a transaction advisory lock, not waited for; False: another
    routes). With two routing at once, a patient's message n+1 could be routed and committed by one while n is still
    being routed by the other, and a lane whose earlier delivery does not exist yet would start n+1 first."""
    return bool(await conn.fetchval("select pg_try_advisory_xact_lock($1, 0)", _ROUTING_LOCK_CLASS))


async def claim_undispatched(conn: Conn, batch: int) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "select id, seq, org_id, channel, message_type, sending_app, sending_facility, key_id, body_enc"
        " from messages where dispatched_at is null and status = 'accepted'"
        " order by seq limit $1 for update skip locked", batch))


async def insert_deliveries(conn: Conn, message_ids: list[str], destinations: list[str], orgs: list[str],
                            seqs: list[int], lanes: list[str | None], workflow_ids: list[str],
                            versions: list[int | None]) -> None:
    """One delivery per (message, destination), pinned to the configuration version it was routed with."""
    await conn.execute(
        "insert into deliveries (message_id, destination, org_id, seq, lane, workflow_id, config_version)"
        " select * from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],"
        " $7::int[]) on conflict do nothing", message_ids, destinations, orgs, seqs, lanes, workflow_ids, versions)


async def mark_routed(conn: Conn, message_ids: list[str], versions: list[int | None]) -> None:
    await conn.execute("update messages m set status = 'routed', dispatched_at = now(),"
                       " config_version = u.v from unnest($1::text[], $2::int[]) as u(id, v)"
                       " where m.id = u.id", message_ids, versions)


async def mark_dispatched(conn: Conn, message_ids: list[str], status: str) -> None:
    """status routed | unrouted."""
    await conn.execute("update messages set status = $2, dispatched_at = now() where id = any($1::text[])",
                       message_ids, status)


_WINDOW_LOCK_CLASS = 0x57A7  # advisory lock namespace of delivery windows: (class, hashtext(org/destination))

# The (org, destination, max in flight) windows given ($1, $2, $3), each with whether this transaction now holds it:
# a transaction advisory lock, not waited for. One claimer counts and fills a window at a time, so it is never
# overfilled; a window another claimer holds is being filled by it. Materialised: each lock is tried exactly once.
_WINDOWS = f"""
w as materialized (
    select o, n, s, pg_try_advisory_xact_lock({_WINDOW_LOCK_CLASS}, hashtext(o || '/' || n)) as held
    from unnest($1::text[], $2::text[], $3::int[]) as u(o, n, s))
"""

# A held window's unordered deliveries, oldest first, as many as it has room for (at most $4): its size minus its
# started unordered deliveries (retries and replays included); none while the destination is paused. The rows are
# claimed from `deliveries` alone in index order (deliveries_pending_unordered) and joined to their messages after:
# joined first, the planner sorted the window's whole backlog for every claim (20 ms with 4,000 pending).
_IN_WINDOW = """
select c.message_id, c.destination, c.org_id, c.workflow_id, m.channel, m.message_type, m.trace_context
from (
    select d.message_id, d.destination, d.org_id, d.workflow_id from deliveries d
    where w.held and d.org_id = w.o and d.destination = w.n and d.status = 'pending' and d.lane is null
      and d.replay_count = 0
      and not exists (select 1 from destination_state p where p.org_id = w.o and p.destination = w.n and p.paused)
    order by d.seq
    limit greatest(0, least($4::int, w.s - (
        select count(*) from deliveries s where s.org_id = w.o and s.destination = w.n
          and s.status = 'started' and s.lane is null)))
    for update of d skip locked
) c join messages m on m.id = c.message_id
"""

# What may start now, in one statement: ordered deliveries with nothing ahead of them in their lane (at most $4; $5
# the destinations whose dead letters block their lanes), then the held windows' unordered ones.
_READY = f"""
with {_WINDOWS}, ordered as (
    select d.message_id, d.destination, d.org_id, d.workflow_id, m.channel, m.message_type, m.trace_context
    from deliveries d join messages m on m.id = d.message_id
    where d.status = 'pending' and d.lane is not null and d.replay_count = 0
      and not exists (select 1 from destination_state p where p.org_id = d.org_id
                      and p.destination = d.destination and p.paused)
      and not exists (
          select 1 from deliveries e
          where e.destination = d.destination and e.lane = d.lane and e.seq < d.seq
            and (e.status in ('pending', 'started')
                 or (e.status = 'dead_lettered' and e.destination = any($5::text[]))))
    order by d.seq limit $4 for update of d skip locked
), unordered as (
    select x.* from w cross join lateral ({_IN_WINDOW}) x
)
select * from ordered union all select * from unordered
"""

# One window: a row per delivery claimed, or one row with no delivery (held tells whether the window was held).
_READY_IN_ONE_WINDOW = f"""
with {_WINDOWS}
select w.held, x.* from w left join lateral ({_IN_WINDOW}) x on true
"""


async def claim_ready(conn: Conn, batch: int, blocking_destinations: list[str],
                      windows: list[tuple[str, str, int]]) -> list[asyncpg.Record]:
    """Pending deliveries that may start now (call inside a transaction; the rows stay locked): destination not
    paused; ordered ones with nothing ahead of them in their lane (up to `batch`); unordered ones within their
    destination's window, `windows` = (org, destination, max in flight), for the windows no other claimer holds
    (up to `batch` per destination)."""
    orgs, names, sizes = (list(t) for t in zip(*windows, strict=True)) if windows else ([], [], [])
    return list(await conn.fetch(_READY, orgs, names, sizes, batch, blocking_destinations))


async def claim_unordered(conn: Conn, org_id: str, destination: str, window: int,
                          limit: int) -> list[asyncpg.Record] | None:
    """Up to `limit` unordered deliveries of one destination that its window has room for (the worker's hand-off
    when one of them finishes), locked; None when another claimer holds the window right now."""
    rows = await conn.fetch(_READY_IN_ONE_WINDOW, [org_id], [destination], [window], limit)
    if not rows[0]["held"]:
        return None
    return [r for r in rows if r["message_id"] is not None]


async def mark_started(conn: Conn, message_ids: list[str], destinations: list[str]) -> None:
    await conn.execute(
        "update deliveries d set status = 'started', started_at = now()"
        " from unnest($1::text[], $2::text[]) as u(m, dst)"
        " where d.message_id = u.m and d.destination = u.dst", message_ids, destinations)
