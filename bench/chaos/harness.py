"""The chaos run: `lifeline up` in a scratch directory, python-hl7 senders and receivers around it, kill -9 at
random moments, then account for every message.

Senders behave as a real EHR interface: one message at a time per connection, and a message answered AE (or not
answered at all: the connection dropped) is sent again, same control id, until it is answered AA. Messages of type
ADT^A01 go to the `ordered` destination (FIFO per patient, PID-3.1, one patient per sender), ADT^A08 to `unordered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hl7
from hl7.mllp import open_hl7_connection, start_hl7_server

from infra.devstack import free_port

VICTIMS = ("listener", "dispatcher", "worker", "api", "temporal", "postgres")


@dataclass
class ChaosOptions:
    messages: int = 1000
    kills_per_process: int = 1
    victims: tuple[str, ...] = VICTIMS
    rate: float = 25.0  # messages per second offered, over all senders
    senders: int = 4
    seed: int = 14
    recover_timeout: float = 120.0
    drain_timeout: float = 600.0
    workdir: Path | None = None


@dataclass
class Kill:
    victim: str
    at: float  # seconds since the stream started
    pid: int
    back_s: float | None = None  # until the supervisor shows it running and healthy with a new pid
    first_ack_s: float | None = None  # until the first AA of a message first sent after the kill
    first_delivery_s: float | None = None  # until the first delivery at a peer once it is back
    recover_s: float | None = None  # max of the three: the process back and the flow through it again
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    order_violations: int = 0
    ae_answers: int = 0
    resends: int = 0


class UpStack:
    """`lifeline up` as a subprocess in its own directory, on free ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_port, self.temporal_port, self.ui_port = free_port(), free_port(), free_port()
        self.pg_port, self.mllp_port = free_port(), free_port()
        self.ordered_port, self.unordered_port = free_port(), free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def write_config(self) -> None:
        retry = "{initial_interval: 200ms, backoff: 2, maximum_interval: 2s, maximum_attempts: 10000}"
        (self.root / "lifeline.yaml").write_text(
            "channels:\n"
            f"  - name: adt-in\n    mllp: {{port: {self.mllp_port}, host: 127.0.0.1}}\n"
            "    routes:\n"
            "      - {to: ordered, when: {message_type: ['ADT^A01*']}}\n"
            "      - {to: unordered, when: {message_type: ['ADT^A08*']}}\n"
            "destinations:\n"
            f"  - name: ordered\n    mllp: {{host: 127.0.0.1, port: {self.ordered_port}, ack_timeout: 10s,"
            " connect_timeout: 2s}\n"
            f"    ordering: {{key: PID-3.1}}\n    retry: {retry}\n"
            f"  - name: unordered\n    mllp: {{host: 127.0.0.1, port: {self.unordered_port}, ack_timeout: 10s,"
            " connect_timeout: 2s}\n"
            f"    retry: {retry}\n"
            "monitor: {enabled: false}\n")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        env.update({"LIFELINE_API_PORT": str(self.api_port), "LIFELINE_EMBEDDED_PG_PORT": str(self.pg_port),
                    "LIFELINE_PUBLIC_URL": f"http://localhost:{self.api_port}", "LIFELINE_LOG_LEVEL": "WARNING"})
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self, timeout: float = 120.0) -> None:
        self.write_config()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up", "--temporal-port", str(self.temporal_port),
             "--ui-port", str(self.ui_port), "--separate-dispatcher"],  # the dispatcher is a victim of its own
            cwd=self.root, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            self.output.append(line)
            if line.startswith("Lifeline is up."):
                import threading

                threading.Thread(target=self._drain_output, daemon=True).start()
                return
        raise RuntimeError("lifeline up did not come up:\n" + "".join(self.output[-30:]))

    def _drain_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def status(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / ".lifeline" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return {p["name"]: p for p in data["processes"]}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            import psutil

            for p in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    p.kill()
            self.proc.kill()


@dataclass
class Receiver:
    """A downstream system on python-hl7's asyncio MLLP server: AA for everything, every receipt recorded."""

    name: str
    received: list[tuple[str, float]] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None

    async def start(self, port: int) -> None:
        async def handle(reader: Any, writer: Any) -> None:
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()
                    self.received.append((str(msg.segment("MSH")[10]), time.monotonic()))
                    writer.writemessage(msg.create_ack("AA"))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await start_hl7_server(handle, "127.0.0.1", port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def control_id(sender: int, k: int) -> str:
    return f"C{sender:02d}{k:07d}"


def message(sender: int, k: int) -> str:
    kind = "A01" if k % 2 == 0 else "A08"
    return "\r".join([
        f"MSH|^~\\&|CHAOS|HOSP{sender}|LAB|LABF|20260101120000||ADT^{kind}^ADT_A01|{control_id(sender, k)}|P|2.5.1",
        f"EVN|{kind}|20260101120000",
        f"PID|1||CHAOS{sender:02d}^^^HOSP^MR||DOE^JANE||19800101|F",
        f"PV1|1|I|WARD^{k % 50}^1",
    ])


@dataclass
class SenderStats:
    acked: dict[str, float] = field(default_factory=dict)  # control id -> time of its AA
    first_sent: dict[str, float] = field(default_factory=dict)
    ae: list[float] = field(default_factory=list)
    resends: list[float] = field(default_factory=list)


async def run_sender(sender: int, count: int, interval: float, port: int, stats: SenderStats,
                     stop: asyncio.Event, kills_done: asyncio.Event) -> None:
    """Send at least `count` messages in order (and on until every kill is done), one at a time, at most one per
    `interval` s; resend each until AA."""
    conn: tuple[Any, Any] | None = None
    next_at = time.monotonic()
    k = -1
    while True:
        k += 1
        if k >= count and kills_done.is_set():
            break
        cid = control_id(sender, k)
        text = message(sender, k)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        while not stop.is_set():
            stats.first_sent.setdefault(cid, time.monotonic())
            try:
                if conn is None:
                    conn = await asyncio.wait_for(open_hl7_connection("127.0.0.1", port), 5)
                reader, writer = conn
                writer.writemessage(hl7.parse(text))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), 15)
                code = str(ack.segment("MSA")[1])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, hl7.ParseException):
                code = "none"
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn[1].close()
                conn = None
            if code == "AA":
                stats.acked[cid] = time.monotonic()
                break
            if code == "AE":
                stats.ae.append(time.monotonic())
            stats.resends.append(time.monotonic())
            await asyncio.sleep(0.3)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn[1].close()


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


async def wait_back(stack: UpStack, victim: str, old_pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = stack.status().get(victim, {})
        if p.get("state") == "running" and p.get("health") == "ok" and p.get("pid") not in (None, old_pid):
            return True
        await asyncio.sleep(0.1)
    return False


async def run_chaos(opts: ChaosOptions, log: Any = None) -> dict[str, Any]:
    """One chaos run; returns the report (see report.render_markdown)."""
    say = log.info if log is not None else (lambda *a: None)
    rng = random.Random(opts.seed)
    tmp = None
    root = opts.workdir
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="lifeline-chaos-")
        root = Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    stack = UpStack(root)
    ordered, unordered = Receiver("ordered"), Receiver("unordered")
    started_wall = time.time()
    load_start = loadavg()
    t_setup = time.monotonic()
    await ordered.start(stack.ordered_port)
    await unordered.start(stack.unordered_port)
    kills: list[Kill] = []
    stats = SenderStats()
    try:
        await asyncio.to_thread(stack.start)
        say("lifeline up is up in %.1fs", time.monotonic() - t_setup)
        per_sender = -(-opts.messages // opts.senders)
        interval = opts.senders / opts.rate
        stop, kills_done = asyncio.Event(), asyncio.Event()
        t0 = time.monotonic()
        senders = [asyncio.create_task(run_sender(i, per_sender, interval, stack.mllp_port, stats, stop,
                                                  kills_done))
                   for i in range(opts.senders)]
        plan = [v for v in opts.victims for _ in range(opts.kills_per_process)]
        rng.shuffle(plan)
        stream_s = per_sender * interval
        slot = stream_s / (len(plan) + 1)
        try:
            for j, victim in enumerate(plan):
                when = t0 + slot * (j + 0.5) + rng.uniform(0, slot)
                await asyncio.sleep(max(0.0, when - time.monotonic()))
                pid = stack.status().get(victim, {}).get("pid")
                if not isinstance(pid, int):
                    raise RuntimeError(f"no pid for {victim} in the status file")
                kill_t = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                k = Kill(victim=victim, at=round(kill_t - t0, 2), pid=pid)
                kills.append(k)
                say("kill -9 %s (pid %d) at %.1fs", victim, pid, k.at)
                if await wait_back(stack, victim, pid, opts.recover_timeout):
                    k.back_s = round(time.monotonic() - kill_t, 2)
                say("  %s back after %ss", victim, k.back_s)
        finally:
            kills_done.set()
        await asyncio.gather(*senders)
        sent_s = time.monotonic() - t0
        say("all %d messages ACKed in %.1fs; draining", len(stats.acked), sent_s)
        want = set(stats.acked)
        deadline = time.monotonic() + opts.drain_timeout
        drain_complete = False
        while time.monotonic() < deadline:
            got = {c for c, _ in ordered.received} | {c for c, _ in unordered.received}
            if want <= got:
                drain_complete = True
                break
            await asyncio.sleep(0.5)
        drained_s = time.monotonic() - t0
        final_status = stack.status()
    finally:
        await asyncio.to_thread(stack.stop)
        await ordered.stop()
        await unordered.stop()
    report = account(opts, t0, kills, stats, ordered, unordered)
    report.update(
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        options={k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                 for k, v in asdict(opts).items()},
        stream_seconds=round(sent_s, 1), drained_seconds=round(drained_s, 1), drain_complete=drain_complete,
        load={"nproc": os.cpu_count(), "loadavg_at_start": load_start, "loadavg_at_end": loadavg()},
        restarts={n: p.get("restarts") for n, p in final_status.items()},
        supervisor_lines=[line.rstrip() for line in stack.output if "restart" in line or "crash loop" in line
                          or "exited" in line or "back" in line][-200:],
    )
    if tmp is not None:
        tmp.cleanup()
    return report


def account(opts: ChaosOptions, t0: float, kills: list[Kill], stats: SenderStats, ordered: Receiver,
            unordered: Receiver) -> dict[str, Any]:
    """Per kill window (from a kill to the next): ACKed, delivered, lost, duplicates, order violations."""
    receipts: dict[str, list[float]] = {}
    for cid, t in ordered.received + unordered.received:
        receipts.setdefault(cid, []).append(t)
    # Order: on each lane (one patient = one sender) of the ordered destination, a message delivered for the
    # first time after a later message of the same lane is a violation; a repeat of one already delivered is a
    # duplicate, not a violation.
    violations: list[str] = []
    high: dict[str, int] = {}
    seen: set[str] = set()
    for cid, _ in ordered.received:
        if cid in seen:
            continue
        seen.add(cid)
        lane, k = cid[:3], int(cid[3:])
        if k < high.get(lane, -1):
            violations.append(cid)
        high[lane] = max(high.get(lane, -1), k)
    bounds = [t0 + k.at for k in kills]
    all_receipts = sorted(t for _, t in ordered.received + unordered.received)

    def window(t: float) -> int:
        i = -1
        for j, b in enumerate(bounds):
            if t >= b:
                i = j
        return i

    windows: dict[int, dict[str, int]] = {}
    for cid, t_ack in stats.acked.items():
        w = windows.setdefault(window(t_ack), {"acked": 0, "delivered": 0, "lost": 0, "duplicates": 0,
                                               "order_violations": 0})
        w["acked"] += 1
        n = len(receipts.get(cid, []))
        w["delivered"] += 1 if n else 0
        w["lost"] += 0 if n else 1
        w["duplicates"] += max(0, n - 1)
    for cid in violations:
        t_ack = stats.acked.get(cid)
        if t_ack is not None:
            windows[window(t_ack)]["order_violations"] += 1
    for i, k in enumerate(kills):
        kill_t = t0 + k.at
        w = windows.get(i, {})
        for key in ("acked", "delivered", "lost", "duplicates", "order_violations"):
            setattr(k, key, w.get(key, 0))
        nxt = bounds[i + 1] if i + 1 < len(bounds) else float("inf")
        k.ae_answers = sum(1 for t in stats.ae if kill_t <= t < nxt)
        k.resends = sum(1 for t in stats.resends if kill_t <= t < nxt)
        after_acks = [t for c, t in stats.acked.items() if stats.first_sent.get(c, 0) >= kill_t]
        if after_acks:
            k.first_ack_s = round(min(after_acks) - kill_t, 2)
        # Deliveries flowing again: the first receipt at a peer once the victim is back (a backlog built while it
        # was away drains in seq order, so "the first message ACKed after the kill" would measure the backlog).
        resumed = kill_t + (k.back_s or 0.0)
        later = [t for t in all_receipts if t >= resumed]
        if later:
            k.first_delivery_s = round(min(later) - kill_t, 2)
        parts = [x for x in (k.back_s, k.first_ack_s, k.first_delivery_s) if x is not None]
        k.recover_s = max(parts) if parts and k.back_s is not None else None
    # At-least-once: a message may reach a peer twice only when a worker was killed between its ACK and its last
    # receipt (it had sent but not yet recorded the delivery). Any other repeat is unexplained. Counting by kill
    # window is not enough: with a backlog, a message ACKed in one window is often sent in a later one.
    worker_kills = [t0 + k.at for k in kills if k.victim == "worker"]
    unexplained = sorted(cid for cid, ts in receipts.items() if len(ts) > 1 and not any(
        stats.acked.get(cid, float("inf")) <= kt <= max(ts) for kt in worker_kills))
    before = windows.get(-1, {})
    latency = sorted(min(receipts[c]) - t for c, t in stats.acked.items() if c in receipts)
    acked = len(stats.acked)
    delivered = sum(1 for c in stats.acked if c in receipts)
    totals = {
        "messages": acked, "acked": acked, "delivered": delivered, "lost": acked - delivered,
        "duplicates": sum(max(0, len(v) - 1) for v in receipts.values()),
        "order_violations": len(violations), "ae_answers": len(stats.ae), "resends": len(stats.resends),
        "unexpected": sorted(set(receipts) - set(stats.acked))[:20],
        "unexplained_duplicates": unexplained[:20],
        "ack_to_delivery_s": {"p50": _pct(latency, 0.5), "p95": _pct(latency, 0.95), "max": _pct(latency, 1.0)},
        "kills": len(kills),
        "kills_by_victim": {v: sum(1 for k in kills if k.victim == v) for v in opts.victims},
        "not_recovered": [k.victim for k in kills if k.back_s is None],
        "max_recover_s": {v: max((k.recover_s or 0.0 for k in kills if k.victim == v), default=None)
                          for v in opts.victims},
    }
    return {"totals": totals, "before_first_kill": before, "kills": [asdict(k) for k in kills],
            "ok": totals["lost"] == 0 and totals["order_violations"] == 0 and not totals["not_recovered"]
                  and not totals["unexplained_duplicates"]}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)
