"""Helpers for the file and SFTP transport tests: batch files, channel configs, waiting on the store."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.config import Channel, validate_config
from interop.batch import BatchHeader, write_batch
from tests.conftest import TEST_CODEC_KEY, TEST_JWT_SECRET, TEST_STORE_KEY
from tests.delivery.harness import adt

ROOT = Path(__file__).resolve().parents[2]


def control(i: int, prefix: str = "F") -> str:
    return f"{prefix}{i:06d}"


def batch_bytes(n: int, *, prefix: str = "F", newline: str = "\r\n", bad: set[int] | None = None,
                mrns: int = 20) -> bytes:
    """A FHS/BHS batch of n ADT messages; the indexes in `bad` have no MSH-10 (rejected by the accept path)."""
    msgs = (adt("" if bad and i in bad else control(i, prefix), f"MRN{i % mrns:03d}", seq=i) for i in range(n))
    return "".join(write_batch(msgs, BatchHeader(sending_application="LAB", control_id="B1"),
                               datetime(2026, 1, 1), newline)).encode()


def file_channel(directory: Path, **opts: Any) -> Channel:
    cfg = {"dir": str(directory), "poll_interval": "200ms", "min_age": "300ms", **opts}
    return validate_config({"channels": [{"name": "lab-files", "file": cfg}]}, "test").channels[0]


def proc_env(db_url: str, config: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update({
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LIFELINE_DATABASE_URL": db_url,
        "LIFELINE_CONFIG": str(config), "LIFELINE_DATA_DIR": str(data_dir),
        "LIFELINE_JWT_SECRET": TEST_JWT_SECRET, "LIFELINE_STORE_KEY": TEST_STORE_KEY,
        "LIFELINE_CODEC_KEY": TEST_CODEC_KEY, "LIFELINE_DISPATCHER_SWEEP_SECONDS": "0.5", **extra,
    })
    return env


def spawn(kind: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "workers.cli", kind], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    finally:
        out.close()
