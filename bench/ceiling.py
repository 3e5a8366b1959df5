"""The bare-Temporal ceiling: a one-step workflow whose step returns at once, as a regular activity (the old
delivery shape) or as a local activity started with request_eager_start (the fast path's shape).

Kept in its own small module because the workflow sandbox re-imports it for every run.
"""

from __future__ import annotations

import time
from datetime import timedelta

from temporalio import activity, workflow

# Monotonic time of each activity execution, read by the bench (activities run outside the sandbox).
DONE: list[float] = []


@activity.defn(name="bench_noop")
async def noop(n: int) -> int:
    DONE.append(time.monotonic())
    return n


@workflow.defn(name="BenchCeilingWorkflow")
class CeilingWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        result: int = await workflow.execute_activity(noop, n, start_to_close_timeout=timedelta(seconds=30))
        return result


@workflow.defn(name="BenchLocalCeilingWorkflow")
class LocalCeilingWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        result: int = await workflow.execute_local_activity(noop, n, start_to_close_timeout=timedelta(seconds=30))
        return result
