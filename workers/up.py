"""`lifeline up`: the embedded default as one process tree, supervised, stopped cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from api.auth import mint_token
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


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0


@dataclass
class Supervisor:
    settings: Settings
    config: LifelineConfig
    temporal_port: int = 7233
    ui_port: int = 8233
    pg_port: int = DEFAULT_PG_PORT
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

    def spawn(self, child: Child, env: dict[str, str]) -> None:
        log_path = self.data_dir / f"{child.name}.log"
        out = open(log_path, "ab")  # noqa: SIM115
        child.proc = subprocess.Popen(child.argv, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                      preexec_fn=child_preexec(), start_new_session=True)
        out.close()
        child.started_at = time.monotonic()

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
            print(f"starting embedded PostgreSQL on 127.0.0.1:{self.pg_port} (data {self.pg.data_dir})")
            self.pg.start()
            print(f"starting Temporal dev server on {self.temporal.address} (Web UI :{self.ui_port})")
            self.temporal.start()
            applied = asyncio.run(migrate(self.pg.url()))
            print(f"migrations applied: {', '.join(applied) if applied else 'none pending'}")
            env = self.child_env(secrets_env)
            me = [sys.executable, "-m", "workers.cli"]
            self.children = [Child("worker", [*me, "worker"]), Child("dispatcher", [*me, "dispatcher"]),
                             Child("api", [*me, "api"])]
            if any(ch.mllp for ch in self.config.channels):
                self.children.append(Child("listener", [*me, "listener"]))
            for child in self.children:
                self.spawn(child, env)
            token = mint_token(jwt_secret, subject="dev-admin", org="default", roles=["admin"],
                               ttl_seconds=30 * 24 * 3600)
            token_file = self.data_dir / "dev-token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            self.wait_ready(token, stop_signal)
            self.banner(token, token_file)
            while not stop_signal:
                self.watch(env)
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
                    tail = (self.data_dir / f"{child.name}.log").read_text(errors="replace").strip()
                    last = tail.splitlines()[-1] if tail else ""
                    raise StackError(f"{child.name} exited with code {child.proc.returncode} at start: {last}")
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
        print(f"  admin token    {token_file}\n    {token}")
        print("Ctrl-C stops everything; data stays in", self.data_dir, flush=True)

    def watch(self, env: dict[str, str]) -> None:
        """Restart a child that died on its own (with a growing pause), so a crash heals itself."""
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            backoff = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
            if time.monotonic() - child.started_at < backoff:
                continue
            child.restarts += 1
            print(f"{child.name} exited with code {code}; restarting (restart #{child.restarts})", flush=True)
            self.spawn(child, env)

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Ingress first so nothing new is ACKed, then the rest, then the servers they use.
        for child in reversed(self.children):
            if child.proc is not None:
                stop_process(child.proc, timeout=20)
        self.temporal.stop()
        self.pg.stop()
        print("stopped", flush=True)
