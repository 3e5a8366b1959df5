"""File and SFTP destinations inside the durable DeliveryWorkflow: one file per message or FHS/BHS batch files,
named by the template, written under a temporary name and renamed; an SFTP server that is down for a while gets
every file once it is back, none twice, none partial."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from infra.config import LifelineConfig, validate_config
from infra.crypto import Cipher
from interop.batch import split_bytes
from interop.message import parse
from tests.delivery.harness import Engine, adt, running, send_mllp, wait_for
from tests.files.sftp_server import SftpServer

RETRY = {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s", "maximum_attempts": 200}


def config(dest: dict[str, Any]) -> LifelineConfig:
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "drop"}]}],
        "destinations": [{"name": "drop", "retry": RETRY, **dest}],
    }, "test")


def controls_in(files: list[Path]) -> list[str]:
    out = []
    for f in files:
        out += [parse(i.raw.decode()).control_id for i in split_bytes(f.read_bytes())]
    return out


def visible(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.hl7")) if directory.exists() else []


async def test_file_destination_writes_one_named_file_per_message(
        tmp_path: Path, pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, db_url: str,
        task_queue: str) -> None:
    out = tmp_path / "out"
    cfg = config({"file": {"dir": str(out), "newline": "crlf"}})
    async with running(Engine(pool, temporal_client, cfg, store_cipher, task_queue, db_url)) as eng:
        codes = await send_mllp(eng.mllp_port, [adt(f"D{i:03d}", f"MRN{i}") for i in range(12)])
        assert set(codes) == {"AA"}
        await wait_for(lambda: len(visible(out)) == 12, timeout=120)
        await wait_for(lambda: pool.fetchval("select bool_and(status = 'delivered') and count(*) = 12"
                                             " from deliveries"), timeout=30)
    files = visible(out)
    assert sorted(controls_in(files)) == [f"D{i:03d}" for i in range(12)]
    for f in files:
        assert re.fullmatch(r"adt-in-D\d{3}-\d{17}\.hl7", f.name), f.name  # {channel}-{control_id}-{ts}.hl7
        data = f.read_bytes()
        assert data.endswith(b"\r\n") and b"\r\r" not in data and data.startswith(b"MSH|")
    assert not list(out.glob(".*.part"))
    answers = await pool.fetch("select peer_answer from deliveries")
    assert all(a["peer_answer"].startswith("written adt-in-D") for a in answers)


async def test_batched_file_destination_closes_files_by_count_and_by_time(
        tmp_path: Path, pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, db_url: str,
        task_queue: str) -> None:
    out = tmp_path / "out"
    cfg = config({"file": {"dir": str(out), "name_template": "{destination}-{control_id}.hl7",
                           "batch": {"max_messages": 10, "max_wait": "30s"}}})
    async with running(Engine(pool, temporal_client, cfg, store_cipher, task_queue, db_url)) as eng:
        await send_mllp(eng.mllp_port, [adt(f"B{i:03d}", f"MRN{i}") for i in range(25)])
        await wait_for(lambda: sum(len(split_bytes(f.read_bytes())) for f in visible(out)) == 25, timeout=120)
        await wait_for(lambda: pool.fetchval("select bool_and(status = 'delivered') and count(*) = 25"
                                             " from deliveries"), timeout=60)
    files = visible(out)
    sizes = [len(split_bytes(f.read_bytes())) for f in sorted(files, key=lambda f: f.stat().st_mtime)]
    assert sum(sizes) == 25 and max(sizes) <= 10  # never more than max_messages
    assert 10 in sizes  # sealed by count
    assert sizes[-1] == 25 % 10 or sizes[-1] < 10  # the rest written once max_wait passed
    assert sorted(controls_in(files)) == [f"B{i:03d}" for i in range(25)]
    for f in files:
        text = f.read_bytes().decode()
        assert text.startswith("FHS|^~\\&|") and "\rBHS|" in text
        n = len(split_bytes(f.read_bytes()))
        assert text.endswith(f"BTS|{n}\rFTS|1\r")
    rows = await pool.fetch("select status, messages from file_batches order by id")
    assert [r["status"] for r in rows] == ["written"] * len(files)


@pytest.mark.parametrize("batched", [False, True], ids=["per-message", "batched"])
async def test_sftp_destination_down_for_a_while_gets_every_file_once_none_partial(
        batched: bool, tmp_path: Path, pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher,
        db_url: str, task_queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server = SftpServer(tmp_path / "root")
    await server.start()
    known = server.known_hosts(tmp_path / "kh")
    await server.stop()  # down from the start: the first attempts are refused
    monkeypatch.setenv("DROP_PW", "s3cret-pass")
    n = 30
    sftp: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "username": "lab", "password_env": "DROP_PW",
                            "known_hosts": str(known), "dir": "/inbound", "connect_timeout": "2s", "timeout": "10s"}
    if batched:
        sftp["batch"] = {"max_messages": 8, "max_wait": "2s"}
    cfg = config({"sftp": sftp})
    inbound = server.root / "inbound"
    async with running(Engine(pool, temporal_client, cfg, store_cipher, task_queue, db_url)) as eng:
        await send_mllp(eng.mllp_port, [adt(f"S{i:03d}", f"MRN{i}") for i in range(n)])
        await wait_for(lambda: pool.fetchval("select count(*) >= 3 from delivery_attempts"
                                             " where error_class = 'refused'"), timeout=60)
        assert not inbound.exists()
        await asyncio.sleep(0)
        await server.start()  # back on the same port
        await wait_for(lambda: len(controls_in(visible(inbound))) >= n, timeout=180, interval=0.25)
        await wait_for(lambda: pool.fetchval("select bool_and(status = 'delivered') and count(*) = $1"
                                             " from deliveries", n), timeout=60)
        await server.stop()
    counts = Counter(controls_in(visible(inbound)))
    assert sorted(counts) == [f"S{i:03d}" for i in range(n)] and set(counts.values()) == {1}
    assert not [p for p in inbound.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    if batched:
        for f in visible(inbound):
            assert f.read_bytes().endswith(f"BTS|{len(split_bytes(f.read_bytes()))}\rFTS|1\r".encode())
    else:
        assert len(visible(inbound)) == n
    assert await pool.fetchval("select count(*) from dead_letters") == 0
