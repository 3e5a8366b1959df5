"""Directory source: batch files split and stored through the accept path exactly once, moved after; malformed
messages rejected with their position; a reappearing file not read again; half-written files never read;
kill -9 of `lifeline poller` in the middle of a file loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import yaml

from infra.crypto import Cipher
from infra.devstack import EmbeddedPostgres
from interop.batch import split_bytes
from interop.message import parse
from tests.delivery.harness import adt, wait_for
from tests.files.common import batch_bytes, control, file_channel, proc_env, spawn
from workers.poller import FilePoller, LocalDir


def poller_for(pool: asyncpg.Pool, cipher: Cipher, directory: Path, **opts: object) -> FilePoller:
    channel = file_channel(directory, **opts)
    assert channel.file is not None
    return FilePoller(channel, pool, cipher, LocalDir(channel.file))


async def poll_until_gone(poller: FilePoller, path: Path, timeout: float = 30) -> None:
    async def gone() -> bool:
        await poller.poll_once()
        return not path.exists()

    await wait_for(gone, timeout=timeout, interval=0.1)


async def test_batch_file_is_stored_once_per_message_in_order_and_moved(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "lab.hl7").write_bytes(b"\xef\xbb\xbf" + batch_bytes(250))
    (inbox / "notes.txt").write_text("not matched by the pattern")
    poller = poller_for(pool, store_cipher, inbox)
    await poll_until_gone(poller, inbox / "lab.hl7")

    rows = await pool.fetch("select control_id, status, source, peer from messages order by seq")
    assert [r["control_id"] for r in rows] == [control(i) for i in range(250)]
    assert {r["status"] for r in rows} == {"accepted"} and {r["source"] for r in rows} == {"file"}
    ingest = await pool.fetchrow("select * from file_ingests")
    assert ingest["messages"] == 250 and ingest["accepted"] == 250 and ingest["rejected"] == 0
    assert ingest["outcome"] == "processed" and ingest["problems"] == []
    positions = await pool.fetch("select idx, byte_offset from file_messages order by idx")
    assert [p["idx"] for p in positions] == list(range(250))
    assert (inbox / "processed" / "lab.hl7").exists() and (inbox / "notes.txt").exists()
    source = await pool.fetchrow("select * from file_sources")
    assert source["kind"] == "file" and source["files_total"] == 1 and source["consecutive_failures"] == 0


async def test_malformed_messages_are_rejected_with_their_position_the_rest_proceed(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    data = b"junk before any message\r" + batch_bytes(40, bad={7, 30}, newline="\n")
    (inbox / "mixed.hl7").write_bytes(data)
    poller = poller_for(pool, store_cipher, inbox, ack=True)
    await poll_until_gone(poller, inbox / "mixed.hl7")

    fm = await pool.fetch("select f.idx, f.byte_offset, f.status, m.status as mstatus from file_messages f"
                          " join messages m on m.id = f.message_id order by idx")
    assert len(fm) == 41  # the junk line is index 0, stored rejected like the two messages without MSH-10
    rejected = [r["idx"] for r in fm if r["status"] == "rejected"]
    assert rejected == [0, 8, 31]
    assert all(r["mstatus"] == r["status"] for r in fm)
    assert fm[8]["byte_offset"] == split_bytes(data)[8].offset
    assert await pool.fetchval("select count(*) from messages where status = 'accepted'") == 38
    # A file with rejected messages goes to error/ with a report naming positions and fields, no message content.
    assert (inbox / "error" / "mixed.hl7").exists()
    report = (inbox / "error" / "mixed.hl7.errors.txt").read_text()
    assert "3 message(s) rejected" in report and "\n8\t" in report and "MSH-10: 101" in report
    assert "MRN" not in report
    # The batch ACK file: FHS/BHS, one ACK per message in file order, BTS/FTS.
    acks = split_bytes((inbox / "ack" / "mixed.hl7").read_bytes())
    codes = [parse(a.raw.decode()).segment("MSA").field(1) for a in acks]  # type: ignore[union-attr]
    assert len(codes) == 41 and codes[0] == "AR" and codes[8] in ("AR", "AE") and codes[1] == "AA"
    assert (inbox / "ack" / "mixed.hl7").read_bytes().startswith(b"FHS|")


async def test_a_file_that_comes_back_with_the_same_content_is_not_read_again(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    data = batch_bytes(10)
    (inbox / "daily.hl7").write_bytes(data)
    poller = poller_for(pool, store_cipher, inbox, after="delete")
    await poll_until_gone(poller, inbox / "daily.hl7")
    assert not (inbox / "processed").exists()  # after: delete
    (inbox / "daily.hl7").write_bytes(data)
    await poll_until_gone(poller, inbox / "daily.hl7")
    assert await pool.fetchval("select count(*) from messages") == 10
    row = await pool.fetchrow("select count(*) as n, sum(seen_again) as again from file_ingests")
    assert row["n"] == 1 and row["again"] == 1
    # The same name with new content is a new file.
    (inbox / "daily.hl7").write_bytes(batch_bytes(5, prefix="G"))
    await poll_until_gone(poller, inbox / "daily.hl7")
    assert await pool.fetchval("select count(*) from messages") == 15


async def test_a_file_growing_for_seconds_is_read_only_once_complete(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    poller = poller_for(pool, store_cipher, inbox, min_age="1500ms", poll_interval="100ms")
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    path = inbox / "slow.hl7"
    try:
        with path.open("wb") as f:
            for i in range(12):  # ~5 s of writing, a message every 0.4 s, flushed each time
                f.write(adt(control(i), f"MRN{i}").replace("\r", "\r\n").encode() + b"\r\n")
                f.flush()
                await asyncio.sleep(0.4)
                assert await pool.fetchval("select count(*) from file_ingests") == 0, "read while being written"
        final_size = path.stat().st_size
        await wait_for(lambda: not path.exists(), timeout=30)
    finally:
        stop.set()
        await task
    ingests = await pool.fetch("select size_bytes, messages from file_ingests")
    assert [(r["size_bytes"], r["messages"]) for r in ingests] == [(final_size, 12)]


async def test_done_marker_gates_the_file_and_is_removed_with_it(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    poller = poller_for(pool, store_cipher, inbox, done_marker=".done", min_age="1h")
    (inbox / "x.hl7").write_bytes(batch_bytes(3))
    for _ in range(3):
        await poller.poll_once()
    assert await pool.fetchval("select count(*) from file_ingests") == 0
    (inbox / "x.hl7.done").write_bytes(b"")
    await poller.poll_once()
    assert await pool.fetchval("select count(*) from messages") == 3
    assert not (inbox / "x.hl7").exists() and not (inbox / "x.hl7.done").exists()


async def test_kill_9_of_the_poller_mid_file_stores_every_message_exactly_once(
        tmp_path: Path, pg_server: EmbeddedPostgres, db_url: str) -> None:
    n = 6000
    inbox = tmp_path / "in"
    inbox.mkdir()
    config = tmp_path / "lifeline.yaml"
    config.write_text(yaml.safe_dump({"channels": [{"name": "lab-files", "file": {
        "dir": str(inbox), "poll_interval": "200ms", "min_age": "200ms"}}]}))
    env = proc_env(db_url, config, tmp_path / "data")
    (inbox / "big.hl7").write_bytes(batch_bytes(n, bad={1234, 4321}))
    conn = await asyncpg.connect(db_url)
    log = tmp_path / "poller.log"
    proc = spawn("poller", env, log)
    kills = 0
    try:
        for target in (n // 4, n // 2):
            await wait_for(lambda t=target: conn.fetchval("select count(*) >= $1 from messages", t),
                           timeout=120, interval=0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            stored_at_kill = await conn.fetchval("select count(*) from messages")
            recorded = await conn.fetchval("select next_index from file_ingests")
            assert stored_at_kill > recorded or stored_at_kill == recorded  # some stored messages unrecorded
            proc = spawn("poller", env, log)
        began = time.monotonic()
        await wait_for(lambda: not (inbox / "big.hl7").exists(), timeout=180, interval=0.2)
        rows = await conn.fetch("select control_id, status from messages order by seq")
        controls = [r["control_id"] for r in rows if r["status"] == "accepted"]
        assert controls == [control(i) for i in range(n) if i not in (1234, 4321)]  # once each, in file order
        assert sum(1 for r in rows if r["status"] == "rejected") == 2
        idx = [r["idx"] for r in await conn.fetch("select idx from file_messages order by idx")]
        assert idx == list(range(n))
        ingest = await conn.fetchrow("select messages, accepted, rejected, outcome from file_ingests")
        assert dict(ingest) == {"messages": n, "accepted": n - 2, "rejected": 2, "outcome": "error"}
        assert kills == 2 and time.monotonic() - began < 180
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        await conn.close()


async def test_one_poller_per_channel_across_processes(db_url: str) -> None:
    """The poller lock (a session advisory lock): one holder per (org, channel), free again on release or when the
    holder's session ends (a killed poller), so a second `lifeline poller` takes over instead of polling too."""
    from infra.store import files as fstore

    first, second = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        assert await fstore.try_lock_poller(first, "default", "lab-files")
        assert not await fstore.try_lock_poller(second, "default", "lab-files")
        assert await fstore.try_lock_poller(second, "default", "billing-files")  # another channel
        assert await fstore.try_lock_poller(second, "other-org", "lab-files")  # the same name in another org
        assert await fstore.release_poller(first, "default", "lab-files")
        assert not await fstore.release_poller(first, "default", "lab-files")  # no longer held
        assert await fstore.try_lock_poller(second, "default", "lab-files")
        await second.close()  # the holder dies: PostgreSQL ends its session and frees its locks
        assert await fstore.try_lock_poller(first, "default", "lab-files")
    finally:
        await first.close()
        if not second.is_closed():
            await second.close()
