"""Memory of a listener process (`python -m workers.cli listener`) holding many idle MLLP connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.engine_bench import MllpClient, adt
from bench.stack import CODEC_KEY, JWT_SECRET, STORE_KEY, Rig, raise_fd_limit
from infra.devstack import free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parent.parent


def _established(proc: psutil.Process, port: int) -> int:
    return sum(1 for c in proc.net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


async def measure_listener_rss(rig: Rig, connections: int, batch: int = 100) -> dict[str, Any]:
    """Start a listener process, warm it with one message, then open ``connections`` idle connections."""
    fd_limit = raise_fd_limit(2 * connections + 256)  # the child inherits it; we hold the other ends
    port = free_port()
    db_url = await rig.new_database()
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-rss-") as tmp:
        config = Path(tmp) / "lifeline.yaml"
        config.write_text(yaml.safe_dump({
            "channels": [{"name": "adt-in", "mllp": {"host": "127.0.0.1", "port": port},
                          "routes": [{"to": "lab"}]}],
            "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": free_port()}}],
        }))
        env = {**os.environ, "LIFELINE_DATABASE_URL": db_url, "LIFELINE_CONFIG": str(config),
               "LIFELINE_JWT_SECRET": JWT_SECRET, "LIFELINE_STORE_KEY": STORE_KEY,
               "LIFELINE_CODEC_KEY": CODEC_KEY, "LIFELINE_LOG_LEVEL": "WARNING"}
        log = open(Path(tmp) / "listener.log", "wb")  # noqa: SIM115 - closed below
        proc = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "workers.cli", "listener"], cwd=str(REPO),
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        clients: list[MllpClient] = []
        try:
            await asyncio.to_thread(wait_port, port, 60, proc, "listener")
            ps = psutil.Process(proc.pid)
            warm = await MllpClient.open(port)
            code, _ = await warm.send(adt("RSS000000", "MRNRSS", 0))
            await warm.close()
            if code != "AA":
                raise RuntimeError(f"listener answered {code}")
            await asyncio.sleep(0.5)
            before = ps.memory_info().rss
            t0 = time.monotonic()
            for first in range(0, connections, batch):
                clients += await asyncio.gather(*(MllpClient.open(port)
                                                  for _ in range(min(batch, connections - first))))
            open_s = time.monotonic() - t0
            await asyncio.sleep(1.0)
            held = _established(ps, port)
            after = ps.memory_info().rss
            # Still serving while it holds them all.
            code, ack_s = await clients[-1].send(adt("RSS000001", "MRNRSS", 1))
            after_ack = ps.memory_info().rss
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    c.writer.close()
            await asyncio.to_thread(stop_process, proc, 15)
            log.close()
    return {
        "connections": connections, "held_by_listener": held, "fd_soft_limit": fd_limit,
        "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
        "rss_delta_mb": round((after - before) / 2**20, 2),
        "kb_per_connection": round((after - before) / 1024 / max(1, connections), 1),
        "rss_after_one_message_mb": round(after_ack / 2**20, 1), "ack_while_holding_ms": round(ack_s * 1000, 1),
        "ack_code_while_holding": code, "open_seconds": round(open_s, 2),
    }
