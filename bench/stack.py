"""The real servers a bench run measures against: embedded PostgreSQL and Temporal's dev server (SQLite file),
started exactly as `lifeline up` starts them, on free ports in a temporary directory."""

from __future__ import annotations

import base64
import contextlib
import resource
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from infra.crypto import Cipher, data_converter
from infra.db import migrate
from infra.devstack import EmbeddedPostgres, TemporalDevServer, free_port

# The same throwaway keys the tests use (tests/conftest.py); a bench run stores only generated messages.
STORE_KEY = base64.urlsafe_b64encode(b"s" * 32).decode()
CODEC_KEY = base64.urlsafe_b64encode(b"c" * 32).decode()
JWT_SECRET = "bench-secret-" + "x" * 40


def store_cipher() -> Cipher:
    return Cipher("k1", base64.urlsafe_b64decode(STORE_KEY))


def codec_cipher() -> Cipher:
    return Cipher("k1", base64.urlsafe_b64decode(CODEC_KEY))


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (never above the hard limit); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class Rig:
    """What every measurement needs: a PostgreSQL server to make databases on and a Temporal client."""

    pg: EmbeddedPostgres
    client: Client
    temporal_address: str
    temporal_pid: int | None = None

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by this process, Temporal's server and PostgreSQL (all backends)."""
        import psutil

        def tree(pid: int | None) -> float:
            if pid is None:
                return 0.0
            total = 0.0
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        total += t.user + t.system
                rt = root.cpu_times()  # plus children that already exited (PostgreSQL backends of closed pools)
                total += rt.children_user + rt.children_system
            except psutil.Error:
                pass
            return total

        me = psutil.Process().cpu_times()
        return {"bench_process": me.user + me.system, "temporal": tree(self.temporal_pid),
                "postgres": tree(self.pg.proc.pid if self.pg.proc else None)}

    async def new_database(self) -> str:
        """A fresh migrated database, so each measurement counts only its own rows."""
        url = self.pg.create_database(f"bench_{uuid.uuid4().hex[:10]}")
        await migrate(url)
        return url


@contextlib.asynccontextmanager
async def started(base: Path | None = None) -> AsyncIterator[Rig]:
    """Start PostgreSQL and Temporal (SQLite file, headless) in a temp dir; stop both on exit."""
    with contextlib.ExitStack() as stack:
        root = base or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lifeline-bench-")))
        pg = EmbeddedPostgres(root / "pg", free_port(), log_file=root / "postgres.log")
        temporal = TemporalDevServer(db_file=root / "temporal.db", port=free_port(), ui_port=None,
                                     log_file=root / "temporal.log")
        pg.start()
        stack.callback(pg.stop)
        temporal.start()
        stack.callback(temporal.stop)
        client = await _connect(temporal.address)
        yield Rig(pg, client, temporal.address, temporal.proc.pid if temporal.proc else None)


async def _connect(address: str, attempts: int = 50) -> Client:
    import asyncio

    last: Exception | None = None
    for _ in range(attempts):  # the frontend port opens a moment before the namespace is ready
        try:
            client = await Client.connect(address, data_converter=data_converter(codec_cipher()))
            await client.count_workflows()
            return client
        except Exception as exc:  # any failure here means "not ready yet"
            last = exc
            await asyncio.sleep(0.2)
    raise RuntimeError(f"Temporal at {address} not ready: {last}")
