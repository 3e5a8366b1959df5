"""A stand-in for a DeliveryWorkflow whose `deliver` waits out a one-hour backoff after a failure."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy


@workflow.defn(name="BackoffProbe")
class BackoffProbe:
    @workflow.run
    async def run(self) -> int:
        attempts: int = await workflow.execute_activity(
            "deliver", start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(hours=1), maximum_attempts=5), result_type=int)
        return attempts
