"""Crash tests: kill -9 of the worker, the dispatcher or the listener in the middle of a run.

Invariant: a message Lifeline ACKed is never lost; after a restart every ACKed message is delivered, in patient
order; the only duplicates are the in-flight message of a killed sender (the listener case: the sender resends
what it got no ACK for) or a delivery in flight in the killed worker (Temporal retries the activity).

The production processes run as subprocesses (`python -m workers.cli worker|dispatcher|listener`) against the
session's PostgreSQL and Temporal; downstream is python-hl7's asyncio MLLP server, upstream its MLLP client.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import hl7
import pytest
import yaml
from hl7.mllp import open_hl7_connection
from temporalio.testing import WorkflowEnvironment

from infra.devstack import EmbeddedPostgres, free_port
from tests.conftest import TEST_CODEC_KEY, TEST_JWT_SECRET, TEST_STORE_KEY
from tests.delivery.harness import Peer, adt, wait_for

N_MESSAGES = int(os.environ.get("LIFELINE_CRASH_MESSAGES", "1000"))
N_CONNECTIONS = 10
PATIENTS_PER_CONNECTION = 3
KILL_AT = 0.4  # fraction of the messages ACKed when the process under test is killed
ROOT = Path(__file__).resolve().parents[2]
READY = {"worker": "worker polling task queue", "dispatcher": "dispatcher started", "listener": "listening on"}


@dataclass
class Proc:
    """One production process (`lifeline worker|dispatcher|listener`), restartable, output appended to a file."""

    kind: str
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    starts: list[float] = field(default_factory=list)  # seconds from spawn to the ready line, per start

    def start(self) -> None:
        if self.log is None:
            self.log = self.log_path.open("ab")
        self.log.write(f"==== start {self.kind} ====\n".encode())
        self.log.flush()
        self._offset = self.log_path.stat().st_size
        self._spawned = time.monotonic()
        self.popen = subprocess.Popen([sys.executable, "-m", "workers.cli", self.kind], cwd=ROOT, env=self.env,
                                      stdout=self.log, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 120.0) -> None:  # a loaded CI machine starts Python slowly
        def up() -> bool:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.popen.returncode} during startup")
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                return READY[self.kind].encode() in f.read()

        await wait_for(up, timeout=timeout, interval=0.05)
        self.starts.append(time.monotonic() - self._spawned)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def close(self) -> None:
        self.kill()
        if self.log is not None:
            self.log.close()
            self.log = None


@dataclass
class Traffic:
    """What the senders did: per-patient send order of ACKed messages, and the messages sent again."""

    sent: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    acked: list[str] = field(default_factory=list)
    resent: set[str] = field(default_factory=set)
    reconnects: int = 0
    halfway: asyncio.Event = field(default_factory=asyncio.Event)


async def _send_all(port: int, n: int, traffic: Traffic) -> None:
    """Each connection sends its share, one message at a time; a patient always goes over the same connection.
    On a connection error the sender reconnects and sends the un-ACKed message again (the listener crash)."""

    async def one_connection(c: int) -> None:
        conn: tuple[Any, Any] | None = None
        try:
            for j, i in enumerate(range(c, n, N_CONNECTIONS)):
                mrn = f"MRN{c:02d}{j % PATIENTS_PER_CONNECTION}"
                control = f"C{i:05d}"
                message = hl7.parse(adt(control, mrn, seq=i))
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if conn is None:
                            conn = await asyncio.wait_for(open_hl7_connection("127.0.0.1", port), 5)
                        reader, writer = conn
                        writer.writemessage(message)
                        await writer.drain()
                        ack = await asyncio.wait_for(reader.readmessage(), 30)
                        code = str(ack.segment("MSA")[1])
                        if code == "AA":
                            break
                        assert code == "AE", str(ack)  # AE: not stored (store unavailable), send again
                    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"{control}: no ACK within 60 s ({exc!r})") from exc
                        if conn is not None:
                            conn[1].close()
                            conn = None
                        traffic.reconnects += 1
                        await asyncio.sleep(0.2)
                    traffic.resent.add(control)  # reached only when this attempt got no AA
                traffic.sent[mrn].append(control)
                traffic.acked.append(control)
                if len(traffic.acked) >= KILL_AT * n:
                    traffic.halfway.set()
        finally:
            if conn is not None:
                conn[1].close()

    await asyncio.gather(*(one_connection(c) for c in range(N_CONNECTIONS)))


def _env(db_url: str, temporal_env: WorkflowEnvironment, task_queue: str, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update({
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
        "LIFELINE_DATABASE_URL": db_url,
        "LIFELINE_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "LIFELINE_TASK_QUEUE": task_queue,
        "LIFELINE_CONFIG": str(config),
        "LIFELINE_JWT_SECRET": TEST_JWT_SECRET, "LIFELINE_STORE_KEY": TEST_STORE_KEY,
        "LIFELINE_CODEC_KEY": TEST_CODEC_KEY,
        "LIFELINE_DISPATCHER_SWEEP_SECONDS": "0.5",
    })
    return env


def _write_config(path: Path, listen_port: int, peer_port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "channels": [{"name": "adt-in", "mllp": {"host": "127.0.0.1", "port": listen_port},
                      "routes": [{"to": "lab"}]}],
        "destinations": [{
            "name": "lab",
            "mllp": {"host": "127.0.0.1", "port": peer_port, "ack_timeout": "3s", "connect_timeout": "1s"},
            "ordering": {"key": "PID-3.1"},
            "retry": {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s", "maximum_attempts": 50},
        }],
    }))
    return path


async def _in_flight(conn: asyncpg.Connection) -> set[str]:
    """Control ids of deliveries whose workflow was started and that are not recorded delivered yet."""
    rows = await conn.fetch("select m.control_id from deliveries d join messages m on m.id = d.message_id"
                            " where d.status = 'started'")
    return {r["control_id"] for r in rows}


def _dump(procs: list[Proc]) -> None:
    for p in procs:
        if p.log is not None:
            p.log.flush()
        text = p.log_path.read_text(errors="replace") if p.log_path.exists() else "(no output)"
        sys.stderr.write(f"\n----- {p.kind} output ({p.log_path}) -----\n{text[-20000:]}\n")


async def _crash_run(victim: str, tmp_path: Path, db_url: str, temporal_env: WorkflowEnvironment) -> None:
    peer = Peer()
    peer_port = await peer.start()
    listen_port = free_port()
    config = _write_config(tmp_path / "lifeline.yaml", listen_port, peer_port)
    env = _env(db_url, temporal_env, f"crash-{victim}-{uuid.uuid4().hex[:8]}", config)
    procs = {k: Proc(k, env, tmp_path / f"{k}.log") for k in ("worker", "dispatcher", "listener")}
    traffic = Traffic()
    conn = await asyncpg.connect(db_url)
    failed = True
    try:
        for p in procs.values():
            p.start()
        await asyncio.gather(*(p.ready() for p in procs.values()))
        began = time.monotonic()
        in_flight: set[str] = set()
        at_kill: dict[str, int] = {}

        async def crash() -> None:
            # Mid-run: 40 % of the messages ACKed; for the worker and the dispatcher also deliveries flowing
            # (10 % at the peer), which on this machine can come after the last ACK.
            await traffic.halfway.wait()
            if victim != "listener":
                await wait_for(lambda: len(peer.received) >= N_MESSAGES // 10, timeout=60, interval=0.01)
            procs[victim].kill()
            at_kill.update(acked=len(traffic.acked), delivered=len(peer.received))
            await asyncio.sleep(1)
            # Just before the restart: a dispatcher transaction that was starting workflows has committed by now,
            # and nothing started since has been sent (the worker is down), so this is a superset of the sends
            # the killed worker had in flight; ordered lanes bound it to one per patient.
            in_flight.update(await _in_flight(conn))
            procs[victim].start()
            await procs[victim].ready()

        await asyncio.gather(_send_all(listen_port, N_MESSAGES, traffic), crash())
        sent_done = time.monotonic() - began
        acked = set(traffic.acked)
        assert len(acked) == len(traffic.acked) == N_MESSAGES

        await wait_for(lambda: acked <= set(peer.control_ids()), timeout=180, interval=0.5)
        await wait_for(lambda: conn.fetchval("select count(*) = $1 and bool_and(status = 'delivered')"
                                             " from deliveries", N_MESSAGES), timeout=60, interval=0.5)
        await asyncio.sleep(1)  # anything extra would arrive now
        received = peer.control_ids()

        # Nothing the peer got that nobody sent; each ACKed message at least once.
        assert set(received) == acked
        # Duplicates only for what was in flight in the killed process.
        counts: dict[str, int] = defaultdict(int)
        for c in received:
            counts[c] += 1
        dups = {c for c, k in counts.items() if k > 1}
        allowed = {"worker": in_flight, "dispatcher": set(), "listener": traffic.resent}[victim]
        if not dups <= allowed:
            history = await conn.fetch(
                "select m.control_id, a.attempt, a.at, a.outcome, a.error_class from delivery_attempts a"
                " join messages m on m.id = a.message_id where m.control_id = any($1::text[]) order by a.id",
                sorted(dups - allowed))
            raise AssertionError(f"unexpected duplicates {sorted(dups - allowed)}; attempts {list(map(dict, history))}")
        if victim == "worker":  # at most one delivery in flight per lane
            assert len(in_flight) <= N_CONNECTIONS * PATIENTS_PER_CONNECTION, sorted(in_flight)
        if victim == "listener":
            assert traffic.resent, "the listener crash did not interrupt any sender"
        # Per-patient order on the peer is the send order (a duplicate counts at its first arrival).
        by_patient: dict[str, list[str]] = defaultdict(list)
        for m in peer.received:
            mrn, control = str(m.segment("PID")[3][0][0]), str(m.segment("MSH")[10])
            if control not in by_patient[mrn]:
                by_patient[mrn].append(control)
        for mrn, controls in traffic.sent.items():
            assert by_patient[mrn] == controls, mrn
        total = time.monotonic() - began
        startup = ", ".join(f"{p.kind} {'/'.join(f'{t:.2f}' for t in p.starts)}" for p in procs.values())
        sys.stderr.write(
            f"\ncrash {victim}: {N_MESSAGES} messages ACKed in {sent_done:.1f}s, all delivered in {total:.1f}s;"
            f" killed at {at_kill['acked']} ACKed / {at_kill['delivered']} delivered, {len(in_flight)} in flight;"
            f" duplicates {len(dups)}; sender reconnects {traffic.reconnects}; startup s: {startup}\n")
        failed = False
    finally:
        for p in procs.values():
            p.close()
        await conn.close()
        await peer.stop()
        if failed:
            _dump(list(procs.values()))


@pytest.mark.parametrize("victim", ["worker", "dispatcher", "listener"])
async def test_kill_9_mid_run_loses_nothing(victim: str, tmp_path: Path, pg_server: EmbeddedPostgres, db_url: str,
                                            temporal_env: WorkflowEnvironment) -> None:
    await _crash_run(victim, tmp_path, db_url, temporal_env)
