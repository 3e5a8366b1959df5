"""`lifeline up`: the embedded default as one process tree, supervised, stopped cleanly on Ctrl-C / SIGTERM.

Every child is supervised, the embedded PostgreSQL and the Temporal dev server included: one that dies is started
again after a growing pause; one that keeps dying right after its start is a crash loop, reported once with the last
lines of its log and then tried only every CRASH_LOOP_RETRY_S. The supervisor writes `.lifeline/status.json` (what
`lifeline status` prints).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from api.auth import MAX_TOKEN_TTL_SECONDS, mint_token
from infra.config import LifelineConfig
from infra.db import migrate
from infra.devstack import (
    EmbeddedPostgres,
    StackError,
    TemporalDevServer,
    child_preexec,
    require_port,
    stop_process,
)
from infra.settings import Settings
from infra.supervision import STATUS_FILE, read_status

log = logging.getLogger("lifeline.up")

PG_PORT_ENV = "LIFELINE_EMBEDDED_PG_PORT"
DEFAULT_PG_PORT = 55432


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Development secrets, generated once and kept so stored data stays readable across runs."""
    path = data_dir / "secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    data = {
        "LIFELINE_JWT_SECRET": secrets.token_urlsafe(48),
        "LIFELINE_STORE_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "LIFELINE_CODEC_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    path.chmod(0o600)
    return data


STABLE_S = 20.0  # a child that stayed up this long counts as healthy again: its run of quick deaths resets
CRASH_LOOP_DEATHS = 5  # this many deaths in a row, each within STABLE_S of its start, is a crash loop
CRASH_LOOP_RETRY_S = 60.0  # a crash-looping child is tried again this often (its cause may go away), not in a spin
MAX_BACKOFF_S = 30.0
HEALTH_EVERY_S = 2.0
TAIL_LINES = 12


def last_lines(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last n non-empty lines of a log file (bounded read: logs can be large)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-n:]


def exit_text(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class Child:
    """One supervised process: a Lifeline process (argv) or an embedded server (server.start())."""

    name: str
    argv: list[str] | None = None
    server: EmbeddedPostgres | TemporalDevServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    started_wall: float = 0.0
    quick_deaths: int = 0
    state: str = "starting"  # running | restarting | crash-loop | stopped
    health: str = "unknown"  # ok | down | unknown
    last_exit: int | None = None
    next_start: float = 0.0
    tail: list[str] = field(default_factory=list)

    def status(self, now: float, log_path: Path) -> dict[str, object]:
        alive = self.proc is not None and self.proc.poll() is None
        return {
            "name": self.name, "pid": self.proc.pid if alive and self.proc is not None else None,
            "state": self.state, "health": self.health, "restarts": self.restarts,
            "started_at": self.started_wall if alive else None,
            "uptime_s": round(now - self.started_at, 1) if alive else 0.0,
            "last_exit": exit_text(self.last_exit) if self.last_exit is not None else None,
            "log": str(log_path), "tail": self.tail,
        }


@dataclass
class Supervisor:
    settings: Settings
    config: LifelineConfig
    temporal_port: int = 7233
    ui_port: int = 8233
    pg_port: int = DEFAULT_PG_PORT
    # The production shape (dispatcher as its own process) instead of the dispatcher inside the worker.
    separate_dispatcher: bool = False
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.data_dir = self.settings.data_dir.resolve()
        self.pg = EmbeddedPostgres(self.data_dir / "pg", self.pg_port, log_file=self.data_dir / "postgres.log")
        self.temporal = TemporalDevServer(
            self.data_dir / "temporal.db", port=self.temporal_port, ui_port=self.ui_port,
            namespace=self.settings.temporal_namespace,
            codec_endpoint=f"{self.settings.public_url}/api/codec",
            log_file=self.data_dir / "temporal.log",
        )
        self._last_health = 0.0
        self._last_status = 0.0

    def check_ports(self) -> None:
        require_port(self.pg_port, "embedded PostgreSQL")
        require_port(self.temporal_port, "Temporal frontend")
        require_port(self.ui_port, "Temporal Web UI")
        require_port(self.settings.api_port, "Lifeline API", self.settings.api_host)
        for ch in self.config.channels:
            if ch.mllp:
                require_port(ch.mllp.port, f"MLLP listener of channel {ch.name}", ch.mllp.host)

    def child_env(self, secrets_env: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        for k, v in secrets_env.items():
            env.setdefault(k, v)
        env.update({
            "LIFELINE_DATABASE_URL": self.pg.url(),
            "LIFELINE_TEMPORAL_ADDRESS": self.temporal.address,
            "LIFELINE_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        })
        if self.settings.config is not None:
            env["LIFELINE_CONFIG"] = str(Path(self.settings.config).resolve())
        return env

    def log_path(self, child: Child) -> Path:
        if child.server is not None and child.server.log_file is not None:
            return child.server.log_file
        return self.data_dir / f"{child.name}.log"

    def spawn(self, child: Child, env: dict[str, str]) -> None:
        if child.server is not None:
            child.server.start()
            child.proc = child.server.proc
        else:
            assert child.argv is not None
            out = open(self.log_path(child), "ab")  # noqa: SIM115
            child.proc = subprocess.Popen(child.argv, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                          preexec_fn=child_preexec(), start_new_session=True)
            out.close()
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.state = "running"

    def run(self) -> int:
        self.check_ports()
        secrets_env = load_or_create_secrets(self.data_dir)
        for k, v in secrets_env.items():
            os.environ.setdefault(k, v)
        jwt_secret = os.environ["LIFELINE_JWT_SECRET"]
        stop_signal: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            stop_signal.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            env = self.child_env(secrets_env)
            pg, temporal = Child("postgres", server=self.pg), Child("temporal", server=self.temporal)
            self.children = [pg, temporal]
            print(f"starting embedded PostgreSQL on 127.0.0.1:{self.pg_port} (data {self.pg.data_dir})")
            self.spawn(pg, env)
            print(f"starting Temporal dev server on {self.temporal.address} (Web UI :{self.ui_port})")
            self.spawn(temporal, env)
            applied = asyncio.run(migrate(self.pg.url()))
            print(f"migrations applied: {', '.join(applied) if applied else 'none pending'}")
            me = [sys.executable, "-m", "workers.cli"]
            # The dispatcher runs inside the worker: deliveries start eagerly (their first workflow task comes
            # straight back to that worker), the fast path the benchmark measures.
            if self.separate_dispatcher:
                procs = [Child("worker", [*me, "worker"]), Child("dispatcher", [*me, "dispatcher"])]
            else:
                procs = [Child("worker", [*me, "worker", "--with-dispatcher"])]
            procs.append(Child("api", [*me, "api"]))
            if any(ch.mllp for ch in self.config.channels):
                procs.append(Child("listener", [*me, "listener"]))
            if any(ch.file or ch.sftp for ch in self.config.channels):
                procs.append(Child("poller", [*me, "poller"]))
            self.children += procs
            for child in procs:
                self.spawn(child, env)
            token = mint_token(jwt_secret, subject="dev-admin", org="default", roles=["admin"],
                               ttl_seconds=MAX_TOKEN_TTL_SECONDS)  # the longest a token may live
            token_file = self.data_dir / "dev-token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            self.wait_ready(token, stop_signal)
            self.banner(token, token_file)
            while not stop_signal:
                self.watch(env)
                self.check_health()
                self.write_status()
                time.sleep(0.5)
            print(f"received {signal.Signals(stop_signal[0]).name}, stopping")
            return 0
        finally:
            self.shutdown()

    def wait_ready(self, token: str, stop_signal: list[int], timeout: float = 60.0) -> None:
        url = f"http://{self.settings.api_host}:{self.settings.api_port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop_signal:
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    lines = last_lines(self.log_path(child), 1)
                    raise StackError(f"{child.name} exited with {exit_text(child.proc.returncode)} at start: "
                                     f"{lines[-1] if lines else ''}")
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        if not stop_signal:
            raise StackError(f"the API did not become ready within {timeout:.0f}s (see {self.data_dir}/api.log)")

    def banner(self, token: str, token_file: Path) -> None:
        mllp = ", ".join(f"{c.name} :{c.mllp.port}" for c in self.config.channels if c.mllp) or "none"
        print("\nLifeline is up.")
        print(f"  API            {self.settings.public_url}  (docs {self.settings.public_url}/docs)")
        print(f"  Dashboard      {self.settings.public_url}/dashboard  (paste the admin token to log in)")
        print(f"  Temporal UI    http://localhost:{self.ui_port}")
        print(f"  Temporal gRPC  {self.temporal.address}")
        print(f"  PostgreSQL     {self.pg.url()}")
        print(f"  MLLP           {mllp}")
        print(f"  logs           {self.data_dir}/*.log")
        print("  status         lifeline status")
        print(f"  admin token    {token_file}\n    {token}")
        print("Ctrl-C stops everything; data stays in", self.data_dir, flush=True)

    def watch(self, env: dict[str, str]) -> None:
        """Restart any child that died (with a growing pause); report a crash loop instead of spinning."""
        for child in self.children:
            now = time.monotonic()
            if child.proc is not None and child.proc.poll() is None:
                if child.quick_deaths and now - child.started_at >= STABLE_S:
                    child.quick_deaths = 0
                    child.tail = []
                continue
            if child.proc is not None:
                self._died(child, child.proc.returncode, now)
            if now < child.next_start:
                continue
            child.restarts += 1
            print(f"restarting {child.name} (restart #{child.restarts})", flush=True)
            try:
                self.spawn(child, env)
            except StackError as exc:
                print(f"{child.name} did not come back: {exc}", flush=True)
                if child.server is not None:
                    child.server.stop()  # a half-started server must not hold its port for the next try
                child.proc = None
                self._died(child, None, time.monotonic(), started=now)
            else:
                if child.server is not None:
                    print(f"{child.name} is back (pid {child.proc.pid if child.proc else '?'})", flush=True)

    def _died(self, child: Child, code: int | None, now: float, started: float | None = None) -> None:
        child.proc = None
        child.last_exit = code
        child.health = "down"
        quick = now - (started if started is not None else child.started_at) < STABLE_S
        child.quick_deaths = child.quick_deaths + 1 if quick else 1
        if child.quick_deaths >= CRASH_LOOP_DEATHS:
            child.next_start = now + CRASH_LOOP_RETRY_S
            child.tail = last_lines(self.log_path(child))
            if child.state != "crash-loop":
                print(f"{child.name} is in a crash loop: it died {child.quick_deaths} times in a row within "
                      f"{STABLE_S:.0f}s of starting (last: {exit_text(code)}); not restarting it in a spin, "
                      f"trying again every {CRASH_LOOP_RETRY_S:.0f}s. Last lines of {self.log_path(child)}:",
                      flush=True)
                for line in child.tail:
                    print(f"    {line}", flush=True)
            child.state = "crash-loop"
        else:
            backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (child.quick_deaths - 1))
            child.next_start = now + backoff
            child.state = "restarting"
            print(f"{child.name} exited ({exit_text(code)}); restarting in {backoff:g}s", flush=True)

    def check_health(self) -> None:
        """Cheap liveness probes (a TCP connect or /healthz) every HEALTH_EVERY_S, for `lifeline status`."""
        now = time.monotonic()
        if now - self._last_health < HEALTH_EVERY_S:
            return
        self._last_health = now
        mllp_ports = [(c.mllp.host, c.mllp.port) for c in self.config.channels if c.mllp]
        for child in self.children:
            if child.proc is None or child.proc.poll() is not None:
                child.health = "down"
                continue
            if child.name == "postgres":
                ok = _tcp_ok("127.0.0.1", self.pg_port)
            elif child.name == "temporal":
                ok = _tcp_ok("127.0.0.1", self.temporal_port)
            elif child.name == "listener" and mllp_ports:
                host, port = mllp_ports[0]
                ok = _tcp_ok("127.0.0.1" if host in ("0.0.0.0", "") else host, port)
            elif child.name == "api":
                ok = _http_ok(f"http://{self.settings.api_host}:{self.settings.api_port}/healthz")
            else:
                ok = True  # worker, dispatcher: alive is all the supervisor can see (the engine adapter sees more)
            child.health = "ok" if ok else ("starting" if now - child.started_at < 30 else "down")

    def write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        data = {"supervisor_pid": os.getpid(), "updated_at": time.time(), "stopping": self.stopping,
                "processes": [c.status(now, self.log_path(c)) for c in self.children]}
        path = self.data_dir / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Ingress first so nothing new is ACKed, then the rest, then the servers they use.
        for child in reversed(self.children):
            if child.server is not None:
                child.server.stop()
            elif child.proc is not None:
                stop_process(child.proc, timeout=20)
            child.state, child.proc = "stopped", None
        if self.children:
            with contextlib.suppress(OSError):
                self.write_status(force=True)
        print("stopped", flush=True)


def _tcp_ok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def print_status(data_dir: Path, as_json: bool = False) -> int:
    """`lifeline status`: each process, its pid, uptime, restarts and health; 0 when all are running and healthy."""
    data = read_status(data_dir)
    if data is None:
        print(f"lifeline up is not running (no live supervisor in {data_dir})")
        return 1
    procs = data.get("processes")
    assert isinstance(procs, list)
    if as_json:
        print(json.dumps(data, indent=1))
    else:
        print(f"lifeline up (supervisor pid {data['supervisor_pid']})")
        print(f"  {'PROCESS':<11}{'PID':>8}  {'STATE':<11}{'HEALTH':<9}{'UPTIME':>9}{'RESTARTS':>10}  LAST EXIT")
        for p in procs:
            pid = p.get("pid") or "-"
            print(f"  {p['name']:<11}{pid!s:>8}  {p['state']:<11}{p['health']:<9}"
                  f"{_duration(float(p.get('uptime_s') or 0)):>9}{p['restarts']:>10}  {p.get('last_exit') or '-'}")
        for p in procs:
            if p.get("state") == "crash-loop":
                print(f"\n{p['name']} is in a crash loop; last lines of {p['log']}:")
                for line in p.get("tail") or []:
                    print(f"    {line}")
    healthy = all(p.get("state") == "running" and p.get("health") == "ok" for p in procs)
    return 0 if healthy else 1
