"""File and SFTP sources: `lifeline poller` picks up complete files, splits them and stores every message through
the same accept path as MLLP and REST, exactly once per file.

Exactly once: a file's identity is (path, size, sha256). Messages are stored CHUNK at a time, each run in one
transaction together with its file positions (index, byte offset, outcome) and the file's resume point, so a
kill -9 keeps a run completely or not at all; the poller carries on from the recorded byte offset, and nothing
is stored twice or lost. Each message's `peer` is its position token (`<source>:<ingest>#<index>`).
A file that comes back with the same path, size and content is moved away without being read again.

A file is read only once it is complete: its done marker exists, or its size and mtime stayed the same for
min_age (measured on this host's clock, so an SFTP server's clock does not matter).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import asyncssh

from activities.sftp import SftpError, SftpSession, classify, makedirs, remote_join, where
from activities.store import accept
from infra.config import Channel, FileIn, LifelineConfig, SftpIn
from infra.crypto import Cipher
from infra.db import create_pool
from infra.settings import Settings
from infra.store import files as fstore
from infra.store import org_tx
from interop.batch import BatchHeader, BatchItem, BatchSplitter, write_batch
from workers.reconnect import until_up

log = logging.getLogger("lifeline.poller")

CHUNK = 200  # messages stored per transaction (with the file's resume point)
READ_SIZE = 256 * 1024
NOTIFY_CHANNEL = "lifeline_files"  # payload '<org>:<channel>[:reconnect]': poll now (remediation, CLI)


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    mtime: float


class Source(Protocol):
    """A directory of incoming files, local or remote."""

    kind: str
    location: str

    async def list(self) -> list[Entry]: ...
    def identity(self, name: str) -> str: ...
    def chunks(self, name: str, offset: int) -> AsyncIterator[bytes]: ...
    async def digest(self, entry: Entry) -> tuple[int, bytes]: ...
    async def finish(self, name: str, folder: str | None, marker: str | None) -> None: ...
    async def write(self, folder: str, name: str, data: bytes) -> None: ...
    async def count(self, folder: str) -> int: ...
    async def reset(self) -> None: ...


def _matches(name: str, pattern: str, marker: str | None) -> bool:
    if name.startswith(".") or (marker and name.endswith(marker)):
        return False
    return fnmatch.fnmatch(name, pattern)


class LocalDir:
    """A local (or mounted shared) directory."""

    kind = "file"

    def __init__(self, cfg: FileIn) -> None:
        self.cfg = cfg
        self.dir = cfg.dir
        self.location = str(cfg.dir)

    def _folder(self, folder: str) -> Path:
        custom = {"processed": self.cfg.processed_dir, "error": self.cfg.error_dir, "ack": self.cfg.ack_dir}[folder]
        return Path(custom) if custom else self.dir / folder

    async def list(self) -> list[Entry]:
        def scan() -> list[Entry]:
            out = []
            with os.scandir(self.dir) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False) and _matches(e.name, self.cfg.pattern, self.cfg.done_marker):
                        st = e.stat()
                        out.append(Entry(e.name, st.st_size, st.st_mtime))
                    elif self.cfg.done_marker and e.name.endswith(self.cfg.done_marker):
                        out.append(Entry(e.name, -1, 0.0))  # a marker: listed so its file counts as complete
            return out

        return await asyncio.to_thread(scan)

    def identity(self, name: str) -> str:
        return str((self.dir / name).resolve())

    async def chunks(self, name: str, offset: int) -> AsyncIterator[bytes]:
        with open(self.dir / name, "rb") as f:  # noqa: ASYNC230 - local reads of READ_SIZE are short
            f.seek(offset)
            while chunk := await asyncio.to_thread(f.read, READ_SIZE):
                yield chunk

    async def digest(self, entry: Entry) -> tuple[int, bytes]:
        def run() -> tuple[int, bytes]:
            h = hashlib.sha256()
            size = 0
            with open(self.dir / entry.name, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    h.update(chunk)
                    size += len(chunk)
            return size, h.digest()

        return await asyncio.to_thread(run)

    async def finish(self, name: str, folder: str | None, marker: str | None) -> None:
        def run() -> None:
            src = self.dir / name
            if folder is None:
                src.unlink(missing_ok=True)
            else:
                target_dir = self._folder(folder)
                target_dir.mkdir(parents=True, exist_ok=True)
                target = target_dir / name
                if target.exists():
                    target = target_dir / f"{name}.{int(time.time() * 1000)}"
                src.rename(target)
            if marker:
                (self.dir / (name + marker)).unlink(missing_ok=True)

        await asyncio.to_thread(run)

    async def write(self, folder: str, name: str, data: bytes) -> None:
        def run() -> None:
            d = self._folder(folder)
            d.mkdir(parents=True, exist_ok=True)
            temp = d / f".{name}.part"
            temp.write_bytes(data)
            temp.replace(d / name)

        await asyncio.to_thread(run)

    async def count(self, folder: str) -> int:
        def run() -> int:
            d = self._folder(folder)
            if not d.is_dir():
                return 0
            return sum(1 for p in d.iterdir() if p.is_file() and _matches(p.name, self.cfg.pattern, None))

        return await asyncio.to_thread(run)

    async def reset(self) -> None:
        return None


class SftpDir:
    """A directory on an SFTP server. The file is downloaded to a local spool once (hashing it on the way) and
    split from there, so the remote file is read once however it is resumed."""

    kind = "sftp"

    def __init__(self, cfg: SftpIn, spool: Path) -> None:
        self.cfg = cfg
        self.session = SftpSession(cfg)
        self.location = where(cfg)
        self.spool = spool
        self._spooled: dict[str, tuple[int, float, Path]] = {}

    def _remote(self, name: str) -> str:
        return remote_join(self.cfg.dir, name)

    def _folder(self, folder: str) -> str:
        custom = {"processed": self.cfg.processed_dir, "error": self.cfg.error_dir, "ack": self.cfg.ack_dir}[folder]
        return custom if custom else remote_join(self.cfg.dir, folder)

    async def list(self) -> list[Entry]:
        try:
            sftp = await self.session.client()
            out = []
            async for e in sftp.scandir(self.cfg.dir):
                name = e.filename if isinstance(e.filename, str) else e.filename.decode()
                if e.attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
                    continue
                if _matches(name, self.cfg.pattern, self.cfg.done_marker):
                    out.append(Entry(name, int(e.attrs.size or 0), float(e.attrs.mtime or 0)))
                elif self.cfg.done_marker and name.endswith(self.cfg.done_marker):
                    out.append(Entry(name, -1, 0.0))
            return out
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified SftpError naming the host
            await self.session.reset()
            raise classify(exc, self.cfg) from None

    def identity(self, name: str) -> str:
        return self.location.rstrip("/") + "/" + name

    def _spool_path(self, name: str) -> Path:
        return self.spool / hashlib.sha256(self.identity(name).encode()).hexdigest()[:32]

    async def digest(self, entry: Entry) -> tuple[int, bytes]:
        local = self._spool_path(entry.name)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            sftp = await self.session.client()
            h = hashlib.sha256()
            size = 0
            temp = local.with_suffix(".part")
            with open(temp, "wb") as out:  # noqa: ASYNC230
                async with sftp.open(self._remote(entry.name), "rb") as f:
                    while data := await f.read(READ_SIZE):
                        chunk = data if isinstance(data, bytes) else data.encode()
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            temp.replace(local)
        except Exception as exc:  # noqa: BLE001
            await self.session.reset()
            raise classify(exc, self.cfg) from None
        return size, h.digest()

    async def chunks(self, name: str, offset: int) -> AsyncIterator[bytes]:
        with open(self._spool_path(name), "rb") as f:  # noqa: ASYNC230
            f.seek(offset)
            while chunk := await asyncio.to_thread(f.read, READ_SIZE):
                yield chunk

    async def finish(self, name: str, folder: str | None, marker: str | None) -> None:
        try:
            sftp = await self.session.client()
            src = self._remote(name)
            if folder is None:
                await sftp.remove(src)
            else:
                target_dir = self._folder(folder)
                await makedirs(sftp, target_dir)
                target = remote_join(target_dir, name)
                if await sftp.exists(target):
                    target = remote_join(target_dir, f"{name}.{int(time.time() * 1000)}")
                await sftp.rename(src, target)
            if marker and await sftp.exists(src + marker):
                await sftp.remove(src + marker)
        except Exception as exc:  # noqa: BLE001
            await self.session.reset()
            raise classify(exc, self.cfg) from None
        self._spool_path(name).unlink(missing_ok=True)

    async def write(self, folder: str, name: str, data: bytes) -> None:
        from activities.sftp import atomic_put

        try:
            sftp = await self.session.client()
            d = self._folder(folder)
            await makedirs(sftp, d)
            await atomic_put(sftp, d, name, [data])
        except Exception as exc:  # noqa: BLE001
            await self.session.reset()
            raise classify(exc, self.cfg) from None

    async def count(self, folder: str) -> int:
        try:
            sftp = await self.session.client()
            d = self._folder(folder)
            if not await sftp.exists(d):
                return 0
            n = 0
            async for e in sftp.scandir(d):
                name = e.filename if isinstance(e.filename, str) else e.filename.decode()
                if e.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR and _matches(name, self.cfg.pattern, None):
                    n += 1
            return n
        except Exception as exc:  # noqa: BLE001
            await self.session.reset()
            raise classify(exc, self.cfg) from None

    async def reset(self) -> None:
        await self.session.reset()


@dataclass
class FilePoller:
    """Polls one channel's source; `poll_once` is one pass over the ready files."""

    channel: Channel
    pool: asyncpg.Pool
    cipher: Cipher
    source: Source
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _seen: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # name -> (size, mtime, since)
    files_done: int = 0

    @property
    def cfg(self) -> FileIn | SftpIn:
        cfg = self.channel.file or self.channel.sftp
        assert cfg is not None
        return cfg

    def ready(self, entries: list[Entry], now: float) -> list[Entry]:
        """Files that are complete: their done marker is there, or size and mtime held still for min_age."""
        marker = self.cfg.done_marker
        names = {e.name for e in entries}
        files = [e for e in entries if e.size >= 0]
        if marker:
            return sorted((e for e in files if e.name + marker in names), key=lambda e: (e.mtime, e.name))
        min_age = self.cfg.min_age.total_seconds()
        out = []
        seen: dict[str, tuple[int, float, float]] = {}
        for e in files:
            prev = self._seen.get(e.name)
            since = prev[2] if prev and prev[:2] == (e.size, e.mtime) else now
            seen[e.name] = (e.size, e.mtime, since)
            if now - since >= min_age:
                out.append(e)
        self._seen = seen
        return sorted(out, key=lambda e: (e.mtime, e.name))

    def next_ready_in(self, now: float) -> float | None:
        """Seconds until the earliest file seen so far becomes old enough (to poll again just then)."""
        if self.cfg.done_marker or not self._seen:
            return None
        min_age = self.cfg.min_age.total_seconds()
        return max(0.05, min(since + min_age - now for _, _, since in self._seen.values()))

    async def poll_once(self) -> int:
        """List, ingest every ready file, record the poll; return the number of files finished."""
        org, name = self.channel.org, self.channel.name
        try:
            entries = await self.source.list()
            done = 0
            for entry in self.ready(entries, time.monotonic()):
                await self.ingest(entry)
                done += 1
            errors = await self.source.count("error")
        except SftpError as exc:
            log.warning("channel %s: %s source failed (%s): %s", name, self.source.kind, exc.error_class, exc.text)
            await fstore.source_polled(self.pool, org, name, self.source.kind, self.source.location,
                                       error_class=exc.error_class, error=exc.text)
            return 0
        except OSError as exc:
            log.warning("channel %s: directory source failed: %s", name, exc)
            await fstore.source_polled(self.pool, org, name, self.source.kind, self.source.location,
                                       error_class="io", error=f"{type(exc).__name__}: {exc.strerror or exc}")
            return 0
        await fstore.source_polled(self.pool, org, name, self.source.kind, self.source.location,
                                   error_files=errors, new_files=done)
        self.files_done += done
        return done

    async def ingest(self, entry: Entry) -> None:
        """Read one complete file into the store (resuming where a crash left it), then move or delete it."""
        org, channel = self.channel.org, self.channel.name
        size, digest = await self.source.digest(entry)
        ing = await fstore.begin_ingest(self.pool, org, channel, self.source.kind, self.source.identity(entry.name),
                                        size, digest)
        if ing.status == "done" and ing.outcome is not None:
            # The same file (path, size, content) came back: never read twice.
            log.info("channel %s: file ingest %d seen again with the same content; not read again", channel, ing.id)
            await self.source.finish(entry.name, None if self.cfg.after == "delete" else "processed",
                                     self.cfg.done_marker)
            await fstore.set_outcome(self.pool, org, ing.id, ing.outcome, seen_again=True)
            return
        if ing.status == "reading":
            if ing.next_index:
                log.info("channel %s: resuming file ingest %d at message %d", channel, ing.id, ing.next_index)
            problems = await self._read(entry, ing)
            accepted, rejected = await fstore.finish_ingest(self.pool, org, ing.id, problems)
        else:  # read completely before a crash, not yet moved
            accepted, rejected = await fstore.ingest_counts(self.pool, org, ing.id)
        await self._after(entry, ing, accepted, rejected)

    async def _read(self, entry: Entry, ing: fstore.Ingest) -> list[str]:
        splitter = BatchSplitter(start_offset=ing.next_offset, start_index=ing.next_index)
        batch: list[BatchItem] = []
        read = 0
        async for chunk in self.source.chunks(entry.name, ing.next_offset):
            batch.extend(splitter.feed(chunk))
            while len(batch) >= CHUNK:
                read = await self._store(ing, batch[:CHUNK])
                del batch[:CHUNK]
        batch.extend(splitter.close())
        if batch:
            read = await self._store(ing, batch)
        # Trailer counts can only be checked by a reader that saw the whole file.
        return splitter.envelope.problems(read) if ing.next_offset == 0 else []

    async def _store(self, ing: fstore.Ingest, items: list[BatchItem]) -> int:
        """Store a run of messages and move the file's resume point past them in ONE transaction: a crash
        keeps all of them or none (and one commit per run instead of per message)."""
        kind = self.source.kind
        done: list[fstore.FileMessage] = []
        async with org_tx(self.pool, self.channel.org) as conn:
            for item in items:
                res = await accept(conn, self.cipher, self.channel, item.raw, source=kind,
                                   peer=fstore.position_token(kind, ing.id, item.index))
                done.append(fstore.FileMessage(item.index, res.message_id, item.offset, res.status, res.ack_code,
                                               res.ack))
            await fstore.record_progress(conn, ing.id, self.channel.org, done, items[-1].index + 1, items[-1].end)
        return items[-1].index + 1

    async def _after(self, entry: Entry, ing: fstore.Ingest, accepted: int, rejected: int) -> None:
        folder: str | None = "error" if rejected or accepted + rejected == 0 else "processed"
        if self.cfg.ack:
            messages = await fstore.file_messages(self.pool, self.channel.org, ing.id)
            text = "".join(write_batch((m.ack for m in messages), BatchHeader(
                control_id=f"ACK{ing.id}", comment=f"{accepted} accepted, {rejected} rejected"), datetime.now(UTC)))
            await self.source.write("ack", entry.name, text.encode())
        if folder == "error":
            await self.source.write("error", entry.name + ".errors.txt", await self._error_report(ing.id, rejected))
        elif self.cfg.after == "delete":
            folder = None
        await self.source.finish(entry.name, folder, self.cfg.done_marker)
        outcome = folder or "deleted"
        await fstore.set_outcome(self.pool, self.channel.org, ing.id, outcome)
        log.info("channel %s: file ingest %d done: %d accepted, %d rejected -> %s", self.channel.name, ing.id,
                 accepted, rejected, outcome)

    async def _error_report(self, ingest_id: int, rejected: int) -> bytes:
        lines = [f"lifeline file ingest {ingest_id}: {rejected} message(s) rejected",
                 "index\tbyte_offset\tmessage_id\tack\tcontrol_id\tproblems (segment-field: code)"]
        for r in await fstore.rejections(self.pool, self.channel.org, ingest_id):
            problems = "; ".join(f"{f.get('segment')}-{f.get('field') or ''}: {f.get('code')}"
                                 for f in r["findings"] if f.get("severity") == "error")
            lines.append(f"{r['idx']}\t{r['byte_offset']}\t{r['message_id']}\t{r['ack_code']}\t{r['control_id']}"
                         f"\t{problems}")
        if not rejected:
            lines.append("the file holds no HL7 message")
        return ("\n".join(lines) + "\n").encode()

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.cfg.poll_interval.total_seconds()
        while not stop.is_set():
            try:
                await self.poll_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("channel %s: poll failed (%s); trying again", self.channel.name, type(exc).__name__)
            soon = self.next_ready_in(time.monotonic())
            delay = min(interval, soon) if soon is not None else interval
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop.wait(), self.wake.wait()), delay)


async def _first(*aws: Coroutine[Any, Any, object]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def make_source(channel: Channel, spool: Path) -> Source:
    if channel.file is not None:
        return LocalDir(channel.file)
    assert channel.sftp is not None
    return SftpDir(channel.sftp, spool / f"{channel.org}-{channel.name}")


def file_channels(config: LifelineConfig) -> list[Channel]:
    return [c for c in config.channels if c.file is not None or c.sftp is not None]


async def run_poller(settings: Settings, config: LifelineConfig, only: list[str] | None = None) -> None:
    channels = [c for c in file_channels(config) if not only or c.name in only]
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # one INFO line per SFTP request otherwise
    pool = await until_up("PostgreSQL", lambda: create_pool(settings.database_url, min_size=2,
                                                            max_size=settings.database_pool_max,
                                                            role=settings.database_role))
    cipher = settings.cipher("store")
    spool = settings.data_dir.resolve() / "spool"
    pollers = {(c.org, c.name): FilePoller(c, pool, cipher, make_source(c, spool)) for c in channels}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # One poller per channel across processes: a session advisory lock, released by PostgreSQL if we die.
    lock_conn = await asyncpg.connect(settings.database_url)
    listen_conn = await asyncpg.connect(settings.database_url)

    def on_notify(_c: object, _pid: int, _channel: str, payload: object) -> None:
        org, _, rest = str(payload).partition(":")
        name, _, action = rest.partition(":")
        poller = pollers.get((org, name))
        if poller is not None:
            if action == "reconnect":
                asyncio.ensure_future(poller.source.reset())
            poller.wake.set()

    await listen_conn.add_listener(NOTIFY_CHANNEL, on_notify)
    log.info("poller started: %d file channel(s)%s", len(pollers),
             "" if pollers else " (none configured; idle)")
    tasks: list[asyncio.Task[None]] = []
    held: set[tuple[str, str]] = set()
    try:
        while not stop.is_set():
            for key, poller in pollers.items():
                if key in held:
                    continue
                if await fstore.try_lock_poller(lock_conn, *key):
                    held.add(key)
                    log.info("channel %s: polling %s", key[1], poller.source.location)
                    tasks.append(asyncio.create_task(poller.run(stop)))
            if len(held) == len(pollers):
                await stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 10)
    finally:
        stop.set()
        for t in tasks:  # progress is crash safe: a file cut short here resumes at the next start
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        for p in pollers.values():
            with contextlib.suppress(Exception):
                await p.source.reset()
        for key in held:
            with contextlib.suppress(Exception):
                await fstore.release_poller(lock_conn, *key)
        await listen_conn.close()
        await lock_conn.close()
        await pool.close()
