"""SFTP source against a real SFTP server (asyncssh's): a 10,000-message batch file uploaded to it is delivered to a
python-hl7 MLLP peer, every message exactly once, although `lifeline poller` is killed with SIGKILL in the middle
of the file; logins by password (environment) and private key (file); host-key checking names the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import asyncssh
import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from infra.config import validate_config
from infra.crypto import Cipher
from infra.devstack import EmbeddedPostgres
from tests.delivery.harness import Peer, wait_for
from tests.files.common import batch_bytes, control, proc_env, spawn
from tests.files.sftp_server import SftpServer
from workers.poller import FilePoller, SftpDir

# The suite runs 1,000 messages (well inside CI's budget); the 10,000-message acceptance run is
# LIFELINE_FILES_MESSAGES=10000 (docs/files.md), which takes minutes of delivery at the Temporal server's pace.
N = int(os.environ.get("LIFELINE_FILES_MESSAGES", "1000"))


async def upload(server: SftpServer, name: str, data: bytes, known_hosts: Path) -> None:
    """Drop a file on the server the way a lab does: an SFTP upload."""
    assert server.password is not None
    async with asyncssh.connect("127.0.0.1", server.port, username=server.username, password=server.password,
                                known_hosts=str(known_hosts), client_keys=[], agent_path=None) as conn:
        async with conn.start_sftp_client() as sftp:
            async with sftp.open(name, "wb") as f:
                await f.write(data)


async def test_large_batch_on_sftp_reaches_the_mllp_peer_exactly_once_across_a_kill_9_of_the_poller(
        tmp_path: Path, pg_server: EmbeddedPostgres, db_url: str, temporal_env: WorkflowEnvironment) -> None:
    server = SftpServer(tmp_path / "sftp-root")
    await server.start()
    (server.root / "outbound").mkdir()
    known_hosts = server.known_hosts(tmp_path / "known_hosts")
    peer = Peer()
    peer_port = await peer.start()
    config_path = tmp_path / "lifeline.yaml"
    config_path.write_text(yaml.safe_dump({
        "channels": [{"name": "reflab", "sftp": {
            "host": "127.0.0.1", "port": server.port, "username": "lab", "password_env": "REFLAB_SFTP_PASSWORD",
            "known_hosts": str(known_hosts), "dir": "/outbound", "poll_interval": "300ms", "min_age": "500ms"},
            "routes": [{"to": "lab"}]}],
        "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": peer_port, "ack_timeout": "5s"},
                          "retry": {"initial_interval": "200ms", "maximum_interval": "1s", "maximum_attempts": 50}}],
    }))
    task_queue = f"sftp-{uuid.uuid4().hex[:8]}"
    env = proc_env(db_url, config_path, tmp_path / "data", REFLAB_SFTP_PASSWORD="s3cret-pass",
                   LIFELINE_TASK_QUEUE=task_queue,
                   LIFELINE_TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host)
    conn = await asyncpg.connect(db_url)
    # The production processes, each on its own: only the poller is killed.
    procs = {k: spawn(k, env, tmp_path / f"{k}.log") for k in ("worker", "dispatcher", "poller")}
    ok = False
    try:
        began = time.monotonic()
        await upload(server, "outbound/results-0001.hl7", batch_bytes(N, prefix="S", mrns=50), known_hosts)
        await wait_for(lambda: conn.fetchval("select count(*) >= $1 from messages", N // 3), timeout=600,
                       interval=0.02)
        procs["poller"].send_signal(signal.SIGKILL)
        procs["poller"].wait(10)
        at_kill = await conn.fetchval("select count(*) from messages")
        procs["poller"] = spawn("poller", env, tmp_path / "poller.log")
        await wait_for(lambda: (server.root / "outbound" / "processed" / "results-0001.hl7").exists(),
                       timeout=600, interval=0.2)
        stored = time.monotonic() - began
        expected = {control(i, "S") for i in range(N)}
        # Delivery runs at the Temporal server's pace (docs/benchmarks.md: tens of workflows/s on 2 cores).
        await wait_for(lambda: len(set(peer.control_ids())) >= N, timeout=300 + N * 0.25, interval=1)
        await wait_for(lambda: conn.fetchval("select count(*) = $1 and bool_and(status = 'delivered')"
                                             " from deliveries", N), timeout=120, interval=0.5)
        received = peer.control_ids()
        counts = Counter(received)
        assert set(counts) == expected
        assert [c for c, k in counts.items() if k > 1] == []  # nothing twice (only the poller was killed)
        assert await conn.fetchval("select count(*) from messages") == N
        ingest = await conn.fetchrow("select messages, accepted, rejected, outcome, source from file_ingests")
        assert dict(ingest) == {"messages": N, "accepted": N, "rejected": 0, "outcome": "processed",
                                "source": "sftp"}
        assert N // 3 <= at_kill < N
        assert "password" in server.logins
        sys.stderr.write(f"\nsftp {N}: stored in {stored:.1f}s, delivered in {time.monotonic() - began:.1f}s,"
                         f" poller killed at {at_kill} stored\n")
        ok = True
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await conn.close()
        await peer.stop()
        await server.stop()
        if not ok:
            for k in procs:
                sys.stderr.write(f"----- {k} -----\n" + (tmp_path / f"{k}.log").read_text(errors="replace")[-5000:])


def sftp_channel(server: SftpServer, **opts: object) -> object:
    cfg = {"host": "127.0.0.1", "port": server.port, "username": server.username, "dir": "in",
           "poll_interval": "100ms", "min_age": "100ms", **opts}
    return validate_config({"channels": [{"name": "reflab", "sftp": cfg}]}, "t").channels[0]


async def poller(pool: asyncpg.Pool, cipher: Cipher, server: SftpServer, tmp_path: Path,
                 **opts: object) -> FilePoller:
    channel = sftp_channel(server, **opts)
    assert channel.sftp is not None  # type: ignore[attr-defined]
    return FilePoller(channel, pool, cipher, SftpDir(channel.sftp, tmp_path / "spool"))  # type: ignore[arg-type,attr-defined]


async def test_private_key_login_from_a_file_ingests_and_moves_the_remote_file(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(key.export_private_key())
    server = SftpServer(tmp_path / "root", password=None, client_key=key)
    await server.start()
    (server.root / "in").mkdir()
    (server.root / "in" / "a.hl7").write_bytes(batch_bytes(25, newline="\n"))
    p = await poller(pool, store_cipher, server, tmp_path, private_key_file=str(key_file),
                     known_hosts=str(server.known_hosts(tmp_path / "kh")), after="delete", ack=True)
    try:
        async def done() -> bool:
            await p.poll_once()
            return not (server.root / "in" / "a.hl7").exists()

        await wait_for(done, timeout=30)
        assert await pool.fetchval("select count(*) from messages where source = 'sftp'") == 25
        assert server.logins and set(server.logins) == {"publickey"}
        assert not (server.root / "in" / "processed").exists()  # after: delete
        assert (server.root / "in" / "ack" / "a.hl7").read_bytes().count(b"MSA|AA|") == 25
        row = await pool.fetchrow("select location, consecutive_failures, files_total from file_sources")
        assert row["location"] == f"sftp://lab@127.0.0.1:{server.port}/in" and row["files_total"] == 1
    finally:
        await p.source.reset()
        await server.stop()


@pytest.mark.parametrize("problem", ["wrong_password", "unknown_host_key", "no_known_hosts", "down"])
async def test_login_and_host_key_failures_are_recorded_with_a_clear_error_naming_the_host(
        problem: str, tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = SftpServer(tmp_path / "root")
    await server.start()
    (server.root / "in").mkdir()
    monkeypatch.setenv("REFLAB_PW", "wrong" if problem == "wrong_password" else "s3cret-pass")
    known = server.known_hosts(tmp_path / "kh", asyncssh.generate_private_key("ssh-ed25519")
                               if problem == "unknown_host_key" else None)
    opts: dict[str, object] = {"password_env": "REFLAB_PW", "known_hosts": str(known)}
    if problem == "no_known_hosts":
        opts["known_hosts"] = str(tmp_path / "missing_known_hosts")
    if problem == "down":
        await server.stop()
    p = await poller(pool, store_cipher, server, tmp_path, **opts)
    try:
        await p.poll_once()
        await p.poll_once()
        row = await pool.fetchrow("select * from file_sources")
        expected = {"wrong_password": "auth", "unknown_host_key": "hostkey", "no_known_hosts": "hostkey",
                    "down": "refused"}[problem]
        assert row["last_error_class"] == expected and row["consecutive_failures"] == 2
        assert f"127.0.0.1:{server.port}" in row["last_error"] or "127.0.0.1" in row["last_error"]
        assert row["last_ok_at"] is None
        assert "s3cret" not in row["last_error"] and "wrong" not in row["last_error"]
    finally:
        await p.source.reset()
        await server.stop()
