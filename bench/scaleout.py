"""Scale-out: several workers, dispatchers and listeners as separate processes on one PostgreSQL and one Temporal.

Messages go over both (all) listeners; half to an ordered destination (lanes by PID-3.1), half to an unordered one.
The result counts what was lost, duplicated or out of patient order at the peers, and the CPU each process used.
Used by `python -m bench --scaleout N` (10,000 messages) and by tests/delivery/test_scaleout.py (a smaller run).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import yaml

from bench.peers import RecordingPeer
from infra.devstack import free_port
from interop.mllp import FrameDecoder, encode

ROOT = Path(__file__).resolve().parents[1]
READY = {"worker": b"worker polling task queue", "dispatcher": b"dispatcher started", "listener": b"listening on"}


def adt(control_id: str, mrn: str, app: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|{app}|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A08|20260101120000",
        f"PID|1||{mrn}^^^GENHOSP^MR||DOE^JANE||19800101|F",
        "PV1|1|I|WARD^1^1",
    ])


@dataclass
class Proc:
    kind: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.popen.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        return READY[self.kind] in self.log_path.read_bytes()

    def cpu_seconds(self) -> float:
        if self.popen is None:
            return 0.0
        try:
            t = psutil.Process(self.popen.pid).cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def rss_mb(self) -> float:
        if self.popen is None:
            return 0.0
        try:
            return round(psutil.Process(self.popen.pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def write_config(path: Path, listen_ports: list[int], ordered_port: int, unordered_port: int) -> Path:
    """One configuration for every process (live configuration shares it through the store): one channel per
    listener process, each on its own port, all routed alike."""
    mllp = {"host": "127.0.0.1", "ack_timeout": "10s", "connect_timeout": "5s"}
    retry = {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "2s", "maximum_attempts": 100}
    routes = [{"to": "ordered", "when": {"sending_application": ["EPIC"]}},
              {"to": "unordered", "when": {"sending_application": ["LABSYS"]}}]
    path.write_text(yaml.safe_dump({
        "channels": [{"name": f"adt-{i}", "mllp": {"host": "127.0.0.1", "port": port}, "routes": routes}
                     for i, port in enumerate(listen_ports)],
        "destinations": [
            {"name": "ordered", "mllp": {**mllp, "port": ordered_port}, "ordering": {"key": "PID-3.1"},
             "retry": retry},
            {"name": "unordered", "mllp": {**mllp, "port": unordered_port}, "retry": retry},
        ],
    }))
    return path


@dataclass
class Cluster:
    """`workers` workers, `dispatchers` dispatchers and `listeners` listeners (each on its own port)."""

    workdir: Path
    env: dict[str, str]
    ordered_port: int
    unordered_port: int
    workers: int = 2
    dispatchers: int = 2
    listeners: int = 2
    worker_args: list[str] = field(default_factory=list)  # e.g. ["--with-dispatcher"] (the `lifeline up` shape)
    procs: list[Proc] = field(default_factory=list)
    listen_ports: list[int] = field(default_factory=list)

    async def start(self, timeout: float = 90.0) -> None:
        me = [sys.executable, "-m", "workers.cli"]
        self.listen_ports = [free_port() for _ in range(self.listeners)]
        cfg = write_config(self.workdir / "lifeline.yaml", self.listen_ports, self.ordered_port, self.unordered_port)
        base_env = {**self.env, "LIFELINE_CONFIG": str(cfg)}
        for i in range(self.listeners):
            self.procs.append(Proc("listener", [*me, "listener", "--channel", f"adt-{i}"], base_env,
                                   self.workdir / f"listener-{i}.log"))
        for i in range(self.workers):
            self.procs.append(Proc("worker", [*me, "worker", *self.worker_args], base_env,
                                   self.workdir / f"worker-{i}.log"))
        for i in range(self.dispatchers):
            self.procs.append(Proc("dispatcher", [*me, "dispatcher"], base_env, self.workdir / f"dispatcher-{i}.log"))
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + timeout
        while not all(p.ready() for p in self.procs):
            if time.monotonic() > deadline:
                raise RuntimeError("scale-out processes not ready: "
                                   + ", ".join(f"{p.kind} {p.ready()}" for p in self.procs))
            await asyncio.sleep(0.2)

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for p in self.procs:
            out[p.kind] += p.cpu_seconds()
        return dict(out)

    def rss_mb(self) -> dict[str, float]:
        return {p.log_path.stem: p.rss_mb() for p in self.procs}

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def process_env(database_url: str, temporal_address: str, task_queue: str, keys: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LIFELINE_DATABASE_URL": database_url,
                "LIFELINE_TEMPORAL_ADDRESS": temporal_address, "LIFELINE_TASK_QUEUE": task_queue,
                "LIFELINE_DISPATCHER_SWEEP_SECONDS": "1", "LIFELINE_LOG_LEVEL": "WARNING", **keys})
    return env


async def _send(ports: list[int], n: int, connections: int, patients_per_connection: int,
                sent: dict[str, list[str]]) -> float:
    """Closed loop over `connections` connections spread over the listeners; a patient stays on one connection.
    Returns the seconds to ACK everything; fills `sent` with each patient's control ids in send order."""

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[c % len(ports)])
        decoder = FrameDecoder()
        try:
            for j, i in enumerate(range(c, n, connections)):
                mrn = f"S{c:03d}{j % patients_per_connection}"
                control = f"X{i:06d}"
                app = "EPIC" if i % 2 == 0 else "LABSYS"
                writer.write(encode(adt(control, mrn, app)))
                await writer.drain()
                frames: list[bytes] = []
                while not frames:
                    data = await asyncio.wait_for(reader.read(65536), 60)
                    if not data:
                        raise ConnectionError("listener closed the connection")
                    frames = decoder.feed(data)
                if b"MSA|AA" not in frames[0]:
                    raise RuntimeError(f"{control}: {frames[0][:200]!r}")
                sent[f"{app}:{mrn}"].append(control)
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one(c) for c in range(connections)))
    return time.monotonic() - t0


async def run_scaleout(database_url: str, temporal_address: str, keys: dict[str, str], workdir: Path, *,
                       messages: int, connections: int = 20, patients_per_connection: int = 5,
                       timeout: float = 600.0, cpu_of: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the cluster, send `messages`, wait until every one reached its peer (or `timeout`), and count."""
    import uuid

    ordered, unordered = RecordingPeer(), RecordingPeer()
    env = process_env(database_url, temporal_address, f"scale-{uuid.uuid4().hex[:8]}", keys)
    cluster = Cluster(workdir, env, await ordered.start(), await unordered.start())
    sent: dict[str, list[str]] = defaultdict(list)
    try:
        await cluster.start()
        cpu0 = cluster.cpu_by_kind()
        extra0 = {k: f() for k, f in (cpu_of or {}).items()}
        t0 = time.monotonic()
        acked_s = await _send(cluster.listen_ports, messages, connections, patients_per_connection, sent)
        deadline = time.monotonic() + timeout
        while len(ordered.arrivals) + len(unordered.arrivals) < messages and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        delivered_s = time.monotonic() - t0
        await asyncio.sleep(1.0)  # a late duplicate would arrive now
        cpu1 = cluster.cpu_by_kind()
        extra1 = {k: f() for k, f in (cpu_of or {}).items()}
        rss = cluster.rss_mb()
    finally:
        cluster.stop()
        await ordered.stop()
        await unordered.stop()
    arrivals = ordered.arrivals + unordered.arrivals
    seen: dict[str, int] = defaultdict(int)
    for control, _ in arrivals:
        seen[control] += 1
    expected = {c for cs in sent.values() for c in cs}
    by_patient: dict[str, list[str]] = defaultdict(list)
    for control, mrn in ordered.arrivals:
        by_patient[f"EPIC:{mrn}"].append(control)
    violations = sum(1 for key, controls in sent.items() if key.startswith("EPIC:")
                     and [c for c in by_patient.get(key, []) if seen[c] == 1] != [c for c in controls if seen[c] == 1])
    cpu = {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in cpu1}
    cpu.update({k: round(extra1[k] - extra0[k], 2) for k in extra1})
    delivered = len(expected & set(seen))
    return {
        "messages": messages, "acked": len(expected), "delivered": delivered,
        "lost": len(expected - set(seen)), "duplicates": sum(v - 1 for v in seen.values() if v > 1),
        "unexpected": len(set(seen) - expected), "order_violations": violations,
        "ordered_lanes": sum(1 for k in sent if k.startswith("EPIC:")),
        "processes": {"workers": cluster.workers, "dispatchers": cluster.dispatchers, "listeners": cluster.listeners},
        "acked_per_s": round(messages / acked_s, 1), "delivered_per_s": round(delivered / delivered_s, 1),
        "seconds": round(delivered_s, 1), "cpu_seconds": cpu,
        "cpu_ms_per_message": {k: round(1000 * v / max(delivered, 1), 2) for k, v in cpu.items()},
        "rss_mb_at_end": rss,
    }
