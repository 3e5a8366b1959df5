"""File and SFTP destinations: one file per message, or batch files (FHS/BHS) closed by count, size or time.

Every file is written under a hidden temporary name and renamed into place, so a reader polling the directory
never sees half a file. Each write happens inside the delivery's `deliver` activity, so it gets the destination's
retry policy and ends in a dead letter like any other send.

Batching: the `deliver` attempt of a message puts it in the destination's open batch (a row in PostgreSQL) and
waits, heartbeating, until that batch is written. A batch is sealed when it reaches max_messages or max_bytes (the
next message opens a new one); whichever waiting attempt finds its batch sealed or older than max_wait takes the
batch row's lock and writes the file; the others see it written and report success. If the write fails, the
attempts fail and retry under the retry policy; the batch stays unwritten until a write succeeds, so no message
is written twice or lost. A message dead-lettered in the meantime is left out of the file (a replay puts it in a
later batch).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from temporalio import activity

from activities.mllp import SendError
from activities.sftp import SftpError, SftpSession, atomic_put, classify, makedirs
from infra.config import Destination, FileOut, SftpOut
from infra.crypto import Cipher
from infra.store import files as fstore
from infra.store import org_tx
from interop.batch import NEWLINES, BatchHeader, batch_close, batch_open, message_lines

log = logging.getLogger("lifeline.files")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
BATCH_POLL_S = 0.25


def file_name(template: str, *, channel: str, control_id: str, ts: datetime, destination: str,
              message_id: str) -> str:
    """The file name from the destination's template; every value is made safe for a file name."""
    values = {"channel": channel, "control_id": control_id or message_id, "destination": destination,
              "message_id": message_id, "ts": ts.astimezone(UTC).strftime("%Y%m%d%H%M%S%f")[:-3]}
    name = template.format(**{k: _UNSAFE.sub("_", v) for k, v in values.items()})
    return name.lstrip(".") or message_id


def attempt_timeout_s(dest: Destination) -> float:
    """How long one deliver attempt may take for a file or SFTP destination (batching waits included)."""
    cfg = dest.file or dest.sftp
    assert cfg is not None
    base = 60.0 if dest.file else (dest.sftp.connect_timeout + dest.sftp.timeout).total_seconds()  # type: ignore[union-attr]
    return base + (cfg.batch.max_wait.total_seconds() if cfg.batch else 0.0)


def _write_local(directory: Path, name: str, chunks: list[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f".{name}.part"
    with open(temp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    temp.replace(directory / name)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash of this host
    finally:
        os.close(dir_fd)


class FileWriter:
    """Writes to file and SFTP destinations; one SFTP session per destination, reopened after a failure."""

    def __init__(self, pool: asyncpg.Pool, cipher: Cipher) -> None:
        self.pool = pool
        self.cipher = cipher
        self._sessions: dict[str, SftpSession] = {}

    def session(self, dest: Destination) -> SftpSession:
        assert dest.sftp is not None
        s = self._sessions.get(dest.name)
        if s is None or s.cfg != dest.sftp:
            s = self._sessions[dest.name] = SftpSession(dest.sftp)
        return s

    async def put(self, dest: Destination, name: str, chunks: list[bytes]) -> str:
        """Write one complete file to the destination; SendError on failure (retryable unless configured wrong)."""
        if dest.file is not None:
            try:
                await asyncio.to_thread(_write_local, dest.file.dir, name, chunks)
            except OSError as exc:
                raise SendError("io", f"cannot write {name} to {dest.file.dir}: {exc.strerror or exc}") from None
            return f"written {name}"
        assert dest.sftp is not None
        session = self.session(dest)
        try:
            sftp = await session.client()
            await asyncio.wait_for(self._sftp_put(sftp, dest.sftp, name, chunks), dest.sftp.timeout.total_seconds())
        except SftpError as exc:
            await session.reset()
            raise SendError(exc.error_class, exc.text) from None
        except Exception as exc:  # noqa: BLE001 - any failure on the wire is a classified, retryable SendError
            await session.reset()
            err = classify(exc, dest.sftp)
            raise SendError(err.error_class, err.text) from None
        return f"written {name}"

    @staticmethod
    async def _sftp_put(sftp: object, cfg: SftpOut, name: str, chunks: list[bytes]) -> None:
        await makedirs(sftp, cfg.dir)  # type: ignore[arg-type]
        await atomic_put(sftp, cfg.dir, name, chunks)  # type: ignore[arg-type]

    async def send(self, dest: Destination, er7: str, message_id: str, org_id: str) -> str:
        """Deliver one rendered message: its own file, or its place in a written batch file."""
        cfg: FileOut | SftpOut | None = dest.file or dest.sftp
        assert cfg is not None
        row = await fstore.message_file_fields(self.pool, org_id, message_id)
        assert row is not None
        if cfg.batch is None:
            name = file_name(cfg.name_template, channel=row["channel"], control_id=row["control_id"],
                             ts=row["received_at"], destination=dest.name, message_id=message_id)
            return await self.put(dest, name, [message_lines(er7, NEWLINES[cfg.newline]).encode()])
        data = er7.encode()
        aad = f"{message_id}:{dest.name}".encode()
        batch_id = await fstore.enqueue_batch_item(self.pool, org_id, dest.name, message_id, row["seq"], len(data),
                                                   self.cipher.key_id, self.cipher.encrypt(data, aad=aad),
                                                   max_messages=cfg.batch.max_messages, max_bytes=cfg.batch.max_bytes)
        return await self._wait_for_batch(dest, cfg, org_id, batch_id)

    async def _wait_for_batch(self, dest: Destination, cfg: FileOut | SftpOut, org_id: str, batch_id: int) -> str:
        assert cfg.batch is not None
        while True:
            state = await fstore.batch_state(self.pool, org_id, batch_id)
            if state.status == "written":
                return f"written in batch {state.file_name}"
            due = state.status == "sealed" or state.age_s >= cfg.batch.max_wait.total_seconds()
            if due:
                written = await self._flush(dest, cfg, org_id, batch_id)
                if written is not None:
                    return f"written in batch {written}"
            activity.heartbeat()
            await asyncio.sleep(BATCH_POLL_S)

    async def _flush(self, dest: Destination, cfg: FileOut | SftpOut, org_id: str, batch_id: int) -> str | None:
        """Write the batch file if nobody else is; the batch row stays locked while the file is written."""
        assert cfg.batch is not None
        async with org_tx(self.pool, org_id) as conn:
            locked = await fstore.lock_batch_for_write(conn, batch_id)
            if locked is None:
                return None  # another attempt is writing it, or has just written it
            if locked.status == "written":
                return locked.file_name
            items = await fstore.batch_items_to_write(conn, batch_id)
            newline = NEWLINES[cfg.newline]
            opened = locked.opened_at
            name = file_name(cfg.name_template, channel=items[0]["channel"] if items else dest.name,
                             control_id=f"batch{batch_id:08d}", ts=opened, destination=dest.name,
                             message_id=f"batch{batch_id:08d}")
            header = BatchHeader(control_id=f"{batch_id}", comment=f"{len(items)} message(s)")
            chunks = [batch_open(header, opened, newline).encode()]
            for it in items:
                aad = f"{it['message_id']}:{dest.name}".encode()
                er7 = self.cipher.decrypt(it["body_enc"], it["key_id"], aad=aad).decode()
                chunks.append(message_lines(er7, newline).encode())
            chunks.append(batch_close(len(items), newline).encode())
            await self.put(dest, name, chunks)  # raises SendError: the transaction rolls back, batch stays open
            await fstore.mark_batch_written(conn, batch_id, name, [it["message_id"] for it in items])
        log.info("destination %s: batch %d written (%d messages)", dest.name, batch_id, len(items))
        return name

    async def close(self) -> None:
        for s in self._sessions.values():
            await s.reset()
