"""File and SFTP transports: ingests of source files (exactly once per file), source health, destination batches.

Every statement runs in an org transaction (infra.store.org_tx), like the rest of the store; the flow monitor's
file_source_metrics runs in the caller's cross-org monitor_snapshot transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from infra.config import LifelineConfig
from infra.store import org_tx

if TYPE_CHECKING:
    from infra.store import Db


@dataclass
class Ingest:
    id: int
    status: str  # reading | done
    next_index: int
    next_offset: int
    outcome: str | None


@dataclass
class FileMessage:
    idx: int
    message_id: str
    byte_offset: int
    status: str
    ack_code: str
    ack: str


def position_token(source: str, ingest_id: int, idx: int) -> str:
    """The `peer` of a message stored from a file: where it came from."""
    return f"{source}:{ingest_id}#{idx}"


async def begin_ingest(db: Db, org_id: str, channel: str, source: str, path: str, size: int,
                       content_hash: bytes) -> Ingest:
    """The ingest of this file (same path, size and content): a new one, or the one already started or done."""
    async with org_tx(db, org_id) as conn:
        return await _begin_ingest(conn, org_id, channel, source, path, size, content_hash)


async def _begin_ingest(pool: Db, org_id: str, channel: str, source: str, path: str, size: int,
                        content_hash: bytes) -> Ingest:
    row = await pool.fetchrow(
        "insert into file_ingests (org_id, channel, source, path, size_bytes, content_hash)"
        " values ($1, $2, $3, $4, $5, $6) on conflict (org_id, channel, path, size_bytes, content_hash) do nothing"
        " returning id, status, next_index, next_offset, outcome",
        org_id, channel, source, path, size, content_hash)
    if row is None:
        row = await pool.fetchrow(
            "select id, status, next_index, next_offset, outcome from file_ingests where org_id = $1"
            " and channel = $2 and path = $3 and size_bytes = $4 and content_hash = $5",
            org_id, channel, path, size, content_hash)
    assert row is not None
    return Ingest(row["id"], row["status"], row["next_index"], row["next_offset"], row["outcome"])


async def record_progress(conn: Db, ingest_id: int, org_id: str, done: list[FileMessage],
                          next_index: int, next_offset: int) -> None:
    """Record a run of stored messages and move the file's resume point past them (in the caller's transaction,
    the one that stored the messages)."""
    if done:
        await conn.executemany(
            "insert into file_messages (ingest_id, idx, org_id, message_id, byte_offset, status, ack_code, ack)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8)",
            [(ingest_id, m.idx, org_id, m.message_id, m.byte_offset, m.status, m.ack_code, m.ack) for m in done])
    await conn.execute("update file_ingests set next_index = $2, next_offset = $3 where id = $1",
                       ingest_id, next_index, next_offset)


async def finish_ingest(db: Db, org_id: str, ingest_id: int, problems: list[str]) -> tuple[int, int]:
    """Mark a file fully read; return (accepted, rejected)."""
    async with org_tx(db, org_id) as conn:
        row = await conn.fetchrow(
        "with c as (select count(*) filter (where status <> 'rejected') as ok,"
        " count(*) filter (where status = 'rejected') as bad from file_messages where ingest_id = $1)"
        " update file_ingests f set status = 'done', finished_at = now(), messages = c.ok + c.bad, accepted = c.ok,"
        " rejected = c.bad, problems = $2 from c where f.id = $1 returning f.accepted, f.rejected",
            ingest_id, problems)
    assert row is not None
    return int(row["accepted"]), int(row["rejected"])


async def ingest_counts(db: Db, org_id: str, ingest_id: int) -> tuple[int, int]:
    async with org_tx(db, org_id) as conn:
        row = await conn.fetchrow("select accepted, rejected from file_ingests where id = $1", ingest_id)
    assert row is not None
    return int(row["accepted"]), int(row["rejected"])


async def set_outcome(db: Db, org_id: str, ingest_id: int, outcome: str, *, seen_again: bool = False) -> None:
    async with org_tx(db, org_id) as conn:
        await conn.execute(
            "update file_ingests set outcome = $2, seen_again = seen_again + $3::int where id = $1",
            ingest_id, outcome, 1 if seen_again else 0)


async def file_messages(db: Db, org_id: str, ingest_id: int) -> list[FileMessage]:
    async with org_tx(db, org_id) as conn:
        rows = await conn.fetch(
            "select idx, message_id, byte_offset, status, ack_code, ack from file_messages where ingest_id = $1"
            " order by idx", ingest_id)
    return [FileMessage(r["idx"], r["message_id"], r["byte_offset"], r["status"], r["ack_code"], r["ack"])
            for r in rows]


async def rejections(db: Db, org_id: str, ingest_id: int) -> list[dict[str, Any]]:
    """Rejected messages of a file with their position and findings (segment, field, code; no values)."""
    async with org_tx(db, org_id) as conn:
        rows = await conn.fetch(
            "select fm.idx, fm.byte_offset, fm.message_id, fm.ack_code, m.control_id, m.findings"
            " from file_messages fm join messages m on m.id = fm.message_id"
            " where fm.ingest_id = $1 and fm.status = 'rejected' order by fm.idx", ingest_id)
    return [dict(r) for r in rows]


async def source_polled(db: Db, org_id: str, channel: str, kind: str, location: str, *,
                        error_class: str | None = None, error: str | None = None, error_files: int | None = None,
                        new_files: int = 0) -> None:
    """Record one poll of a source: success (error_class None) or the failure it met."""
    async with org_tx(db, org_id) as conn:
        await _source_polled(conn, org_id, channel, kind, location, error_class, error, error_files, new_files)


async def _source_polled(conn: Db, org_id: str, channel: str, kind: str, location: str, error_class: str | None,
                         error: str | None, error_files: int | None, new_files: int) -> None:
    await conn.execute(
        "insert into file_sources as s (org_id, channel, kind, location, last_poll_at, last_ok_at, last_file_at,"
        " files_total, error_files, consecutive_failures, last_error_class, last_error)"
        " values ($1, $2, $3, $4, now(), case when $5::text is null then now() end,"
        " case when $7 > 0 then now() end, $7, coalesce($8, 0), case when $5::text is null then 0 else 1 end, $5, $6)"
        " on conflict (org_id, channel) do update set kind = $3, location = $4, last_poll_at = now(),"
        " last_ok_at = case when $5::text is null then now() else s.last_ok_at end,"
        " last_file_at = case when $7 > 0 then now() else s.last_file_at end, files_total = s.files_total + $7,"
        " error_files = coalesce($8, s.error_files),"
        " consecutive_failures = case when $5::text is null then 0 else s.consecutive_failures + 1 end,"
        " last_error_class = case when $5::text is null then s.last_error_class else $5 end,"
        " last_error = case when $5::text is null then s.last_error else $6 end",
        org_id, channel, kind, location, error_class, (error or "")[:500] or None, new_files, error_files)


async def sources(db: Db, org_id: str) -> list[dict[str, Any]]:
    async with org_tx(db, org_id) as conn:
        rows = await conn.fetch(
            "select org_id, channel, kind, location, last_poll_at, last_ok_at, last_file_at, files_total,"
            " error_files, consecutive_failures, last_error_class, last_error from file_sources"
            " where org_id = $1 order by channel", org_id)
    return [dict(r) for r in rows]


# -- destination batches ----------------------------------------------------------------------------------------

@dataclass
class BatchState:
    id: int
    status: str  # open | written
    messages: int
    size_bytes: int
    age_s: float
    opened_at: datetime
    file_name: str | None


_BATCH_COLS = ("id, status, messages, size_bytes, extract(epoch from now() - opened_at)::float8 as age_s, opened_at,"
               " file_name")


def _state(r: asyncpg.Record) -> BatchState:
    return BatchState(r["id"], r["status"], r["messages"], r["size_bytes"], r["age_s"], r["opened_at"],
                      r["file_name"])


async def enqueue_batch_item(db: Db, org_id: str, destination: str, message_id: str, seq: int,
                             size: int, key_id: str, body_enc: bytes, *, max_messages: int, max_bytes: int) -> int:
    """Put a rendered message into the destination's open batch (once: a retry finds its batch); return its id.
    A batch that this message would take past max_messages or max_bytes is sealed and a new one opened."""
    async with org_tx(db, org_id) as conn:
        existing = await conn.fetchval("select batch_id from file_batch_items where message_id = $1"
                                       " and destination = $2", message_id, destination)
        if existing is not None:
            return int(existing)
        while True:
            await conn.execute("insert into file_batches (org_id, destination) values ($1, $2)"
                               " on conflict (org_id, destination) where status = 'open' do nothing",
                               org_id, destination)
            # Waits while a writer holds the open batch; a batch written meanwhile no longer matches.
            row = await conn.fetchrow("select id, messages, size_bytes from file_batches where org_id = $1"
                                      " and destination = $2 and status = 'open' for update", org_id, destination)
            if row is None:
                continue
            if row["messages"] and (row["messages"] >= max_messages or row["size_bytes"] + size > max_bytes):
                await conn.execute("update file_batches set status = 'sealed' where id = $1", row["id"])
                continue
            batch_id = int(row["id"])
            break
        await conn.execute(
            "insert into file_batch_items (batch_id, message_id, destination, org_id, seq, size_bytes, key_id,"
            " body_enc) values ($1, $2, $3, $4, $5, $6, $7, $8)",
            batch_id, message_id, destination, org_id, seq, size, key_id, body_enc)
        await conn.execute("update file_batches set messages = messages + 1, size_bytes = size_bytes + $2,"
                           " status = case when messages + 1 >= $3 then 'sealed' else status end"
                           " where id = $1", batch_id, size, max_messages)
        return batch_id


async def batch_state(db: Db, org_id: str, batch_id: int) -> BatchState:
    async with org_tx(db, org_id) as conn:
        r = await conn.fetchrow(f"select {_BATCH_COLS} from file_batches where id = $1", batch_id)
    assert r is not None
    return _state(r)


async def lock_batch_for_write(conn: Db, batch_id: int) -> BatchState | None:
    """Lock the batch for writing its file; None when another writer holds it."""
    r = await conn.fetchrow(f"select {_BATCH_COLS} from file_batches where id = $1 for update skip locked", batch_id)
    return _state(r) if r is not None else None


async def batch_items_to_write(conn: Db, batch_id: int) -> list[dict[str, Any]]:
    """The batch's messages in accept order, leaving out those dead-lettered meanwhile."""
    rows = await conn.fetch(
        "select i.message_id, i.key_id, i.body_enc, m.channel from file_batch_items i"
        " join deliveries d on d.message_id = i.message_id and d.destination = i.destination"
        " join messages m on m.id = i.message_id"
        " where i.batch_id = $1 and d.status <> 'dead_lettered' order by i.seq", batch_id)
    return [dict(r) for r in rows]


async def mark_batch_written(conn: Db, batch_id: int, file_name: str, written: list[str]) -> None:
    """The file is in place: close the batch; messages left out get free for a later batch (a replay)."""
    await conn.execute("delete from file_batch_items where batch_id = $1 and not (message_id = any($2::text[]))",
                       batch_id, written)
    await conn.execute("update file_batches set status = 'written', written_at = now(), file_name = $2,"
                       " messages = $3 where id = $1", batch_id, file_name, len(written))


async def open_batches(db: Db, org_id: str) -> list[dict[str, Any]]:
    async with org_tx(db, org_id) as conn:
        rows = await conn.fetch(
            "select org_id, destination, messages, size_bytes, opened_at from file_batches"
            " where status in ('open', 'sealed') and org_id = $1 order by opened_at", org_id)
    return [dict(r) for r in rows]


async def file_source_metrics(conn: Db, window_s: float) -> list[dict[str, Any]]:
    """Per file/SFTP source, what the flow monitor's file detectors look at (FileSourceMetrics fields)."""
    rows = await conn.fetch(
        "with gaps as ("
        "  select org_id, channel, extract(epoch from started_at - lag(started_at)"
        "    over (partition by org_id, channel order by started_at)) as gap"
        "  from file_ingests where started_at > now() - interval '14 days' and seen_again = 0"
        "), usual as ("
        "  select org_id, channel, percentile_cont(0.5) within group (order by gap)::float8 as gap,"
        "    count(gap)::int as n from gaps where gap is not null group by 1, 2"
        "), errs as ("
        "  select org_id, channel, count(*)::int as n from file_ingests where outcome = 'error'"
        "    and finished_at > now() - make_interval(secs => $1) group by 1, 2"
        ")"
        " select s.channel, s.org_id, s.kind, s.location, s.consecutive_failures,"
        " coalesce(s.last_error_class, '') as last_error_class,"
        " coalesce(extract(epoch from now() - s.last_poll_at)::float8, -1) as last_poll_age_s,"
        " coalesce(extract(epoch from now() - s.last_file_at)::float8, -1) as silent_s,"
        " coalesce(u.gap, 0) as usual_gap_s, coalesce(u.n, 0) as gap_samples, s.error_files,"
        " coalesce(e.n, 0) as errors_added"
        " from file_sources s left join usual u using (org_id, channel) left join errs e using (org_id, channel)"
        " order by s.org_id, s.channel", window_s)
    return [dict(r) for r in rows]


async def source_measure(db: Db, org_id: str, channel: str, since: datetime) -> dict[str, float]:
    """What verifies a file-source case: failures now, a good poll and new files since, error files since."""
    async with org_tx(db, org_id) as conn:
        row = await conn.fetchrow(
        "select s.consecutive_failures,"
        " (s.last_ok_at is not null and s.last_ok_at >= $3)::int as polled_ok,"
        " (select count(*) from file_ingests f where f.org_id = $1 and f.channel = $2 and f.started_at >= $3"
        "  and f.seen_again = 0) as files,"
        " (select count(*) from file_ingests f where f.org_id = $1 and f.channel = $2 and f.outcome = 'error'"
        "  and f.finished_at >= $3) as error_files"
        " from file_sources s where s.org_id = $1 and s.channel = $2", org_id, channel, since)
    if row is None:
        return {}
    return {"source_failures": float(row["consecutive_failures"]), "source_polled_ok": float(row["polled_ok"]),
            "source_files": float(row["files"]), "source_error_files": float(row["error_files"])}


def _poller_lock_name(org_id: str, channel: str) -> str:
    return f"lifeline-poller:{org_id}:{channel}"


async def try_lock_poller(conn: asyncpg.Connection, org_id: str, channel: str) -> bool:
    """Become the channel's only poller across processes: a session advisory lock on a dedicated connection (not a
    pool's: the lock belongs to the session), held until release_poller or until the connection ends, so PostgreSQL
    frees it when the process dies. False while another process holds it."""
    return bool(await conn.fetchval("select pg_try_advisory_lock(hashtext($1))", _poller_lock_name(org_id, channel)))


async def release_poller(conn: asyncpg.Connection, org_id: str, channel: str) -> bool:
    """Give up polling the channel (another process may take it); False when this session did not hold it."""
    return bool(await conn.fetchval("select pg_advisory_unlock(hashtext($1))", _poller_lock_name(org_id, channel)))


async def request_poll(conn: Db, org_id: str, channel: str, *, reconnect: bool = False) -> None:
    """Wake the channel's poller now (NOTIFY lifeline_files); with reconnect it logs in again first."""
    await conn.execute("select pg_notify('lifeline_files', $1)",
                       f"{org_id}:{channel}" + (":reconnect" if reconnect else ""))


async def file_flow(pool: Db, org_id: str, config: LifelineConfig | None = None,
                    channel: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """File and SFTP sources and destinations of an org for /api/flow and the dashboard (configured ones too)."""
    rows = {r["channel"]: r for r in await sources(pool, org_id) if channel is None or r["channel"] == channel}
    out_sources: list[dict[str, Any]] = []
    configured = [c for c in (config.channels if config else []) if c.org == org_id and (c.file or c.sftp)
                  and (channel is None or c.name == channel)]
    for c in configured:
        rows.setdefault(c.name, {"channel": c.name, "kind": "file" if c.file else "sftp",
                                 "location": str(c.file.dir) if c.file else "", "files_total": 0,
                                 "error_files": 0, "consecutive_failures": 0, "last_poll_at": None,
                                 "last_ok_at": None, "last_file_at": None, "last_error_class": None,
                                 "last_error": None, "org_id": org_id})
    for r in rows.values():
        d = dict(r)
        d.pop("org_id", None)
        d["state"] = ("failing" if d["consecutive_failures"] else "never polled" if d["last_poll_at"] is None
                      else "ok")
        out_sources.append(d)
    batches = {r["destination"]: r for r in await open_batches(pool, org_id)}
    out_dests: list[dict[str, Any]] = []
    for dest in (config.destinations if config else []):
        cfg = dest.file or dest.sftp
        if dest.org != org_id or cfg is None:
            continue
        b = batches.get(dest.name)
        out_dests.append({"destination": dest.name, "kind": dest.kind,
                          "location": str(dest.file.dir) if dest.file else
                          f"sftp://{dest.sftp.username}@{dest.sftp.host}:{dest.sftp.port}/"  # type: ignore[union-attr]
                          f"{dest.sftp.dir.lstrip('/')}",  # type: ignore[union-attr]
                          "batched": cfg.batch is not None,
                          "open_batch_messages": b["messages"] if b else 0,
                          "open_batch_since": b["opened_at"] if b else None})
    return {"sources": sorted(out_sources, key=lambda s: s["channel"]), "destinations": out_dests}


async def message_file_fields(db: Db, org_id: str, message_id: str) -> asyncpg.Record | None:
    """What a destination file name is made of: channel, received_at, control_id, seq."""
    async with org_tx(db, org_id) as conn:
        row: asyncpg.Record | None = await conn.fetchrow(
            "select channel, received_at, control_id, seq from messages where id = $1", message_id)
        return row
