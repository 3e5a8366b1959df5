"""An independent probe of the bare Temporal server, in the shape issue 12 measured it: the dev server with a SQLite
file (WAL), one-step workflows whose step takes 2 ms, as a regular activity, a local activity, and a local activity
started with ``request_eager_start``, each at several numbers of workflows in flight. No Lifeline code runs.

    .venv/bin/python -m bench.probe [N]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker


@activity.defn(name="probe_step")
async def step(n: int) -> int:
    await asyncio.sleep(0.002)
    return n


@workflow.defn(name="ProbeLocal")
class Local:
    @workflow.run
    async def run(self, n: int) -> int:
        result: int = await workflow.execute_local_activity(step, n, start_to_close_timeout=timedelta(seconds=10))
        return result


@workflow.defn(name="ProbeRegular")
class Regular:
    @workflow.run
    async def run(self, n: int) -> int:
        result: int = await workflow.execute_activity(step, n, start_to_close_timeout=timedelta(seconds=10))
        return result


async def measure(client: Client, local: bool, eager: bool, n: int, inflight: int) -> float:
    """Workflows completed per second, n of them with at most ``inflight`` running."""
    tq = f"probe-{uuid.uuid4().hex[:8]}"
    sem = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        async with sem:
            if local:
                await client.execute_workflow(Local.run, i, id=f"{tq}-{i}", task_queue=tq, request_eager_start=eager)
            else:
                await client.execute_workflow(Regular.run, i, id=f"{tq}-{i}", task_queue=tq)

    async with Worker(client, task_queue=tq, workflows=[Local, Regular], activities=[step],
                      max_concurrent_activities=200):
        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.monotonic() - t0)


async def main(n: int) -> None:
    temporal = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    with tempfile.TemporaryDirectory() as tmp:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal,
            dev_server_extra_args=["--db-filename", os.path.join(tmp, "t.db"), "--sqlite-pragma", "journal_mode=wal",
                                   "--log-level", "error"])
        async with env:
            for name, local, eager in (("regular", False, False), ("local", True, False), ("local+eager", True, True)):
                for inflight in (20, 100, 500):
                    rate = await measure(env.client, local, eager, n, inflight)
                    print(f"{name:12s} in flight {inflight:4d}: {rate:6.1f} workflows/s", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
