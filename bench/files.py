"""Batch files into the store: messages per second through the poller's accept path, and peak memory.

    python -m bench.files [--messages 20000] [--split-mb 100] [--full-mb 0] [--out report.json]

Each measurement runs in its own process (so its peak RSS is its own): `ingest` reads a FHS/BHS batch file with
the directory poller into a fresh migrated database on an embedded PostgreSQL (validate, encrypt, store, record
positions; one transaction per 200 messages), `split` only streams a file through the splitter. `--full-mb` also
ingests a file of that size end to end (slow: it stores every message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STORE_KEY = "c3NzcwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def adt(i: int) -> str:
    return "\r".join([
        f"MSH|^~\\&|LAB|LABFAC|EHR|HOSP|20260101120000||ORU^R01^ORU_R01|B{i:09d}|P|2.5.1",
        f"PID|1||MRN{i % 5000:06d}^^^HOSP^MR||DOE^JANE||19800101|F",
        "OBR|1||X1|CBC^Complete blood count",
        f"OBX|1|NM|WBC^White cells||{i % 17}.5|10*3/uL|4.0-11.0|N|||F",
    ])


def write_batch_file(path: Path, *, messages: int | None = None, size_mb: float | None = None) -> int:
    """Write a FHS/BHS batch by count or by size (streamed); return the number of messages."""
    from interop.batch import BatchHeader, batch_close, batch_open, message_lines

    limit = int(size_mb * 1024 * 1024) if size_mb else None
    n = 0
    with path.open("w", newline="") as f:
        f.write(batch_open(BatchHeader(control_id="BENCH"), datetime(2026, 1, 1), "\r\n"))
        while (messages is None or n < messages) and (limit is None or f.tell() < limit):
            f.write(message_lines(adt(n), "\r\n"))
            n += 1
        f.write(batch_close(n, "\r\n"))
    return n


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


async def _ingest(db_url: str, file: Path) -> dict[str, Any]:
    from infra.config import validate_config
    from infra.crypto import Cipher
    from infra.db import create_pool
    from infra.settings import decode_key
    from workers.poller import Entry, FilePoller, LocalDir

    channel = validate_config({"channels": [{"name": "bench-files", "file": {"dir": str(file.parent)}}]},
                              "bench").channels[0]
    assert channel.file is not None
    pool = await create_pool(db_url, min_size=1, max_size=4)
    rss_before = _maxrss_mb()
    try:
        poller = FilePoller(channel, pool, Cipher("k1", decode_key(STORE_KEY, "key")), LocalDir(channel.file))
        st = file.stat()
        began = time.perf_counter()
        await poller.ingest(Entry(file.name, st.st_size, st.st_mtime))
        seconds = time.perf_counter() - began
        stored = await pool.fetchval("select count(*) from messages")
    finally:
        await pool.close()
    return {"messages": stored, "seconds": round(seconds, 2), "messages_per_s": round(stored / seconds, 1),
            "file_mb": round(st.st_size / 2**20, 1), "peak_rss_mb": round(_maxrss_mb(), 1),
            "rss_before_mb": round(rss_before, 1)}


def _split(file: Path) -> dict[str, Any]:
    from interop.batch import iter_messages

    rss_before = _maxrss_mb()
    began = time.perf_counter()
    n = 0
    with file.open("rb") as f:
        for _ in iter_messages(f):
            n += 1
    seconds = time.perf_counter() - began
    return {"messages": n, "seconds": round(seconds, 2), "messages_per_s": round(n / seconds, 1),
            "file_mb": round(file.stat().st_size / 2**20, 1), "peak_rss_mb": round(_maxrss_mb(), 1),
            "rss_before_mb": round(rss_before, 1)}


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.files", *args], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.files", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages in the ingest-rate file")
    parser.add_argument("--split-mb", type=float, default=100, help="size of the file streamed by the splitter")
    parser.add_argument("--full-mb", type=float, default=0, help="also ingest a file this large end to end")
    parser.add_argument("--out", type=Path)
    parser.add_argument("mode", nargs="?", choices=["ingest", "split"], help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.mode == "ingest":
        print(json.dumps(asyncio.run(_ingest(ns.db, ns.file))))
        return 0
    if ns.mode == "split":
        print(json.dumps(_split(ns.file)))
        return 0

    from infra.db import migrate
    from infra.devstack import EmbeddedPostgres, free_port

    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-files-") as tmp:
        root = Path(tmp)
        pg = EmbeddedPostgres(root / "pg", free_port(), log_file=root / "postgres.log")
        pg.start()
        try:
            def database() -> str:
                url = pg.create_database(f"bench_{uuid.uuid4().hex[:10]}")
                asyncio.run(migrate(url))
                return url

            (root / "a").mkdir()
            write_batch_file(root / "a" / "rate.hl7", messages=ns.messages)
            report["ingest"] = _child(["ingest", "--db", database(), "--file", str(root / "a" / "rate.hl7")])
            print(f"ingest: {report['ingest']}", flush=True)
            (root / "b").mkdir()
            report["split_messages"] = write_batch_file(root / "b" / "big.hl7", size_mb=ns.split_mb)
            report["split"] = _child(["split", "--file", str(root / "b" / "big.hl7")])
            print(f"split: {report['split']}", flush=True)
            if ns.full_mb:
                (root / "c").mkdir()
                write_batch_file(root / "c" / "full.hl7", size_mb=ns.full_mb)
                report["ingest_full"] = _child(["ingest", "--db", database(), "--file",
                                                str(root / "c" / "full.hl7")])
                print(f"ingest_full: {report['ingest_full']}", flush=True)
        finally:
            pg.stop()
    text = json.dumps(report, indent=1)
    if ns.out:
        ns.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
